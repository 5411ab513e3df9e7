"""
The pull-through cache against real upstream registries on 127.0.0.1.

Upstreams: the reference registry behind Bearer-token auth (`TokenServer`)
and behind Basic auth (htpasswd), ociregistry itself, and the token
upstream again behind an `Edge` that redirects blob downloads to an object
store and rate limits.  One ociregistry proxy serves them all under
prefixes.  Every count of upstream requests comes from the upstream's own
access log.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from image_builder import (
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    OCILayout,
    http_request,
    push_blob_http,
    push_image_http,
    push_manifest_http,
    random_bytes,
    sha256_digest,
)
from proxy_helpers import (
    BlobStore,
    Edge,
    TokenServer,
    basic,
    htpasswd_auth,
    push_blob,
    push_image,
    upstream_requests,
)
from registry_process import RegistryProcess, registry_environment

pytestmark = pytest.mark.ociregistry_only

USERS = {"pusher": "push-secret", "proxyuser": "proxy-secret"}
ACCEPT = ", ".join(
    [
        MEDIA_TYPE_OCI_MANIFEST,
        MEDIA_TYPE_OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
TTL = 1.0  # the tag_ttl of the oci/ prefix


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    server = TokenServer(tmp_path_factory.mktemp("tokens"), USERS).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token_upstream(tmp_path_factory, token_server):
    process = RegistryProcess(
        str(tmp_path_factory.mktemp("token-upstream")), kind="reference", reference_config=token_server.reference_auth()
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def basic_upstream(tmp_path_factory):
    directory = tmp_path_factory.mktemp("basic-upstream")
    process = RegistryProcess(
        str(directory / "data"),
        kind="reference",
        reference_config=htpasswd_auth(directory, {"proxyuser": "proxy-secret"}),
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def oci_upstream(tmp_path_factory):
    process = RegistryProcess(str(tmp_path_factory.mktemp("oci-upstream"))).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def oci_token_upstream(tmp_path_factory, token_server):
    directory = tmp_path_factory.mktemp("oci-token-upstream")
    config = directory / "config.yaml"
    config.write_text(token_server.ociregistry_auth())
    process = RegistryProcess(str(directory / "data"), config=str(config)).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def edge(token_upstream):
    store = BlobStore(token_upstream.data_dir).start()
    front = Edge(token_upstream, store).start()
    yield front
    front.stop()
    store.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, token_upstream, basic_upstream, oci_upstream, oci_token_upstream, edge):
    directory = tmp_path_factory.mktemp("proxy")
    config = directory / "config.yaml"
    creds = "username: proxyuser, password: proxy-secret, timeout: 10s"
    config.write_text(
        "proxies:\n"
        f"  - {{prefix: tok, url: '{token_upstream.url}', {creds}}}\n"
        f"  - {{prefix: anon, url: '{token_upstream.url}', timeout: 10s}}\n"
        f"  - {{prefix: badcreds, url: '{token_upstream.url}', username: proxyuser, password: wrong}}\n"
        f"  - {{prefix: basic, url: '{basic_upstream.url}', {creds}}}\n"
        f"  - {{prefix: basicanon, url: '{basic_upstream.url}'}}\n"
        f"  - {{prefix: edge, url: '{edge.url}', {creds}}}\n"
        f"  - {{prefix: edgequick, url: '{edge.url}', username: proxyuser, password: proxy-secret, timeout: 1s, "
        "tag_ttl: 0}\n"
        f"  - {{prefix: oci, url: '{oci_upstream.url}', tag_ttl: {TTL}, timeout: 5s}}\n"
        f"  - {{prefix: ocitok, url: '{oci_token_upstream.url}', {creds}}}\n"
    )
    process = RegistryProcess(str(directory / "data"), config=str(config)).start()
    yield process
    process.stop()


def get_manifest(proxy, name, reference, accept=ACCEPT, method="GET"):
    return http_request(method, f"{proxy.url}/v2/{name}/manifests/{reference}", headers={"Accept": accept})


def get_blob(proxy, name, digest, headers=None, method="GET"):
    return http_request(method, f"{proxy.url}/v2/{name}/blobs/{digest}", headers=headers)


def error_code(response) -> str:
    return response.json()["errors"][0]["code"]


def assert_image_served(proxy, name, reference, layout, image):
    response = get_manifest(proxy, name, reference)
    assert response.status == 200, response.body
    assert response.body == image.manifest_bytes
    assert response.headers["content-type"] == MEDIA_TYPE_OCI_MANIFEST
    assert response.headers["docker-content-digest"] == image.manifest_digest
    for digest in image.blob_digests:
        blob = get_blob(proxy, name, digest)
        assert blob.status == 200, (digest, blob.status, blob.body[:300])
        assert blob.body == layout.read_blob(digest), digest


def cached_blob_path(proxy, digest: str) -> str:
    hex_ = digest.split(":", 1)[1]
    return os.path.join(proxy.data_dir, "blobs", "sha256", hex_[:2], hex_, "data")


# -- auth, caching ------------------------------------------------------------------------


def test_token_auth_pull_through_fetches_each_thing_once(proxy, token_upstream, token_server, tmp_path):
    layout = OCILayout(tmp_path / "image")
    image = layout.add_image("v1", layers=3, layer_size=256 << 10, seed="token-pull")
    push_image(token_upstream.url, "team/app", layout, image, "v1", token_server.bearer("team/app"))

    assert_image_served(proxy, "tok/team/app", "v1", layout, image)
    asked = upstream_requests(token_upstream)
    # Again, by tag (within its TTL) and by digest: all from the cache.
    assert_image_served(proxy, "tok/team/app", "v1", layout, image)
    assert_image_served(proxy, "tok/team/app", image.manifest_digest, layout, image)
    assert upstream_requests(token_upstream) == asked

    # The first request met the challenge; the token was then fetched once, with the credentials.
    assert asked[0] == "GET /v2/team/app/manifests/v1 401"
    assert upstream_requests(token_upstream, "GET", "/manifests/") == [
        "GET /v2/team/app/manifests/v1 401",
        "GET /v2/team/app/manifests/v1 200",
    ]
    for digest in image.blob_digests:
        assert upstream_requests(token_upstream, contains=digest, settle=0) == [f"GET /v2/team/app/blobs/{digest} 200"]
    assert [r for r in token_server.issued() if r[2] == ["repository:team/app:pull"]] == [
        ("issued", "proxyuser", ["repository:team/app:pull"])
    ]

    # Anonymous pulls through another prefix get their own (anonymous) token.  The blobs are
    # stored already: the upstream only confirms (HEAD) that this repository holds them too.
    assert_image_served(proxy, "anon/team/app", "v1", layout, image)
    assert ("issued", None, ["repository:team/app:pull"]) in token_server.issued()
    for digest in image.blob_digests:
        assert upstream_requests(token_upstream, contains=digest, settle=0) == [
            f"GET /v2/team/app/blobs/{digest} 200",
            f"HEAD /v2/team/app/blobs/{digest} 200",
        ]


def test_token_auth_upstream_that_is_ociregistry(proxy, oci_token_upstream, token_server, tmp_path):
    layout = OCILayout(tmp_path / "image")
    image = layout.add_image("v1", layers=2, layer_size=128 << 10, seed="oci-token")
    push_image(oci_token_upstream.url, "team/oci", layout, image, "v1", token_server.bearer("team/oci"))

    assert_image_served(proxy, "ocitok/team/oci", "v1", layout, image)
    assert_image_served(proxy, "ocitok/team/oci", "v1", layout, image)
    assert upstream_requests(oci_token_upstream) == [
        "GET /v2/team/oci/manifests/v1 401",
        "GET /v2/team/oci/manifests/v1 200",
        *(f"GET /v2/team/oci/blobs/{digest} 200" for digest in image.blob_digests),
    ]
    assert [r for r in token_server.issued() if r[2] == ["repository:team/oci:pull"]] == [
        ("issued", "proxyuser", ["repository:team/oci:pull"])
    ]


def test_refused_credentials_are_denied(proxy, token_upstream, token_server, tmp_path):
    layout = OCILayout(tmp_path / "image")
    image = layout.add_image("v1", layers=1, layer_size=1024, seed="refused")
    push_image(token_upstream.url, "team/secret", layout, image, "v1", token_server.bearer("team/secret"))
    response = get_manifest(proxy, "badcreds/team/secret", "v1")
    assert response.status == 403
    assert error_code(response) == "DENIED"
    assert ("refused", "proxyuser", ["repository:team/secret:pull"]) in token_server.requests
    assert get_blob(proxy, "badcreds/team/secret", image.layer_digests[0]).status == 403


def test_basic_auth_upstream(proxy, basic_upstream, tmp_path):
    layout = OCILayout(tmp_path / "image")
    image = layout.add_image("v1", layers=2, layer_size=64 << 10, seed="basic")
    push_image(basic_upstream.url, "team/basic", layout, image, "v1", basic("proxyuser", "proxy-secret"))

    assert_image_served(proxy, "basic/team/basic", "v1", layout, image)
    asked = upstream_requests(basic_upstream)
    # One challenge; from then on the credentials go with every request.
    assert [r for r in asked if r.endswith(" 401")] == ["GET /v2/team/basic/manifests/v1 401"]
    assert len(asked) == 2 + len(image.blob_digests)

    response = get_manifest(proxy, "basicanon/team/basic", "v1")
    assert response.status == 403, response.body
    assert error_code(response) == "DENIED"


def test_concurrent_pulls_of_an_uncached_blob_fetch_it_once(proxy, edge, token_upstream, token_server):
    """
    Nine clients pull a 32 MiB blob the upstream sends in about a second:
    seven at once (one asking for a range), one joining 0.4 s into the
    transfer, one reading slowly.  The upstream sends the blob once, every
    client gets its first bytes long before the end and all of it intact,
    and the proxy's memory stays flat.
    """
    data = random_bytes(32 << 20, "coalesce")
    digest = push_blob(token_upstream.url, "team/big", data, token_server.bearer("team/big"))
    url = f"{proxy.url}/v2/edge/team/big/blobs/{digest}"
    edge.store.rate = 32 << 20
    rss_before = _rss(proxy)

    results = {}
    start = threading.Barrier(9)

    def pull(i, headers=None, delay=0.0, pace=0.0):
        start.wait()
        time.sleep(delay)
        results[i] = _timed_get(url, headers, pace)

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(6)]
    threads.append(threading.Thread(target=pull, args=("range", {"Range": "bytes=1000-1999"})))
    threads.append(threading.Thread(target=pull, args=("late", None, 0.4)))  # reads what it missed from storage
    # Falls behind the upstream, so it stops being handed chunks in memory and reads from storage.
    threads.append(threading.Thread(target=pull, args=("slow", None, 0.0, 0.1)))
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        edge.store.rate = 0

    for i in [*range(6), "late", "slow"]:
        status, body, first_byte, done = results[i]
        assert status == 200
        assert body == data, i
        assert first_byte < done / 2, (i, first_byte, done)  # streamed, not stored first
    assert results["range"][:2] == (206, data[1000:2000])
    assert results["slow"][3] > 2.0  # it really was slower than the upstream
    assert [path for path, _ in edge.store.requests if digest in path] == [f"/blobs/{digest}?signature=test"]
    assert _peak_rss(proxy) - rss_before < 32 << 20
    with open(cached_blob_path(proxy, digest), "rb") as f:
        assert f.read() == data


def test_a_stalled_upstream_is_dropped_and_the_next_pull_fetches_again(proxy, edge, token_upstream, token_server):
    data = random_bytes(4 << 20, "stall")
    digest = push_blob(token_upstream.url, "team/stall", data, token_server.bearer("team/stall"))
    edge.store.stall_after = 1 << 20
    try:
        started = time.monotonic()
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            get_blob(proxy, "edgequick/team/stall", digest)
        assert time.monotonic() - started < 5  # the proxy's timeout is 1s
    finally:
        edge.store.stall_after = None
    assert "sent nothing for 1s" in proxy.log()
    assert not os.path.exists(cached_blob_path(proxy, digest))
    again = get_blob(proxy, "edgequick/team/stall", digest)
    assert again.status == 200
    assert again.body == data


def _timed_get(url: str, headers=None, pace: float = 0.0):
    """(status, body, seconds to the first body byte, seconds to the end); ``pace``: seconds between MiB read."""
    import urllib.error
    import urllib.request

    started = time.monotonic()
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=60)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), 0.0, 0.0
    with response:
        first = response.read(1)
        first_byte = time.monotonic() - started
        if not pace:
            body = first + response.read()
        else:
            chunks = [first]
            while chunk := response.read(1 << 20):
                chunks.append(chunk)
                time.sleep(pace)
            body = b"".join(chunks)
    return response.status, body, first_byte, time.monotonic() - started


def _rss(process) -> int:
    return _status_kib(process, "VmRSS") * 1024


def _peak_rss(process) -> int:
    return _status_kib(process, "VmHWM") * 1024


def _status_kib(process, key: str) -> int:
    with open(f"/proc/{process.process.pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(key)


def test_head_asks_upstream_without_downloading_and_ranges_work_uncached(proxy, token_upstream, token_server):
    data = random_bytes(300 << 10, "head-range")
    digest = push_blob(token_upstream.url, "team/head", data, token_server.bearer("team/head"))

    head = get_blob(proxy, "tok/team/head", digest, method="HEAD")
    assert head.status == 200
    assert int(head.headers["content-length"]) == len(data)
    assert head.headers["docker-content-digest"] == digest
    assert upstream_requests(token_upstream, contains=digest) == [f"HEAD /v2/team/head/blobs/{digest} 200"]
    assert not os.path.exists(cached_blob_path(proxy, digest))

    ranged = get_blob(proxy, "tok/team/head", digest, headers={"Range": "bytes=100000-"})
    assert ranged.status == 206
    assert ranged.headers["content-range"] == f"bytes 100000-{len(data) - 1}/{len(data)}"
    assert ranged.body == data[100000:]
    whole = get_blob(proxy, "tok/team/head", digest)
    assert whole.body == data
    assert upstream_requests(token_upstream, "GET", digest) == [f"GET /v2/team/head/blobs/{digest} 200"]


def test_pushes_and_deletes_under_a_proxied_prefix_are_refused(proxy, tmp_path):
    layout = OCILayout(tmp_path / "image")
    image = layout.add_image("v1", layers=1, layer_size=1024, seed="local")
    digest = image.layer_digests[0]
    refused = [
        http_request("POST", f"{proxy.url}/v2/tok/team/app/blobs/uploads/", b""),
        http_request("POST", f"{proxy.url}/v2/tok/team/app/blobs/uploads/?digest={digest}", layout.read_blob(digest)),
        http_request("POST", f"{proxy.url}/v2/tok/team/app/blobs/uploads/?mount={digest}&from=local/app", b""),
        http_request(
            "PUT",
            f"{proxy.url}/v2/tok/team/app/manifests/v1",
            image.manifest_bytes,
            {"Content-Type": MEDIA_TYPE_OCI_MANIFEST},
        ),
        http_request("DELETE", f"{proxy.url}/v2/tok/team/app/manifests/v1"),
        http_request("DELETE", f"{proxy.url}/v2/tok/team/app/blobs/{digest}"),
    ]
    for response in refused:
        assert response.status == 405, response.body
        assert error_code(response) == "UNSUPPORTED"
    assert "pull-through cache" in refused[0].json()["errors"][0]["detail"]

    # Repositories outside the prefixes are an ordinary registry.
    push_image_http(proxy.url, "local/app", layout, image, "v1")
    assert_image_served(proxy, "local/app", "v1", layout, image)


def test_what_the_upstream_does_not_have_is_a_404(proxy, token_upstream, token_server, tmp_path):
    layout = OCILayout(tmp_path / "image")
    image = layout.add_image("v1", layers=1, layer_size=1024, seed="missing")
    push_image(token_upstream.url, "team/there", layout, image, "v1", token_server.bearer("team/there"))
    missing = sha256_digest(b"nowhere")
    for response, code in [
        (get_manifest(proxy, "tok/team/there", "no-such-tag"), "MANIFEST_UNKNOWN"),
        (get_manifest(proxy, "tok/team/there", missing), "MANIFEST_UNKNOWN"),
        (get_blob(proxy, "tok/team/there", missing), "BLOB_UNKNOWN"),
        (http_request("GET", f"{proxy.url}/v2/tok/team/nowhere/tags/list"), "NAME_UNKNOWN"),
    ]:
        assert response.status == 404, response.body
        assert error_code(response) == code
    assert get_blob(proxy, "tok/team/there", missing, method="HEAD").status == 404
    listed = http_request("GET", f"{proxy.url}/v2/tok/team/there/tags/list")
    assert listed.json() == {"name": "tok/team/there", "tags": ["v1"]}


# -- tags, stale content, restarts --------------------------------------------------------


def test_tags_revalidate_after_their_ttl_and_stale_content_is_served_when_upstream_is_down(
    proxy, oci_upstream, tmp_path
):
    layout = OCILayout(tmp_path / "image")
    first = layout.add_image("a", layers=2, layer_size=32 << 10, seed="ttl-first")
    second = layout.add_image("b", layers=2, layer_size=32 << 10, seed="ttl-second")
    never_pulled = layout.add_image("c", layers=1, layer_size=1024, seed="ttl-never")
    push_image_http(oci_upstream.url, "team/ttl", layout, first, "v1")
    push_image_http(oci_upstream.url, "team/ttl", layout, never_pulled, "other")

    assert_image_served(proxy, "oci/team/ttl", "v1", layout, first)
    push_image_http(oci_upstream.url, "team/ttl", layout, second, "v1")
    # Within the TTL the cached tag is served without asking.
    assert get_manifest(proxy, "oci/team/ttl", "v1").body == first.manifest_bytes
    assert upstream_requests(oci_upstream, contains="/manifests/") == ["GET /v2/team/ttl/manifests/v1 200"]

    time.sleep(TTL + 0.1)
    assert_image_served(proxy, "oci/team/ttl", "v1", layout, second)
    assert upstream_requests(oci_upstream, contains="/manifests/") == [
        "GET /v2/team/ttl/manifests/v1 200",
        "HEAD /v2/team/ttl/manifests/v1 200",
        "GET /v2/team/ttl/manifests/v1 200",
    ]
    tag_link = os.path.join(
        proxy.data_dir, "repositories", "oci", "team", "ttl", "_manifests", "tags", "v1", "current", "link"
    )
    with open(tag_link) as f:
        assert f.read() == second.manifest_digest

    # An unchanged tag costs one HEAD per TTL.
    time.sleep(TTL + 0.1)
    assert get_manifest(proxy, "oci/team/ttl", "v1").body == second.manifest_bytes
    assert upstream_requests(oci_upstream, contains="/manifests/")[-1] == "HEAD /v2/team/ttl/manifests/v1 200"

    oci_upstream.stop()
    try:
        time.sleep(TTL + 0.1)
        assert_image_served(proxy, "oci/team/ttl", "v1", layout, second)
        assert_image_served(proxy, "oci/team/ttl", first.manifest_digest, layout, first)
        assert "serving cached oci/team/ttl:v1" in proxy.log()
        assert http_request("GET", f"{proxy.url}/v2/oci/team/ttl/tags/list").json()["tags"] == ["v1"]
        for response in (
            get_manifest(proxy, "oci/team/ttl", "other"),
            get_blob(proxy, "oci/team/ttl", never_pulled.layer_digests[0]),
        ):
            assert response.status == 503, response.body
            assert error_code(response) == "UNAVAILABLE"

        # The cache is in storage: a restarted proxy serves it with the upstream still down.
        proxy.stop()
        proxy.start()
        assert_image_served(proxy, "oci/team/ttl", "v1", layout, second)
    finally:
        oci_upstream.start()

    # A tag deleted upstream is deleted here when it is next checked.
    deleted = http_request("DELETE", f"{oci_upstream.url}/v2/team/ttl/manifests/v1")
    assert deleted.status == 202
    time.sleep(TTL + 0.1)
    response = get_manifest(proxy, "oci/team/ttl", "v1")
    assert response.status == 404
    assert not os.path.exists(tag_link)
    # What was cached by digest stays.
    assert get_manifest(proxy, "oci/team/ttl", second.manifest_digest).status == 200


def test_an_upstream_answering_5xx_is_unavailable_and_the_cache_serves(
    proxy, edge, token_upstream, token_server, tmp_path
):
    layout = OCILayout(tmp_path / "image")
    image = layout.add_image("v1", layers=1, layer_size=4096, seed="5xx")
    push_image(token_upstream.url, "team/5xx", layout, image, "v1", token_server.bearer("team/5xx"))
    assert_image_served(proxy, "edgequick/team/5xx", "v1", layout, image)
    edge.failing = 502
    try:
        assert_image_served(proxy, "edgequick/team/5xx", "v1", layout, image)  # tag_ttl 0: it asked, and failed
        assert "serving cached edgequick/team/5xx:v1" in proxy.log()
        response = get_manifest(proxy, "edgequick/team/5xx", "v2")
        assert response.status == 503
        assert "502" in response.json()["errors"][0]["detail"]
    finally:
        edge.failing = 0


def test_a_corrupt_upstream_blob_is_not_cached_and_the_client_sees_a_broken_transfer(proxy, oci_upstream):
    data = random_bytes(3 << 20, "corrupt")
    digest = push_blob_http(oci_upstream.url, "team/corrupt", data)
    hex_ = digest.split(":", 1)[1]
    stored = os.path.join(oci_upstream.data_dir, "blobs", "sha256", hex_[:2], hex_, "data")
    with open(stored, "r+b") as f:
        f.seek(len(data) // 2)
        f.write(b"bit rot")

    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        get_blob(proxy, "oci/team/corrupt", digest)
    time.sleep(0.2)
    assert not os.path.exists(cached_blob_path(proxy, digest))
    assert "the upstream sent a blob with digest" in proxy.log()


# -- what sits around real registries -------------------------------------------------------


def test_redirects_to_object_storage_and_rate_limits(proxy, edge, token_upstream, token_server, tmp_path):
    layout = OCILayout(tmp_path / "image")
    image = layout.add_image("v1", layers=2, layer_size=64 << 10, seed="edge")
    push_image(token_upstream.url, "team/edge", layout, image, "v1", token_server.bearer("team/edge"))
    edge.rate_limit = 1

    started = time.monotonic()
    assert_image_served(proxy, "edge/team/edge", "v1", layout, image)
    assert time.monotonic() - started >= edge.retry_after  # it waited as Retry-After said
    # The first answer was 429; it was asked again.
    assert [r for r in edge.requests if r[1] == "/v2/team/edge/manifests/v1"][:2] == [
        ("GET", "/v2/team/edge/manifests/v1")
    ] * 2
    assert "rate limited" in proxy.log()
    # The client's Accept header went upstream as it was.
    manifest_requests = [h for (_, path), h in zip(edge.requests, edge.headers, strict=True) if "/manifests/" in path]
    assert {h.get("Accept") for h in manifest_requests} == {ACCEPT}

    # Every blob came from the object store, and no credentials went there.
    fetched = [path.split("/blobs/", 1)[1].split("?")[0] for path, _ in edge.store.requests]
    assert sorted(d for d in fetched if d in image.blob_digests) == sorted(image.blob_digests)
    assert {authorization for _, authorization in edge.store.requests} == {None}


def test_a_mirror_with_docker_hubs_library_namespace(tmp_path, oci_upstream):
    layout = OCILayout(tmp_path / "image")
    image = layout.add_image("v1", layers=2, layer_size=4096, seed="mirror")
    push_image_http(oci_upstream.url, "library/alpine", layout, image, "3.20")
    push_image_http(oci_upstream.url, "bitnami/redis", layout, image, "7")

    config = tmp_path / "mirror.yaml"
    config.write_text(f"proxies: [{{prefix: '', url: '{oci_upstream.url}', default_namespace: library}}]\n")
    mirror = RegistryProcess(str(tmp_path / "mirror"), config=str(config)).start()
    try:
        assert_image_served(mirror, "alpine", "3.20", layout, image)  # skopeo docker://mirror/alpine:3.20
        assert_image_served(mirror, "library/alpine", "3.20", layout, image)  # Docker's registry-mirrors
        assert_image_served(mirror, "bitnami/redis", "7", layout, image)
        assert upstream_requests(oci_upstream, contains="/manifests/3.20") == [
            "GET /v2/library/alpine/manifests/3.20 200",
            "GET /v2/library/alpine/manifests/3.20 200",
        ]
        response = http_request("POST", f"{mirror.url}/v2/anything/blobs/uploads/", b"")
        assert response.status == 405
    finally:
        mirror.stop()


def test_referrers_come_from_upstream_and_cache(proxy, oci_upstream, tmp_path):
    layout = OCILayout(tmp_path / "image")
    image = layout.add_image("v1", layers=1, layer_size=1024, seed="referred")
    push_image_http(oci_upstream.url, "team/signed", layout, image, "v1")
    empty = push_blob_http(oci_upstream.url, "team/signed", b"{}")
    signature = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "artifactType": "application/vnd.example.signature",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}],
            "subject": {
                "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                "digest": image.manifest_digest,
                "size": image.manifest_size,
            },
        }
    ).encode()
    signature_digest = sha256_digest(signature)
    push_manifest_http(oci_upstream.url, "team/signed", signature_digest, signature, MEDIA_TYPE_OCI_MANIFEST)

    listed = http_request("GET", f"{proxy.url}/v2/oci/team/signed/referrers/{image.manifest_digest}").json()
    assert [d["digest"] for d in listed["manifests"]] == [signature_digest]
    assert listed["manifests"][0]["artifactType"] == "application/vnd.example.signature"
    filtered = http_request(
        "GET",
        f"{proxy.url}/v2/oci/team/signed/referrers/{image.manifest_digest}?artifactType=application/vnd.example.sbom",
    ).json()
    assert filtered["manifests"] == []

    # Pulled once, the signature is cached with its subject link: listed even with the upstream down.
    assert get_manifest(proxy, "oci/team/signed", signature_digest).body == signature
    oci_upstream.stop()
    try:
        listed = http_request("GET", f"{proxy.url}/v2/oci/team/signed/referrers/{image.manifest_digest}").json()
        assert [d["digest"] for d in listed["manifests"]] == [signature_digest]
    finally:
        oci_upstream.start()


def test_cached_content_is_in_the_catalog_and_collected_like_the_rest(proxy):
    catalog = http_request("GET", f"{proxy.url}/v2/_catalog").json()["repositories"]
    for name in ("tok/team/app", "anon/team/app", "oci/team/ttl", "local/app"):
        assert name in catalog

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from oci_registry.cli import main; main()",
            "gc",
            "--data-dir",
            proxy.data_dir,
            "--grace",
            "0",
            "--dry-run",
            "--json",
        ],
        capture_output=True,
        env=registry_environment(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    report = json.loads(result.stdout)
    removed = {blob["digest"] for blob in report["blobs_removed"]}
    # The 32 MiB blob was fetched on its own, with no manifest: unreferenced, so collectable.
    assert 32 << 20 in [blob["size"] for blob in report["blobs_removed"]]
    tagged = get_manifest(proxy, "tok/team/app", "v1").json()
    kept = {tagged["config"]["digest"], *(layer["digest"] for layer in tagged["layers"])}
    assert not kept & removed
