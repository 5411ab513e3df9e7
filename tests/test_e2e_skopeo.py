"""
End-to-end tests with the real ``skopeo`` client against a registry process.

Images are built locally in OCI layouts by ``image_builder`` (no container
engine, no network), pushed with ``skopeo copy``, pulled back and compared
blob by blob.  Each test uses its own repositories in the module's registry.

skopeo talks to the registry over plain HTTP (``--*-tls-verify=false``: it
first tries HTTPS on the same port, gets an HTTP answer and falls back), and
runs with ``--insecure-policy``, an empty registries.conf and an empty auth
file so that nothing of the machine's container configuration leaks in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from image_builder import (
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    OCILayout,
    http_request,
    layout_blobs,
    read_tar_gz,
    sha256_digest,
)

SKOPEO = shutil.which("skopeo")
TIMEOUT = 120

pytestmark = pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed")

# What skopeo may send as Accept for a manifest: the types a user's client takes.
ACCEPT_ALL = ", ".join(
    [
        MEDIA_TYPE_OCI_MANIFEST,
        MEDIA_TYPE_OCI_INDEX,
        MEDIA_TYPE_DOCKER_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


@pytest.fixture(scope="module")
def skopeo_env(tmp_path_factory):
    """An environment isolating skopeo from the machine's registries.conf and credentials."""
    directory = tmp_path_factory.mktemp("skopeo-config")
    registries_conf = directory / "registries.conf"
    registries_conf.write_text("")
    auth_file = directory / "auth.json"
    auth_file.write_text('{"auths": {}}')
    env = dict(os.environ)
    env["CONTAINERS_REGISTRIES_CONF"] = str(registries_conf)
    env["REGISTRY_AUTH_FILE"] = str(auth_file)
    env["TMPDIR"] = str(tmp_path_factory.mktemp("skopeo-tmp"))
    return env


def command_runner(prefix: list[str], env: dict):
    """``run(*args, check=True)``: run ``prefix + args``; fails the test on a non-zero exit unless ``check=False``."""

    def run(*args, check=True):
        command = [*prefix, *map(str, args)]
        result = subprocess.run(command, env=env, capture_output=True, timeout=TIMEOUT)
        if check and result.returncode != 0:
            pytest.fail(
                f"{' '.join(command)} exited with {result.returncode}:\n"
                f"{result.stderr.decode(errors='replace')[-4000:]}"
            )
        return result

    return run


@pytest.fixture
def skopeo(skopeo_env):
    """Run ``skopeo --insecure-policy ARGS``; fails the test on a non-zero exit unless ``check=False``."""
    run = command_runner([SKOPEO, "--insecure-policy"], skopeo_env)

    def skopeo_run(*args, check=True, debug=False):
        return run(*(["--debug"] if debug else []), *args, check=check)

    return skopeo_run


def copy_args(*extra):
    return ["copy", "--quiet", "--retry-times", "0", "--src-tls-verify=false", "--dest-tls-verify=false", *extra]


def inspect_args(*extra):
    return ["inspect", "--retry-times", "0", "--tls-verify=false", *extra]


def get_manifest(registry, name, reference, accept=ACCEPT_ALL):
    return http_request("GET", f"{registry.url}/v2/{name}/manifests/{reference}", headers={"Accept": accept})


def assert_manifest_served(registry, name, reference, expected: bytes, media_type: str):
    """GET and HEAD of the manifest give exactly ``expected``, its media type and its digest."""
    response = get_manifest(registry, name, reference, accept=media_type)
    assert response.status == 200, response.body
    assert response.body == expected
    assert response.headers["content-type"] == media_type
    assert response.headers["docker-content-digest"] == sha256_digest(expected)
    head = http_request("HEAD", f"{registry.url}/v2/{name}/manifests/{reference}", headers={"Accept": media_type})
    assert head.status == 200
    assert head.body == b""
    assert head.headers["docker-content-digest"] == sha256_digest(expected)
    assert int(head.headers["content-length"]) == len(expected)


