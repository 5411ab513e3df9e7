"""
What a page of the catalog and of a tag list costs in S3 requests, counted
by a proxy (`counting_proxy`) between a real registry process and a real
SeaweedFS: a constant of one or two listings, whatever the store holds
(300 repositories, flat and nested, and a repository of 1,000 tags, all
pushed through the API).  A store written before the catalog's entries
existed is listed from its folders, then from the entries once the first
catalog request has rebuilt them.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from xml.etree import ElementTree

import pytest

from counting_proxy import CountingProxy
from image_builder import http_request, random_bytes, sha256_digest
from registry_process import RegistryProcess
from s3_server import s3_server  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.ociregistry_only

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
N = 100
SEED = "seed/image"


@pytest.fixture(scope="module")
def proxy(s3_server):  # noqa: F811
    counting = CountingProxy(s3_server.port).start()
    yield counting
    counting.stop()


def start(s3_server, proxy, tmp_path_factory, prefix: str) -> RegistryProcess:  # noqa: F811
    """A registry process on ``prefix`` of the bucket, once the requests of its start-up are done."""
    settings = s3_server.settings(prefix=prefix, endpoint=proxy.endpoint)
    config = s3_server.config_file(str(tmp_path_factory.mktemp("config")), settings)
    with proxy.counting() as seen:
        process = RegistryProcess(str(tmp_path_factory.mktemp("replica")), config=config).start()
        quiet(seen)
    return process


def quiet(seen, timeout: float = 10) -> None:
    """Wait until no request has passed for a moment (the start-up check's, a rebuild's)."""
    deadline = time.monotonic() + timeout
    count, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        if seen.total != count:
            count, since = seen.total, time.monotonic()
        elif time.monotonic() - since > 0.5:
            return
        time.sleep(0.05)


def push_seed(registry, repository: str = SEED) -> tuple[bytes, list[str]]:
    """An image of its own in ``repository``: its manifest, and its blobs' digests (to mount elsewhere)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": uuid.uuid4().hex}).encode()
    layer = random_bytes(1024, uuid.uuid4().hex)
    for blob in (config, layer):
        reply = http_request(
            "POST",
            f"{registry.url}/v2/{repository}/blobs/uploads/?digest={sha256_digest(blob)}",
            blob,
            {"Content-Type": "application/octet-stream"},
        )
        assert reply.status == 201, reply
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256_digest(layer), "size": len(layer)}],
        }
    ).encode()
    put_manifest(registry, repository, "latest", manifest)
    return manifest, [sha256_digest(config), sha256_digest(layer)]


def put_manifest(registry, repository: str, tag: str, manifest: bytes) -> None:
    reply = http_request(
        "PUT", f"{registry.url}/v2/{repository}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST}
    )
    assert reply.status == 201, reply


def fill(registry, names: list[str], tags: list[str]) -> None:
    """``names`` each holding the seed image (its blobs mounted), and ``many/tags`` with ``tags``."""
    manifest, blobs = push_seed(registry)

    def repository(name: str) -> None:
        for digest in blobs:
            query = urllib.parse.urlencode({"mount": digest, "from": SEED})
            reply = http_request("POST", f"{registry.url}/v2/{name}/blobs/uploads/?{query}", b"")
            assert reply.status == 201, reply
        put_manifest(registry, name, "latest", manifest)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(repository, names + ["many/tags"]))
        list(pool.map(lambda tag: put_manifest(registry, "many/tags", tag, manifest), tags))


NAMES = (
    [f"flat{i:03d}" for i in range(150)]
    + [f"team{i % 5}/app{i:03d}" for i in range(140)]
    + ["a", "a-b", "a.b", "a/b", "a/b/c", "a0", "a-b/c", "a_b", "z/y/x", "team1", "ab/" * 84 + "abc"]
)
TAGS = [f"v{i:04d}" for i in range(990)] + ["v1", "v1-rc", "v1-rc.3", "v1.0", "v10", "v1_0", "V1", "_x", "x", "x-y"]


