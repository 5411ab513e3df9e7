"""
Garbage collection's costs that must not grow with the store, at a small
scale (the large figures are in ``benchmarks/gc_scale.py``): on S3 its
deletions of files go many to a DeleteObjects request (counted by an HTTP
proxy in front of SeaweedFS); the mark is built one repository at a time,
from a walk read page by page; stale pull-through fill claims are removed.
"""

from __future__ import annotations

import collections
import http.client
import http.server
import threading
import time
import urllib.parse

import pytest
import pytest_twisted

from oci_registry import gc, paths
from oci_registry.gc import GCOptions, collect, repositories
from oci_registry.proxy.claim import ClaimRecord, FillClaims
from oci_registry.reference import Digest, Name
from oci_registry.registry import Registry
from oci_registry.storage.filesystem import FilesystemDriver
from oci_registry.storage.interfaces import IWalkPages
from oci_registry.storage.s3 import S3Driver
from s3_server import s3_server  # noqa: F401  (the session fixture)
from test_gc import LATER, push_blob, push_image


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _forward(self):
        server = self.server
        headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            headers["Content-Length"] = str(len(body))
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query, keep_blank_values=True)
        keys = body.count(b"<Key>") if body and "delete" in query else 0
        with server.lock:
            server.requests.append((self.command, tuple(sorted(query)), keys))
        upstream = http.client.HTTPConnection("127.0.0.1", server.upstream_port, timeout=30)
        try:
            # The Host header goes as it came: the request's signature covers it.
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        # A HEAD's length is the object's.
        self.send_header(
            "Content-Length", response.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


class CountingProxy:
    """Forwards S3 requests to SeaweedFS on loopback and records each one: (method, query names, keys deleted)."""

    def __init__(self, upstream_port: int):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Forward)
        self.server.daemon_threads = True
        self.server.upstream_port = upstream_port
        self.server.requests = []
        self.server.lock = threading.Lock()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def requests(self) -> list[tuple]:
        with self.server.lock:
            return list(self.server.requests)

    def clear(self) -> None:
        with self.server.lock:
            self.server.requests.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def counted_s3(request):
    server = request.getfixturevalue("s3_server")
    proxy = CountingProxy(server.port)
    driver = S3Driver(server.settings(endpoint=proxy.endpoint))
    yield driver, proxy
    driver.close()
    proxy.stop()


UPSTREAM = "https://upstream.example"


@pytest_twisted.ensureDeferred
async def test_on_s3_what_the_sweep_deletes_last_goes_in_batches(counted_s3):
    driver, proxy = counted_s3
    registry = Registry(driver)
    manifest, layer, _ = await push_image(registry, "app", "v1", b"a layer that stays")
    orphans = []
    for i in range(30):
        orphan = await push_blob(registry, f"app{i % 3}", b"orphan %d" % i)
        await driver.write_bytes(paths.blob_upstream(orphan, UPSTREAM), UPSTREAM.encode())
        orphans.append(orphan)
    proxy.clear()
    report = await collect(driver, GCOptions(), now=LATER)
    assert sorted(d for d, _ in report.blobs_removed) == sorted(str(o) for o in orphans)
    requests = proxy.requests()
    batches = [keys for method, query, keys in requests if method == "POST" and "delete" in query]
    # Each orphan's link quarantine and upstream record: 60 keys, one request.
    assert batches == [60]
    for orphan in orphans:
        assert await driver.stat(paths.blob_data(orphan)) is None
        assert await driver.stat(paths.blob_upstreams(orphan)) is None
    for i in range(3):
        assert await driver.walk(paths.repository(Name(f"app{i}"))) == []
    assert await driver.stat(paths.blob_data(layer)) is not None
    assert await driver.stat(paths.blob_data(manifest)) is not None
    # Deleting a file is one request, not a listing, a delete and a listing of multipart uploads.
    counts = collections.Counter(method for method, _, _ in requests)
    per_blob = sum(counts.values()) / len(orphans)
    assert per_blob <= 13, counts
    # The walks list; a blob's data and marker are looked for as files (a HEAD), not
    # by a listing as well when they are gone (46 listings here before, one per orphan more).
    listings = [query for method, query, _ in requests if method == "GET" and "list-type" in query]
    assert len(listings) < len(orphans), len(listings)


class PagedStorage:
    """A filesystem driver that counts the walk's pages (and offers no other capability)."""

    def __init__(self, inner):
        self.inner = inner
        self.pages = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def walk_page(self, path, cursor=None, limit=1000):
        self.pages += 1
        return self.inner.walk_page(path, cursor, limit)