def assert_blobs_served(registry, name, layout: OCILayout, digests):
    for digest in digests:
        response = http_request("GET", f"{registry.url}/v2/{name}/blobs/{digest}")
        assert response.status == 200, (digest, response.status)
        assert response.body == layout.read_blob(digest), digest


def assert_same_layouts(source: str, pulled: str):
    """Every blob of ``source`` is in ``pulled`` with the same bytes, and nothing else is."""
    source_blobs = layout_blobs(source)
    pulled_blobs = layout_blobs(pulled)
    assert sorted(pulled_blobs) == sorted(source_blobs)
    for digest, data in source_blobs.items():
        assert pulled_blobs[digest] == data, digest


def test_push_and_pull_back_by_tag(registry, skopeo, tmp_path):
    """A 3-layer OCI image makes the round trip through the registry unchanged."""
    source = OCILayout(tmp_path / "source")
    image = source.add_image("v1", layers=3, layer_size=2 << 20, seed="roundtrip")

    skopeo(*copy_args("--preserve-digests", source.reference("v1"), f"docker://{registry.host}/e2e/app:v1"))

    pulled = OCILayout(tmp_path / "pulled")
    skopeo(*copy_args("--preserve-digests", f"docker://{registry.host}/e2e/app:v1", pulled.reference("v1")))

    descriptor = pulled.resolve("v1")
    assert descriptor["digest"] == image.manifest_digest
    assert descriptor["size"] == image.manifest_size
    assert descriptor["mediaType"] == MEDIA_TYPE_OCI_MANIFEST
    assert pulled.read_blob(image.manifest_digest) == image.manifest_bytes
    assert pulled.read_blob(image.config_digest) == image.config_bytes
    for layer in image.layers:
        assert pulled.read_blob(layer.digest) == source.read_blob(layer.digest)
        assert read_tar_gz(pulled.read_blob(layer.digest)) == layer.files
    assert_same_layouts(source.path, pulled.path)

    # What any other client would see over HTTP.
    assert_manifest_served(registry, "e2e/app", "v1", image.manifest_bytes, MEDIA_TYPE_OCI_MANIFEST)
    assert_manifest_served(registry, "e2e/app", image.manifest_digest, image.manifest_bytes, MEDIA_TYPE_OCI_MANIFEST)
    assert_blobs_served(registry, "e2e/app", source, image.blob_digests)


def test_pull_by_digest(registry, skopeo, tmp_path):
    source = OCILayout(tmp_path / "source")
    image = source.add_image("v1", layers=3, layer_size=64 << 10, seed="bydigest")
    skopeo(*copy_args("--preserve-digests", source.reference("v1"), f"docker://{registry.host}/e2e/bydigest:v1"))

    pulled = OCILayout(tmp_path / "pulled")
    by_digest = f"docker://{registry.host}/e2e/bydigest@{image.manifest_digest}"
    skopeo(*copy_args("--preserve-digests", by_digest, pulled.reference("pulled")))
    assert pulled.resolve("pulled")["digest"] == image.manifest_digest
    assert_same_layouts(source.path, pulled.path)

    # The digest reference also works for inspect; an unknown digest is "manifest unknown".
    inspected = json.loads(skopeo(*inspect_args(by_digest)).stdout)
    assert inspected["Digest"] == image.manifest_digest
    assert inspected["Layers"] == image.layer_digests
    missing = sha256_digest(b"no such manifest")
    result = skopeo(*inspect_args(f"docker://{registry.host}/e2e/bydigest@{missing}"), check=False)
    assert result.returncode != 0
    assert b"manifest unknown" in result.stderr.lower()