@pytest.fixture(scope="module")
def store(s3_server, proxy, tmp_path_factory):  # noqa: F811
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    registry = start(s3_server, proxy, tmp_path_factory, prefix)
    try:
        fill(registry, NAMES, TAGS)
        yield registry, prefix
    finally:
        registry.stop()


def catalog_page(registry, query: str) -> tuple[list[str], str | None]:
    reply = http_request("GET", f"{registry.url}/v2/_catalog{query}")
    assert reply.status == 200, reply
    return json.loads(reply.body)["repositories"], reply.headers.get("link")


def tags_page(registry, query: str) -> tuple[list[str], str | None]:
    reply = http_request("GET", f"{registry.url}/v2/many/tags/tags/list{query}")
    assert reply.status == 200, reply
    return json.loads(reply.body)["tags"], reply.headers.get("link")


LASTS = [None, "a", "a-b", "a/b", "flat075", "flat149", "team2", "team2/app100", "team4/app139", "team1", "z", "zz"]
LASTS += ["a~", "A", "flat07%", "flat07~", "a/b/c/d", "team2/", "team2-", "ab/ab", "\u00e9"]  # not names


def test_a_catalog_page_costs_one_listing(store, proxy):
    registry, _ = store
    everything = sorted(NAMES + [SEED, "many/tags"])
    catalog_page(registry, f"?n={N}")  # the first looks up whether the entries are complete, once
    for last in LASTS:
        query = f"?n={N}" + (f"&last={urllib.parse.quote(last)}" if last else "")
        with proxy.counting() as seen:
            page, link = catalog_page(registry, query)
        expected = [n for n in everything if last is None or n > last]
        assert page == expected[:N], last
        assert (link is not None) == (len(expected) > N), last
        assert seen.total <= 1 and seen.lists == seen.total, (last, seen)


def test_the_whole_catalog_pages_in_a_listing_a_page(store, proxy):
    registry, _ = store
    everything = sorted(NAMES + [SEED, "many/tags"])
    seen_names: list[str] = []
    query: str | None = "?n=50"
    with proxy.counting() as seen:
        for _ in range(20):
            page, link = catalog_page(registry, query)
            seen_names += page
            if link is None:
                break
            query = "?" + link.split("?", 1)[1].split(">", 1)[0]
    assert seen_names == everything
    assert seen.total <= len(everything) // 50 + 1, seen


def test_a_tag_page_costs_one_or_two_listings(store, proxy):
    registry, _ = store
    everything = sorted(TAGS + ["latest"])
    for last in [None, "V1", "_x", "latest", "v0499", "v0989", "v1", "v1-", "v1-rc", "v1.0", "v10", "x", "zz"]:
        query = f"?n={N}" + (f"&last={last}" if last else "")
        with proxy.counting() as seen:
            page, link = tags_page(registry, query)
        expected = [t for t in everything if last is None or t > last]
        assert page == expected[:N], last
        assert (link is not None) == (len(expected) > N), last
        assert seen.lists <= 2 and seen.total <= 4, (last, seen)
    with proxy.counting() as seen:
        page, link = tags_page(registry, "")
    assert page == everything and link is None
    assert seen.total <= 3, seen


def keys(s3_server, prefix: str) -> list[str]:  # noqa: F811
    """Every key under ``prefix/`` of the bucket."""
    found, token = [], None
    while True:
        query = f"list-type=2&prefix={prefix}/" + (f"&continuation-token={urllib.parse.quote(token)}" if token else "")
        status, body = s3_server.request("GET", query=query)
        assert status == 200, body
        root = ElementTree.fromstring(body)
        tag = lambda e: e.tag.rsplit("}", 1)[-1]  # noqa: E731
        found += [e.text for e in root.iter() if tag(e) == "Key"]
        token = next((e.text for e in root.iter() if tag(e) == "NextContinuationToken"), None)
        if token is None:
            return found