@pytest_twisted.ensureDeferred
async def test_the_mark_takes_one_repository_at_a_time_from_a_walk_read_page_by_page(tmp_path, monkeypatch):
    from zope.interface import alsoProvides

    inner = FilesystemDriver(str(tmp_path / "data"))
    try:
        registry = Registry(inner)
        for i in range(6):
            await push_image(registry, f"team/app{i}", "v1", b"layer %d" % i)
        storage = PagedStorage(inner)
        alsoProvides(storage, IWalkPages)
        monkeypatch.setattr(gc, "PAGE", 2)
        pages_when_yielded = []
        names = []
        async for repo in repositories(storage):
            pages_when_yielded.append(storage.pages)
            names.append(repo.name)
            assert len(repo.revisions) == 1 and len(repo.layers) == 2 and set(repo.tags) == {"v1"}
        assert sorted(names) == [f"team/app{i}" for i in range(6)]
        # Each repository has 4 files (2 layer links, a revision, a tag): 2 pages of 2.
        assert pages_when_yielded[0] <= 3
        assert storage.pages >= 12
        assert pages_when_yielded == sorted(pages_when_yielded) and len(set(pages_when_yielded)) == 6
    finally:
        inner.close()


def test_the_mark_holds_digests_as_bytes():
    digest = "sha256:" + "ab" * 32
    assert gc._key(digest) == bytes.fromhex("ab" * 32)
    assert gc._unkey(gc._key(digest)) == digest
    long = "sha512:" + "cd" * 64
    assert gc._unkey(gc._key(long)) == long
    assert gc._key("sha256:not-hex") is None


@pytest.fixture(params=["filesystem", "s3"])
def storage(request, tmp_path):
    if request.param == "filesystem":
        driver = FilesystemDriver(str(tmp_path / "data"))
    else:
        driver = S3Driver(request.getfixturevalue("s3_server").settings())
    yield driver
    driver.close()


@pytest_twisted.ensureDeferred
async def test_stale_fill_claims_are_removed_live_ones_kept(storage):
    now = time.time()
    stale, live, torn = (Digest.of(b"%d" % i) for i in range(3))
    dead = ClaimRecord(owner="gone", expires=now - gc.CLAIM_STALE - 60, remote="library/app")
    await storage.write_bytes(paths.fill_claim(stale, UPSTREAM, 0), dead.encode())
    await storage.write_bytes(paths.fill_claim(stale, UPSTREAM, 1), dead.encode())
    held = ClaimRecord(owner="alive", expires=now + 30, remote="library/app")
    await storage.write_bytes(paths.fill_claim(live, UPSTREAM, 0), held.encode())
    await storage.write_bytes(paths.fill_claim(torn, UPSTREAM, 0), b'{"owner": "torn')

    report = await collect(storage, GCOptions(dry_run=True), now=now)
    assert report.claims_removed == 2
    assert report.to_json()["claims_removed"] == 2
    assert await storage.stat(paths.fill_claim(stale, UPSTREAM, 1)) is not None

    report = await collect(storage, GCOptions(), now=now)
    assert report.claims_removed == 2
    assert await storage.stat(paths.fill_claim(stale, UPSTREAM, 0)) is None
    assert await storage.stat(paths.fill_claim(stale, UPSTREAM, 1)) is None
    assert await storage.read_bytes(paths.fill_claim(live, UPSTREAM, 0)) == held.encode()
    # A torn claim is as old as its file: young, it stays; long after, it goes.
    assert await storage.stat(paths.fill_claim(torn, UPSTREAM, 0)) is not None
    report = await collect(storage, GCOptions(), now=now + gc.CLAIM_STALE + 60)
    assert await storage.stat(paths.fill_claim(torn, UPSTREAM, 0)) is None

    # The next fetch of the stale digest claims it afresh, at the first generation.
    claims = FillClaims(storage, lease=30)
    claim = await claims.acquire(UPSTREAM, stale, "library/app")
    try:
        assert claim.generation == 0 and claim.record.owner != "gone"
    finally:
        await claim.release()


class CountingFilesystem(FilesystemDriver):
    """The filesystem driver, recording the size of each batched delete."""

    def __init__(self, root):
        super().__init__(root)
        self.batches: list[int] = []

    def delete_files(self, paths):
        self.batches.append(len(paths))
        return super().delete_files(paths)


@pytest_twisted.ensureDeferred
async def test_batches_are_full_but_the_last_while_blobs_are_collected_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "DELETE_BATCH", 10)
    driver = CountingFilesystem(str(tmp_path / "data"))
    try:
        registry = Registry(driver)
        orphans = [await push_blob(registry, "app", b"orphan %d" % i) for i in range(25)]
        report = await collect(driver, GCOptions(), now=LATER)
        assert len(report.blobs_removed) == 25
        # One file at a time for the handshake's own deletions; the link quarantines in batches.
        assert [n for n in driver.batches if n > 1] == [10, 10, 5]
        for orphan in orphans:
            assert await driver.stat(paths.layer_quarantine(Name("app"), orphan)) is None
    finally:
        driver.close()
