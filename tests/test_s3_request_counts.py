"""
What each registry operation costs in S3 requests, counted by a proxy
(`counting_proxy`) between a real registry process and a real SeaweedFS:
the figures docs/storage.md's table promises, for a process that has seen
nothing yet (cold) and for one that served the same content just before
(warm).  No operation of a push or a pull lists a folder.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid

import pytest

from counting_proxy import CountingProxy
from image_builder import http_request, random_bytes, sha256_digest
from oci_registry.catalog import RECHECK_AFTER
from oci_registry.content_cache import TTL
from registry_process import RegistryProcess
from s3_server import s3_server  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.ociregistry_only

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


@pytest.fixture(scope="module")
def proxy(s3_server):  # noqa: F811
    counting = CountingProxy(s3_server.port).start()
    yield counting
    counting.stop()


@pytest.fixture(scope="module")
def settings(s3_server, proxy):  # noqa: F811
    return s3_server.settings(endpoint=proxy.endpoint)


@pytest.fixture(scope="module")
def config(s3_server, settings, tmp_path_factory):  # noqa: F811
    return s3_server.config_file(str(tmp_path_factory.mktemp("config")), settings)


def start(config, tmp_path_factory, proxy) -> RegistryProcess:
    """
    A registry process, once its start-up requests (made while it already
    answers) are done, so that they are not counted: its check of the
    bucket (a listing), then its look for ``catalog/complete`` (and on a
    new store, its listing of ``repositories/`` and the write of it).
    """
    with proxy.counting() as seen:
        process = RegistryProcess(str(tmp_path_factory.mktemp("replica")), config=config).start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            r.method == "HEAD" and r.key.endswith("/catalog/complete") for r in seen.requests
        ):
            time.sleep(0.01)
        settled = seen.total
        while time.monotonic() < deadline:
            time.sleep(0.3)
            if seen.total == settled:
                break
            settled = seen.total
    return process


@pytest.fixture
def registry(config, tmp_path_factory, proxy):
    process = start(config, tmp_path_factory, proxy)
    yield process
    process.stop()


def name() -> str:
    return f"counts/{uuid.uuid4().hex[:10]}"


def push_blob(registry, repository: str, data: bytes) -> str:
    """POST, then PUT ``?digest=`` with the whole body."""
    digest = sha256_digest(data)
    started = http_request("POST", f"{registry.url}/v2/{repository}/blobs/uploads/", b"")
    assert started.status == 202, started
    location = urllib.parse.urljoin(registry.url + "/", started.headers["location"])
    separator = "&" if "?" in location else "?"
    finished = http_request(
        "PUT", f"{location}{separator}digest={digest}", data, {"Content-Type": "application/octet-stream"}
    )
    assert finished.status == 201, finished
    return digest


def push_in_two(post, patch, put, repository: str, data: bytes, split: int) -> str:
    """POST, a PATCH of ``data[:split]``, then PUT ``?digest=`` with the rest: each to the replica named."""
    digest = sha256_digest(data)
    started = http_request("POST", f"{post.url}/v2/{repository}/blobs/uploads/", b"")
    assert started.status == 202, started
    location = urllib.parse.urljoin(patch.url + "/", started.headers["location"])
    reply = http_request(
        "PATCH",
        location,
        data[:split],
        {"Content-Type": "application/octet-stream", "Content-Range": f"0-{split - 1}"},
    )
    assert reply.status == 202, reply
    location = urllib.parse.urljoin(put.url + "/", reply.headers["location"])
    separator = "&" if "?" in location else "?"
    reply = http_request("PUT", f"{location}{separator}digest={digest}", data[split:])
    assert reply.status == 201, reply
    return digest


def post_blob(registry, repository: str, data: bytes) -> str:
    """A monolithic ``POST ?digest=``."""
    digest = sha256_digest(data)
    reply = http_request(
        "POST",
        f"{registry.url}/v2/{repository}/blobs/uploads/?digest={digest}",
        data,
        {"Content-Type": "application/octet-stream"},
    )
    assert reply.status == 201, reply
    return digest


def image(registry, repository: str, tag: str) -> tuple[str, bytes]:
    """A one-layer image pushed and tagged: its manifest's digest and bytes."""
    seed = uuid.uuid4().hex
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = random_bytes(4096, seed)
    push_blob(registry, repository, config)
    push_blob(registry, repository, layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256_digest(layer), "size": len(layer)}],
        }
    ).encode()
    reply = http_request(
        "PUT", f"{registry.url}/v2/{repository}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST}
    )
    assert reply.status == 201, reply
    return sha256_digest(manifest), manifest


