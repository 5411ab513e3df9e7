"""
The pull-through cache over S3 storage (SeaweedFS): a file being written
cannot be read there, so clients that join a fetch late wait for the
published blob; with ``redirect`` a cached blob is a 307 to a presigned URL,
an uncached one is streamed (its object does not exist yet).
"""

from __future__ import annotations

import http.client
import threading
import time

import pytest

from image_builder import (
    OCILayout,
    http_request,
    push_blob_http,
    push_image_http,
    random_bytes,
)
from proxy_helpers import ScriptedUpstream, serve, upstream_requests
from registry_process import RegistryProcess
from s3_server import s3_server  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.ociregistry_only


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    process = RegistryProcess(str(tmp_path_factory.mktemp("upstream"))).start()
    yield process
    process.stop()


@pytest.mark.parametrize("redirect", [False, True], ids=["streamed", "redirect"])
def test_concurrent_pulls_over_s3_storage(s3_server, upstream, tmp_path, redirect):  # noqa: F811
    settings = s3_server.settings(redirect=redirect)
    config = s3_server.config_file(str(tmp_path), settings, proxies=[f"up={upstream.url}"])
    proxy = RegistryProcess(str(tmp_path / "unused"), config=config).start()
    try:
        data = random_bytes(12 << 20, f"s3-{redirect}")
        digest = push_blob_http(upstream.url, "team/s3", data)
        url = f"{proxy.url}/v2/up/team/s3/blobs/{digest}"

        results = {}
        start = threading.Barrier(5)

        def pull(i, headers=None):
            start.wait()
            results[i] = http_request("GET", url, headers=headers)

        threads = [threading.Thread(target=pull, args=(i,)) for i in range(4)]
        threads.append(threading.Thread(target=pull, args=("range", {"Range": "bytes=5000000-5000999"})))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for i in range(4):
            assert results[i].status == 200  # not a redirect to an object that is not there yet
            assert results[i].body == data
        assert results["range"].status == 206
        assert results["range"].body == data[5000000:5001000]
        assert upstream_requests(upstream, "GET", digest) == [f"GET /v2/team/s3/blobs/{digest} 200"]

        cached = http_request("GET", url)
        if redirect:
            assert cached.status == 307
            assert http_request("GET", cached.headers["location"]).body == data
        else:
            assert cached.status == 200
            assert cached.body == data
    finally:
        proxy.stop()


def test_a_lying_upstream_gets_no_redirect_to_a_local_blob(s3_server, tmp_path):  # noqa: F811
    """With ``redirect``, a blob not verified for the proxied repository is never a 307 to the stored object."""
    liar = ScriptedUpstream().start()
    settings = s3_server.settings(redirect=True)
    config = s3_server.config_file(str(tmp_path), settings, proxies=[f"up={liar.url}"])
    proxy = RegistryProcess(str(tmp_path / "unused"), config=config).start()
    try:
        secret = random_bytes(100 << 10, "s3-private")
        digest = push_blob_http(proxy.url, "private/app", secret)
        liar.on("HEAD", r"/v2/.+/blobs/.+", serve(200, b"", {"Content-Length": str(len(secret))}))
        liar.on("GET", r"/v2/.+/blobs/.+", serve(200, b"y" * len(secret)))
        for method in ("HEAD", "GET"):
            try:
                response = http_request(method, f"{proxy.url}/v2/up/stolen/blobs/{digest}")
            except (http.client.IncompleteRead, ConnectionError):
                continue  # the wrong bytes, cut short
            assert response.status != 307, response.headers.get("location")
            assert secret[:1000] not in response.body
        assert http_request("GET", f"{proxy.url}/v2/private/app/blobs/{digest}").status == 307
    finally:
        proxy.stop()
        liar.stop()


def test_a_tag_is_revalidated_once_per_ttl_by_the_whole_registry(s3_server, upstream, tmp_path):  # noqa: F811
    """Two replicas on one bucket: each tag costs one upstream HEAD per tag_ttl between them, not one each."""
    ttl = 2.0
    settings = s3_server.settings()
    config = s3_server.config_file(
        str(tmp_path), settings, proxies=[{"prefix": "up", "url": upstream.url, "tag_ttl": f"{ttl}s"}]
    )
    layout = OCILayout(tmp_path / "layout")
    image = layout.add_image(layers=1, layer_size=1024, seed="revalidate")
    push_image_http(upstream.url, "team/revalidate", layout, image, tag="v1")
    a = RegistryProcess(str(tmp_path / "a"), config=config).start()
    b = RegistryProcess(str(tmp_path / "b"), config=config).start()
    try:
        url = "/v2/up/team/revalidate/manifests/v1"
        for replica in (a, b, a, b):
            assert http_request("GET", replica.url + url).body == image.manifest_bytes
        time.sleep(ttl + 0.2)
        for replica in (a, b, a, b):
            assert http_request("GET", replica.url + url).body == image.manifest_bytes
        seen = upstream_requests(upstream, contains="revalidate")
        assert seen == [
            "GET /v2/team/revalidate/manifests/v1 200",
            "HEAD /v2/team/revalidate/manifests/v1 200",
        ]
    finally:
        a.stop()
        b.stop()
