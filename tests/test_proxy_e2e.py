"""
End to end with ``skopeo``: images pushed to an upstream registry (the
reference registry, behind Bearer-token auth) are pulled through
ociregistry's pull-through cache twice, the second time with the upstream
stopped.  Both pulls are byte-identical to what was pushed, and the
upstream's access log shows each blob fetched once.
"""

from __future__ import annotations

import pytest

from image_builder import MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST, OCILayout
from proxy_helpers import TokenServer, upstream_requests
from registry_process import RegistryProcess
from test_e2e_skopeo import SKOPEO, assert_same_layouts, copy_args, skopeo, skopeo_env  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.ociregistry_only, pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed")]

USERS = {"pusher": "push-secret", "proxyuser": "proxy-secret"}


@pytest.fixture
def upstream(tmp_path):
    tokens = TokenServer(tmp_path, USERS).start()
    process = RegistryProcess(
        str(tmp_path / "upstream"), kind="reference", reference_config=tokens.reference_auth()
    ).start()
    yield process
    process.stop()
    tokens.stop()


@pytest.fixture
def proxy(tmp_path, upstream):
    config = tmp_path / "proxy.yaml"
    # tag_ttl 0: every pull by tag asks the upstream, so the second pull shows stale serving.
    config.write_text(
        f"proxies: [{{prefix: hub, url: '{upstream.url}', username: proxyuser, "
        f"password: proxy-secret, tag_ttl: 0, timeout: 10s}}]\n"
    )
    process = RegistryProcess(str(tmp_path / "proxy"), config=str(config)).start()
    yield process
    process.stop()


def test_skopeo_pulls_images_through_the_cache_then_without_the_upstream(skopeo, upstream, proxy, tmp_path):  # noqa: F811
    source = OCILayout(tmp_path / "source")
    image = source.add_image("app", layers=4, layer_size=1 << 20, seed="proxy-e2e")
    index = source.add_index("multi", platforms=[("linux", "amd64"), ("linux", "arm64", "v8")], seed="proxy-multi")
    credentials = ["--dest-creds", "pusher:push-secret"]
    skopeo(
        *copy_args(*credentials, "--preserve-digests", source.reference("app"), f"docker://{upstream.host}/team/app:v1")
    )
    skopeo(
        *copy_args(
            *credentials,
            "--all",
            "--preserve-digests",
            source.reference("multi"),
            f"docker://{upstream.host}/team/multi:v1",
        )
    )

    pulls = []
    for attempt in ("first", "upstream-stopped"):
        if attempt == "upstream-stopped":
            upstream.stop()
        pulled = OCILayout(tmp_path / f"pulled-{attempt}")
        skopeo(*copy_args("--preserve-digests", f"docker://{proxy.host}/hub/team/app:v1", pulled.reference("app")))
        skopeo(
            *copy_args(
                "--all", "--preserve-digests", f"docker://{proxy.host}/hub/team/multi:v1", pulled.reference("multi")
            )
        )
        assert pulled.resolve("app")["digest"] == image.manifest_digest
        assert pulled.resolve("app")["mediaType"] == MEDIA_TYPE_OCI_MANIFEST
        assert pulled.resolve("multi")["digest"] == index.index_digest
        assert pulled.resolve("multi")["mediaType"] == MEDIA_TYPE_OCI_INDEX
        assert_same_layouts(source.path, pulled.path)  # every blob, byte for byte
        pulls.append(pulled)

    assert "serving cached hub/team/app:v1" in proxy.log()
    assert "serving cached hub/team/multi:v1" in proxy.log()

    # The upstream's log: each blob and manifest was fetched from it once.
    blobs = image.blob_digests + [d for i in index.images for d in i.blob_digests]
    for digest in blobs:
        assert upstream_requests(upstream, "GET", f"/blobs/{digest}", settle=0) == [
            f"GET /v2/team/{'app' if digest in image.blob_digests else 'multi'}/blobs/{digest} 200"
        ]
    manifests = [r for r in upstream_requests(upstream, "GET", "/manifests/", settle=0) if r.endswith(" 200")]
    assert sorted(manifests) == sorted(
        ["GET /v2/team/app/manifests/v1 200", "GET /v2/team/multi/manifests/v1 200"]
        + [f"GET /v2/team/multi/manifests/{i.manifest_digest} 200" for i in index.images]
    )