def pull(proxy, registry, repository: str, digest: str, tag: str, layer: str) -> dict:
    """The requests of a manifest GET by digest, by tag and a blob HEAD, each counted apart."""
    counted = {}
    for label, method, path in (
        ("manifest by digest", "GET", f"manifests/{digest}"),
        ("manifest by tag", "GET", f"manifests/{tag}"),
        ("blob HEAD", "HEAD", f"blobs/{layer}"),
    ):
        with proxy.counting() as seen:
            reply = http_request(method, f"{registry.url}/v2/{repository}/{path}", headers={"Accept": OCI_MANIFEST})
        assert reply.status == 200, (label, reply)
        counted[label] = seen
    return counted


def entry_requests(seen, repository: str) -> int:
    """How many of the requests ``seen`` were for the repository's catalog entry."""
    return sum(r.key.endswith(f"/catalog/repositories/{repository.replace('/', '.')}") for r in seen.requests)


def catalog(registry) -> list[str]:
    reply = http_request("GET", f"{registry.url}/v2/_catalog")
    assert reply.status == 200, reply
    return json.loads(reply.body)["repositories"]


def test_pushes_cost_at_most_six_requests_and_never_list(proxy, registry):
    repository = name()
    with proxy.counting() as seen:
        push_blob(registry, repository, random_bytes(4096, uuid.uuid4().hex))
    # The first into a repository too: its catalog entry, copied from the session's
    # empty data, is the look at the session.
    assert seen.total <= 6 and seen.lists == 0, seen
    assert entry_requests(seen, repository) == 1, seen
    assert repository in catalog(registry)
    with proxy.counting() as seen:
        push_blob(registry, repository, random_bytes(4096, uuid.uuid4().hex))
    assert seen.total <= 6 and seen.lists == 0 and entry_requests(seen, repository) == 0, seen
    with proxy.counting() as seen:
        post_blob(registry, repository, random_bytes(4096, uuid.uuid4().hex))
    assert seen.total <= 6 and seen.lists == 0, seen
    with proxy.counting() as seen:
        image(registry, repository, "v1")
    assert seen.lists == 0, seen
    assert seen.total <= 20, seen  # two blob pushes of 6 and the manifest's checks and writes


def test_the_first_push_into_a_repository_through_two_replicas(proxy, config, tmp_path_factory):
    """
    The POST through one replica and the PUT through the other: 6 requests
    still, and the repository is listed by both; so it is when a chunk went
    through the other replica first (the session then holds bytes).
    """
    a, b = start(config, tmp_path_factory, proxy), start(config, tmp_path_factory, proxy)
    try:
        repository = name()
        data = random_bytes(4096, uuid.uuid4().hex)
        digest = sha256_digest(data)
        with proxy.counting() as seen:
            started = http_request("POST", f"{a.url}/v2/{repository}/blobs/uploads/", b"")
            location = urllib.parse.urljoin(b.url + "/", started.headers["location"])
            separator = "&" if "?" in location else "?"
            reply = http_request(
                "PUT", f"{location}{separator}digest={digest}", data, {"Content-Type": "application/octet-stream"}
            )
        assert reply.status == 201, reply
        assert seen.total <= 6 and seen.lists == 0 and entry_requests(seen, repository) == 1, seen
        assert repository in catalog(a) and repository in catalog(b)

        chunked = name()
        push_in_two(b, a, b, chunked, data, 1000)
        assert chunked in catalog(a) and chunked in catalog(b)
        assert http_request("GET", f"{a.url}/v2/{chunked}/blobs/{digest}").body == data
    finally:
        a.stop()
        b.stop()