def test_docker_schema2_format(registry, skopeo, tmp_path):
    """``--format v2s2`` converts the manifest to Docker schema 2; the registry keeps and serves it as such."""
    source = OCILayout(tmp_path / "source")
    image = source.add_image("v1", layers=3, layer_size=64 << 10, seed="v2s2")
    skopeo(*copy_args("--format", "v2s2", source.reference("v1"), f"docker://{registry.host}/e2e/dockerv2s2:v1"))

    response = get_manifest(registry, "e2e/dockerv2s2", "v1", accept=MEDIA_TYPE_DOCKER_MANIFEST)
    assert response.status == 200
    assert response.headers["content-type"] == MEDIA_TYPE_DOCKER_MANIFEST
    manifest = response.json()
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == MEDIA_TYPE_DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == MEDIA_TYPE_DOCKER_CONFIG
    assert manifest["config"]["digest"] == image.config_digest
    assert [layer["digest"] for layer in manifest["layers"]] == image.layer_digests
    assert {layer["mediaType"] for layer in manifest["layers"]} == {MEDIA_TYPE_DOCKER_LAYER_GZIP}
    digest = response.headers["docker-content-digest"]
    assert digest == sha256_digest(response.body)
    assert_manifest_served(registry, "e2e/dockerv2s2", digest, response.body, MEDIA_TYPE_DOCKER_MANIFEST)
    assert_blobs_served(registry, "e2e/dockerv2s2", source, image.blob_digests)

    # skopeo inspect --raw shows the schema 2 manifest, byte for byte.
    raw = skopeo(*inspect_args("--raw", f"docker://{registry.host}/e2e/dockerv2s2:v1")).stdout
    assert raw == response.body

    # Pulled back into a dir: layout (which keeps the manifest as it is), nothing changes.
    pulled = tmp_path / "pulled"
    skopeo(*copy_args("--preserve-digests", f"docker://{registry.host}/e2e/dockerv2s2:v1", f"dir:{pulled}"))
    assert (pulled / "manifest.json").read_bytes() == response.body
    for blob_digest in image.blob_digests:
        assert (pulled / blob_digest.split(":", 1)[1]).read_bytes() == source.read_blob(blob_digest)


def test_multi_arch_index_with_all(registry, skopeo, tmp_path):
    """An OCI index over linux/amd64 and linux/arm64 copied with ``--all`` both ways stays byte-identical."""
    source = OCILayout(tmp_path / "source")
    index = source.add_index("v1", platforms=[("linux", "amd64"), ("linux", "arm64", "v8")], seed="multiarch")

    skopeo(*copy_args("--all", "--preserve-digests", source.reference("v1"), f"docker://{registry.host}/e2e/multi:v1"))

    pulled = OCILayout(tmp_path / "pulled")
    skopeo(*copy_args("--all", "--preserve-digests", f"docker://{registry.host}/e2e/multi:v1", pulled.reference("v1")))
    descriptor = pulled.resolve("v1")
    assert descriptor["digest"] == index.index_digest
    assert descriptor["mediaType"] == MEDIA_TYPE_OCI_INDEX
    assert pulled.read_blob(index.index_digest) == index.index_bytes
    assert_same_layouts(source.path, pulled.path)

    assert_manifest_served(registry, "e2e/multi", "v1", index.index_bytes, MEDIA_TYPE_OCI_INDEX)
    for image in index.images:
        assert_manifest_served(
            registry, "e2e/multi", image.manifest_digest, image.manifest_bytes, MEDIA_TYPE_OCI_MANIFEST
        )
        assert_blobs_served(registry, "e2e/multi", source, image.blob_digests)

    # A user on arm64 pulling the tag gets the arm64 image and only its blobs.
    arm64 = index.image_for("arm64")
    inspected = json.loads(
        skopeo(
            "--override-os",
            "linux",
            "--override-arch",
            "arm64",
            "--override-variant",
            "v8",
            *inspect_args(f"docker://{registry.host}/e2e/multi:v1"),
        ).stdout
    )
    assert inspected["Architecture"] == "arm64"
    assert inspected["Layers"] == arm64.layer_digests
    single = OCILayout(tmp_path / "arm64")
    skopeo(
        "--override-os",
        "linux",
        "--override-arch",
        "arm64",
        "--override-variant",
        "v8",
        *copy_args("--preserve-digests", f"docker://{registry.host}/e2e/multi:v1", single.reference("arm64")),
    )
    assert single.resolve("arm64")["digest"] == arm64.manifest_digest
    assert sorted(layout_blobs(single.path)) == sorted(arm64.all_digests)