def test_a_store_from_before_the_entries_is_listed_then_rebuilt(s3_server, proxy, tmp_path_factory):  # noqa: F811
    """
    Without ``catalog/``, pages are walked from the repositories' folders
    (about two requests per repository); the first starts writing the entries,
    after which a page is one listing and new pushes and deletes keep them.
    """
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    names = [f"old{i:02d}" for i in range(20)] + [f"old/n{i:02d}" for i in range(20)] + ["old-x", "old.y"]
    registry = start(s3_server, proxy, tmp_path_factory, prefix)
    try:
        fill(registry, names, [])
    finally:
        registry.stop()
    for key in keys(s3_server, f"{prefix}/catalog"):
        assert s3_server.request("DELETE", key)[0] == 204
    everything = sorted(names + [SEED, "many/tags"])
    registry = start(s3_server, proxy, tmp_path_factory, prefix)
    try:
        with proxy.counting() as seen:
            page, _ = catalog_page(registry, "?n=10&last=old")
            assert page == [n for n in everything if n > "old"][:10]
            assert seen.total > 10, seen  # walked
        deadline = time.monotonic() + 60
        while not any(k.endswith("/catalog/complete") for k in keys(s3_server, f"{prefix}/catalog")):
            assert time.monotonic() < deadline, registry.log_tail()
            time.sleep(0.2)
        with proxy.counting() as seen:
            page, _ = catalog_page(registry, "?n=10&last=old")
        assert page == [n for n in everything if n > "old"][:10]
        assert seen.total <= 2, seen
        # Deletes keep the entries: a repository emptied through the API is gone from the catalog.
        manifest = http_request("GET", f"{registry.url}/v2/old00/manifests/latest", headers={"Accept": OCI_MANIFEST})
        digest = manifest.headers["docker-content-digest"]
        assert http_request("DELETE", f"{registry.url}/v2/old00/manifests/{digest}").status == 202
        for blob in json.loads(manifest.body)["layers"] + [json.loads(manifest.body)["config"]]:
            assert http_request("DELETE", f"{registry.url}/v2/old00/blobs/{blob['digest']}").status == 202
        page, _ = catalog_page(registry, "?n=3&last=old/n19")
        assert page == ["old01", "old02", "old03"]
        # A process that did not rebuild them reads them too.
        other = start(s3_server, proxy, tmp_path_factory, prefix)
        try:
            catalog_page(other, "?n=1")
            with proxy.counting() as seen:
                page, _ = catalog_page(other, "?n=3&last=old/n19")
            assert page == ["old01", "old02", "old03"]
            assert seen.total <= 1, seen
        finally:
            other.stop()
    finally:
        registry.stop()


def test_garbage_collection_unlists_a_repository_it_empties(s3_server, proxy, tmp_path_factory):  # noqa: F811
    """
    An untagged manifest collected (``--delete-untagged``), and the blobs
    only it referenced with it: the repository leaves the catalog.
    """
    import subprocess
    import sys

    from registry_process import registry_environment

    prefix = f"t-{uuid.uuid4().hex[:12]}"
    registry = start(s3_server, proxy, tmp_path_factory, prefix)
    try:
        fill(registry, ["kept"], [])
        push_seed(registry, "emptied")
        manifest = http_request("GET", f"{registry.url}/v2/emptied/manifests/latest", headers={"Accept": OCI_MANIFEST})
        assert http_request("DELETE", f"{registry.url}/v2/emptied/manifests/latest").status == 202  # the tag only
        assert "emptied" in catalog_page(registry, "")[0]
        config = s3_server.config_file(str(tmp_path_factory.mktemp("gc")), s3_server.settings(prefix=prefix))
        result = subprocess.run(
            [sys.executable, "-c", "from oci_registry.cli import main; main()", "gc", "--config", config]
            + ["--grace", "0", "--delete-untagged"],
            capture_output=True,
            env=registry_environment(),
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        assert f"removed manifest emptied@{manifest.headers['docker-content-digest']}" in result.stdout.decode()
        names, _ = catalog_page(registry, "")
        assert "emptied" not in names and "kept" in names, names
    finally:
        registry.stop()