def test_a_first_push_that_fails_leaves_its_repository_unlisted(registry, settings, s3_server):  # noqa: F811
    """The entry the PUT wrote before the body came goes again when the blob is refused."""
    repository = name()
    data = random_bytes(4096, uuid.uuid4().hex)
    started = http_request("POST", f"{registry.url}/v2/{repository}/blobs/uploads/", b"")
    location = urllib.parse.urljoin(registry.url + "/", started.headers["location"])
    separator = "&" if "?" in location else "?"
    wrong = sha256_digest(data + b"!")
    reply = http_request("PUT", f"{location}{separator}digest={wrong}", data)
    assert reply.status == 400 and b"DIGEST_INVALID" in reply.body, reply
    assert repository not in catalog(registry)
    entry = f"{settings.prefix}/catalog/repositories/{repository.replace('/', '.')}"
    assert s3_server.request("HEAD", entry)[0] == 404
    push_blob(registry, repository, data)
    assert repository in catalog(registry)


def test_a_larger_chunked_push_never_lists(proxy, registry):
    repository = name()
    data = random_bytes(200 << 10, uuid.uuid4().hex)  # past what is held in memory
    digest = sha256_digest(data)
    with proxy.counting() as seen:
        push_in_two(registry, registry, registry, repository, data, 100_000)
    assert seen.lists == 0, seen
    assert http_request("GET", f"{registry.url}/v2/{repository}/blobs/{digest}").body == data


def test_pulls_cold_and_warm(proxy, config, registry, tmp_path_factory):
    repository = name()
    layer = push_blob(registry, repository, random_bytes(4096, uuid.uuid4().hex))
    digest, _ = image(registry, repository, "v1")
    cold = start(config, tmp_path_factory, proxy)  # a process that has read nothing yet
    try:
        first = pull(proxy, cold, repository, digest, "v1", layer)
        again = pull(proxy, cold, repository, digest, "v1", layer)
    finally:
        cold.stop()
    fresh = start(config, tmp_path_factory, proxy)
    try:
        with proxy.counting() as by_tag:
            assert http_request("GET", f"{fresh.url}/v2/{repository}/manifests/v1").status == 200
    finally:
        fresh.stop()
    for seen in (*first.values(), *again.values(), by_tag):
        assert seen.lists == 0, seen
    # Cold: one read of a link answers each (a small manifest's bytes and a fresh blob link's size are in it).
    assert first["manifest by digest"].total == 1, first
    assert by_tag.total <= 2, by_tag
    assert first["blob HEAD"].total <= 1, first
    # Warm: the bytes and the links it has just read; the tag, and a blob's data, are read every time.
    assert again["manifest by digest"].total == 0, again
    assert again["manifest by tag"].total <= 1, again
    assert again["blob HEAD"].total <= 1, again