def test_inspect_raw_and_config(registry, skopeo, tmp_path):
    source = OCILayout(tmp_path / "source")
    image = source.add_image("v1", layers=3, layer_size=4096, seed="inspect", labels={"org.example.test": "inspect"})
    skopeo(*copy_args("--preserve-digests", source.reference("v1"), f"docker://{registry.host}/e2e/inspect:v1"))
    reference = f"docker://{registry.host}/e2e/inspect:v1"

    assert skopeo(*inspect_args("--raw", reference)).stdout == image.manifest_bytes
    assert skopeo(*inspect_args("--config", "--raw", reference)).stdout == image.config_bytes

    inspected = json.loads(skopeo(*inspect_args(reference)).stdout)
    assert inspected["Name"] == f"{registry.host}/e2e/inspect"
    assert inspected["Digest"] == image.manifest_digest
    assert inspected["RepoTags"] == ["v1"]
    assert inspected["Architecture"] == "amd64"
    assert inspected["Os"] == "linux"
    assert inspected["Layers"] == image.layer_digests
    assert inspected["Labels"] == {"org.example.seed": "inspect", "org.example.test": "inspect"}
    assert "SEED=inspect" in inspected["Env"]

    config = json.loads(skopeo(*inspect_args("--config", reference)).stdout)
    assert config["rootfs"] == {"type": "layers", "diff_ids": image.diff_ids}

    result = skopeo(*inspect_args(f"docker://{registry.host}/e2e/inspect:missing"), check=False)
    assert result.returncode != 0
    assert b"manifest unknown" in result.stderr.lower()


def test_list_tags(registry, skopeo, tmp_path):
    source = OCILayout(tmp_path / "source")
    first = source.add_image("one", layers=2, layer_size=4096, seed="tags-one")
    second = source.add_image("two", layers=2, layer_size=4096, seed="tags-two")
    base = f"docker://{registry.host}/e2e/tags"

    skopeo(*copy_args("--preserve-digests", source.reference("one"), f"{base}:v1"))
    skopeo(*copy_args("--preserve-digests", source.reference("two"), f"{base}:v2"))
    # Registry to registry, within the repository: a new tag for an existing manifest.
    skopeo(*copy_args("--preserve-digests", f"{base}:v2", f"{base}:latest"))
    skopeo(*copy_args("--preserve-digests", f"{base}:v1", f"{base}:1.0.0"))

    listed = json.loads(skopeo("list-tags", "--retry-times", "0", "--tls-verify=false", base).stdout)
    assert listed["Repository"] == f"{registry.host}/e2e/tags"
    assert sorted(listed["Tags"]) == ["1.0.0", "latest", "v1", "v2"]

    response = http_request("GET", f"{registry.url}/v2/e2e/tags/tags/list")
    assert response.status == 200
    listing = response.json()
    assert listing["name"] == "e2e/tags"
    # (ociregistry sorts tags; the reference registry lists them in directory order.)
    assert sorted(listing["tags"]) == ["1.0.0", "latest", "v1", "v2"]

    for tag, image in [("v1", first), ("1.0.0", first), ("v2", second), ("latest", second)]:
        assert skopeo(*inspect_args("--raw", f"{base}:{tag}")).stdout == image.manifest_bytes

    result = skopeo(
        "list-tags",
        "--retry-times",
        "0",
        "--tls-verify=false",
        f"docker://{registry.host}/e2e/no-such-repository",
        check=False,
    )
    assert result.returncode != 0


def mounted_blobs(stderr: bytes) -> int:
    """How many cross-repository mounts skopeo's debug log reports as successful."""
    return stderr.count(b"... mount OK")


def test_cross_repository_mount(registry, skopeo, tmp_path):
    """Pushing an image whose layers are already in another repository mounts them instead of uploading."""
    source = OCILayout(tmp_path / "source")
    image = source.add_image("v1", layers=3, layer_size=256 << 10, seed="mount")
    skopeo(*copy_args("--preserve-digests", source.reference("v1"), f"docker://{registry.host}/e2e/app-mount:v1"))

    # skopeo remembers (in its blob info cache) where it pushed the layers, and mounts them from there.
    pushed = skopeo(
        *copy_args("--preserve-digests", source.reference("v1"), f"docker://{registry.host}/e2e/other:v1"), debug=True
    )
    assert mounted_blobs(pushed.stderr) == len(image.layers), pushed.stderr.decode(errors="replace")[-4000:]

    pulled = OCILayout(tmp_path / "pulled")
    skopeo(*copy_args("--preserve-digests", f"docker://{registry.host}/e2e/other:v1", pulled.reference("v1")))
    assert pulled.resolve("v1")["digest"] == image.manifest_digest
    assert_same_layouts(source.path, pulled.path)
    assert_blobs_served(registry, "e2e/other", source, image.blob_digests)

    # Registry to registry, into a third repository.
    copied = skopeo(
        *copy_args(
            "--preserve-digests",
            f"docker://{registry.host}/e2e/app-mount:v1",
            f"docker://{registry.host}/e2e/other-copy:v1",
        ),
        debug=True,
    )
    assert mounted_blobs(copied.stderr) == len(image.layers), copied.stderr.decode(errors="replace")[-4000:]
    assert_manifest_served(registry, "e2e/other-copy", "v1", image.manifest_bytes, MEDIA_TYPE_OCI_MANIFEST)
    assert_blobs_served(registry, "e2e/other-copy", source, image.blob_digests)


def test_mount_over_http(registry, skopeo, tmp_path):
    """The mount request itself, as the spec has it: 201 and the blob, or 202 and an upload when the source lacks it."""
    source = OCILayout(tmp_path / "source")
    image = source.add_image("v1", layers=1, layer_size=4096, seed="mount-http")
    skopeo(*copy_args("--preserve-digests", source.reference("v1"), f"docker://{registry.host}/e2e/mount-from:v1"))
    layer = image.layer_digests[0]

    mounted = http_request(
        "POST", f"{registry.url}/v2/e2e/mount-to/blobs/uploads/?mount={layer}&from=e2e/mount-from", b""
    )
    assert mounted.status == 201, mounted.body
    assert mounted.headers["docker-content-digest"] == layer
    assert mounted.headers["location"].endswith(f"/v2/e2e/mount-to/blobs/{layer}")
    head = http_request("HEAD", f"{registry.url}/v2/e2e/mount-to/blobs/{layer}")
    assert head.status == 200
    assert int(head.headers["content-length"]) == image.layers[0].size
    assert_blobs_served(registry, "e2e/mount-to", source, [layer])

    # A repository without the blob: no mount, an upload session instead.
    unknown = sha256_digest(b"not pushed anywhere")
    fallback = http_request(
        "POST", f"{registry.url}/v2/e2e/mount-to-2/blobs/uploads/?mount={unknown}&from=e2e/mount-from", b""
    )
    assert fallback.status == 202, fallback.body
    assert "/v2/e2e/mount-to-2/blobs/uploads/" in fallback.headers["location"]
    assert http_request("HEAD", f"{registry.url}/v2/e2e/mount-to-2/blobs/{unknown}").status == 404


def test_delete(registry, skopeo, tmp_path):
    source = OCILayout(tmp_path / "source")
    image = source.add_image("v1", layers=1, layer_size=4096, seed="delete")
    reference = f"docker://{registry.host}/e2e/delete:v1"
    skopeo(*copy_args("--preserve-digests", source.reference("v1"), reference))
    assert get_manifest(registry, "e2e/delete", image.manifest_digest).status == 200

    skopeo("delete", "--retry-times", "0", "--tls-verify=false", reference)

    assert get_manifest(registry, "e2e/delete", image.manifest_digest).status == 404
    assert get_manifest(registry, "e2e/delete", "v1").status == 404
    result = skopeo(*inspect_args(reference), check=False)
    assert result.returncode != 0
    assert b"manifest unknown" in result.stderr.lower()