def test_links_an_earlier_release_wrote_are_read_at_the_former_cost(
    proxy,
    config,
    settings,
    registry,
    tmp_path_factory,
    s3_server,  # noqa: F811
):
    """
    A layer link holding the digest alone, and a revision link holding the
    media type alone: what they say is read from the blob's data instead.
    """
    repository = name()
    data = random_bytes(4096, uuid.uuid4().hex)
    layer = push_blob(registry, repository, data)
    digest, manifest = image(registry, repository, "v1")
    folder = f"{settings.prefix}/repositories/{repository}"
    for key, content in (
        (f"{folder}/_layers/sha256/{layer.split(':')[1]}/link", layer),
        (f"{folder}/_manifests/revisions/sha256/{digest.split(':')[1]}/link", OCI_MANIFEST),
    ):
        status, _ = s3_server.request("PUT", urllib.parse.quote(key), content.encode())
        assert status == 200
    cold = start(config, tmp_path_factory, proxy)
    try:
        with proxy.counting() as by_digest:
            got = http_request(
                "GET", f"{cold.url}/v2/{repository}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}
            )
        assert got.status == 200 and got.body == manifest
        assert got.headers["content-type"] == OCI_MANIFEST
        with proxy.counting() as head:
            got = http_request("HEAD", f"{cold.url}/v2/{repository}/blobs/{layer}")
        assert got.status == 200 and got.headers["content-length"] == str(len(data))
        got = http_request("HEAD", f"{cold.url}/v2/{repository}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert got.status == 200 and got.headers["content-length"] == str(len(manifest))
        assert http_request("GET", f"{cold.url}/v2/{repository}/blobs/{layer}").body == data
    finally:
        cold.stop()
    assert by_digest.total == 2 and by_digest.lists == 0, by_digest  # the link, then the bytes
    assert head.total == 2 and head.lists == 0, head  # the link, then the data


def test_a_delete_through_one_replica_is_seen_by_the_other_within_the_ttl(proxy, config, tmp_path_factory):
    a, b = start(config, tmp_path_factory, proxy), start(config, tmp_path_factory, proxy)
    try:
        repository = name()
        layer = push_blob(a, repository, random_bytes(4096, uuid.uuid4().hex))
        digest, _ = image(a, repository, "v1")
        pull(proxy, b, repository, digest, "v1", layer)  # b remembers the manifest and the links
        assert http_request("DELETE", f"{a.url}/v2/{repository}/manifests/{digest}").status == 202
        assert http_request("DELETE", f"{a.url}/v2/{repository}/blobs/{layer}").status == 202
        # At once through a, and for the tag through b too (tags are never remembered).
        assert http_request("GET", f"{a.url}/v2/{repository}/manifests/{digest}").status == 404
        assert http_request("HEAD", f"{a.url}/v2/{repository}/blobs/{layer}").status == 404
        assert http_request("GET", f"{b.url}/v2/{repository}/manifests/v1").status == 404
        deadline = time.monotonic() + TTL + 5
        seen_at = None
        while time.monotonic() < deadline:
            manifest = http_request("GET", f"{b.url}/v2/{repository}/manifests/{digest}").status
            blob = http_request("HEAD", f"{b.url}/v2/{repository}/blobs/{layer}").status
            if manifest == 404 and blob == 404:
                seen_at = time.monotonic()
                break
            assert (manifest, blob) in ((200, 200), (404, 200), (200, 404)), (manifest, blob)
            time.sleep(0.2)
        assert seen_at is not None, f"b still serves what a deleted {TTL + 5} s later"
    finally:
        a.stop()
        b.stop()


def test_a_repository_emptied_through_one_replica_and_pushed_into_through_another_is_listed(
    proxy, config, tmp_path_factory
):
    """
    a writes the entry at its first push; b empties the repository and drops
    it; a pushes again, trusting the entry it wrote seconds before: b looks
    again `RECHECK_AFTER` later and lists it.  Once a's entry is older than
    `REWRITE_AFTER`, a's next push writes it itself, at once.
    """
    a, b = start(config, tmp_path_factory, proxy), start(config, tmp_path_factory, proxy)
    try:
        repository = name()
        first = push_blob(a, repository, random_bytes(4096, uuid.uuid4().hex))
        assert repository in catalog(b)
        assert http_request("DELETE", f"{b.url}/v2/{repository}/blobs/{first}").status == 202
        assert repository not in catalog(a)
        second = push_blob(a, repository, random_bytes(4096, uuid.uuid4().hex))
        deadline = time.monotonic() + RECHECK_AFTER + 10
        while repository not in catalog(a) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert repository in catalog(a) and repository in catalog(b)

        assert http_request("DELETE", f"{b.url}/v2/{repository}/blobs/{second}").status == 202
        assert repository not in catalog(a)
        push_blob(a, repository, random_bytes(4096, uuid.uuid4().hex))  # a's entry is older than REWRITE_AFTER
        assert repository in catalog(a) and repository in catalog(b)
    finally:
        a.stop()
        b.stop()
