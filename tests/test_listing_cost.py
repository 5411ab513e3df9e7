"""
What a page of the catalog, of a tag list and of referrers costs the
storage: it grows with the page, not with the store.  The registry is served
over a real loopback port with the filesystem storage wrapped in a counter
of every storage call (and the names listings return), and the driver's own
count of folder entries it read from the file system.  The stores are laid
out on disk directly, as a restored backup would be (`oci_registry.paths`),
around one image pushed through the API: 5,000 repositories, a repository
with 10,000 tags, a subject with 2,000 referrers.  Nothing is timed.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import reactor
from zope.interface import implementer
from zope.interface.verify import verifyObject

from api_helpers import fetch, next_link, push_image, sha256_digest, url
from oci_registry import paths
from oci_registry.api.app import RegistryAPI
from oci_registry.reference import Digest, Name
from oci_registry.registry import Registry
from oci_registry.service import RegistrySite
from oci_registry.storage.filesystem import FilesystemDriver
from oci_registry.storage.interfaces import IFolderPeek, IStorageDriver

N = 100


@implementer(IStorageDriver, IFolderPeek)
class CountingStorage:
    """Counts the calls made to a driver, and the names its listings return."""

    def __init__(self, driver):
        self.driver = driver
        self.calls: Counter = Counter()
        self.min_chunk_length = driver.min_chunk_length
        self.move_is_copy = driver.move_is_copy

    def total(self) -> int:
        return sum(v for k, v in self.calls.items() if not k.startswith("names:"))

    def _count(self, method: str, d):
        self.calls[method] += 1
        return d

    def _names(self, method: str, d):
        def counted(names):
            self.calls[f"names:{method}"] += len(names)
            return names

        return self._count(method, d).addCallback(counted)

    def read_bytes(self, path):
        return self._count("read_bytes", self.driver.read_bytes(path))

    def write_bytes(self, path, data, durable=True):
        return self._count("write_bytes", self.driver.write_bytes(path, data, durable))

    def stat(self, path):
        return self._count("stat", self.driver.stat(path))

    def list(self, path):
        return self._names("list", self.driver.list(path))

    def list_page(self, path, start_after=None, limit=None):
        return self._names("list_page", self.driver.list_page(path, start_after, limit))

    def holds_files(self, path):
        return self._count("holds_files", self.driver.holds_files(path))

    def peek_folder(self, path, limit, markers):
        def counted(answer):
            self.calls["names:peek_folder"] += len(answer[0])
            return answer

        return self._count("peek_folder", self.driver.peek_folder(path, limit, markers)).addCallback(counted)

    def walk(self, path):
        return self._names("walk", self.driver.walk(path))

    def delete(self, path):
        return self._count("delete", self.driver.delete(path))

    def move(self, source, destination, size=None, replace=True):
        return self._count("move", self.driver.move(source, destination, size, replace))

    def open_writer(self, path, append=False, hasher=None):
        return self._count("open_writer", self.driver.open_writer(path, append, hasher))

    def open_reader(self, path, offset=0):
        return self._count("open_reader", self.driver.open_reader(path, offset))

    def hash_file(self, path, hasher, limit=None):
        return self._count("hash_file", self.driver.hash_file(path, hasher, limit))

    def redirect_url(self, path):
        return self._count("redirect_url", self.driver.redirect_url(path))

    def check(self):
        return self._count("check", self.driver.check())


class Served:
    """The registry on a loopback port, in this process (so that its storage can be counted)."""

    def __init__(self, root: str):
        self.driver = FilesystemDriver(root)
        self.storage = CountingStorage(self.driver)
        self.registry = Registry(self.storage)
        site = RegistrySite(RegistryAPI(self.registry).resource(), access_log=False)
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        self.root = root

    def cost(self):
        """What the storage has done since the last call: (storage calls, names listed, entries read)."""
        calls, names, entries = self.storage.total(), self._names(), self.driver.entries_read
        previous = getattr(self, "_previous", (0, 0, 0))
        self._previous = (calls, names, entries)
        return calls - previous[0], names - previous[1], entries - previous[2]

    def _names(self) -> int:
        return sum(v for k, v in self.storage.calls.items() if k.startswith("names:"))


@pytest.fixture
def served(tmp_path):
    server = Served(str(tmp_path / "data"))
    yield server
    pytest_twisted.blockon(server.port.stopListening())
    server.driver.close()


def write(root: str, path: str, data: bytes) -> None:
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(data)


def quiet(root: str) -> None:
    """Make every folder look unchanged for an hour, as a store is between pushes."""
    for top, folders, _ in os.walk(root):
        for folder in [top, *(os.path.join(top, f) for f in folders)]:
            old = os.stat(folder).st_mtime - 3600
            os.utime(folder, (old, old))


def test_the_counter_is_a_storage_driver(tmp_path):
    driver = FilesystemDriver(str(tmp_path))
    try:
        assert verifyObject(IStorageDriver, CountingStorage(driver))
        assert verifyObject(IFolderPeek, CountingStorage(driver))
    finally:
        driver.close()


async def link_repositories(served, names: list[str]) -> None:
    """``names`` as repositories holding one image pushed through the API (its manifest and blob links)."""
    image = await push_image(served, "seed/image", "latest")
    manifest = Digest.parse(image.digest)
    layers = [Digest.parse(sha256_digest(blob)) for blob in (image.config, *image.layers)]
    for name in names:
        write(served.root, paths.manifest_link(Name(name), manifest), image.media_type.encode())
        for layer in layers:
            write(served.root, paths.layer_link(Name(name), layer), str(layer).encode())


async def catalog_page(served, query: str) -> tuple[list[str], str | None]:
    reply = await fetch("GET", url(served, f"/v2/_catalog{query}"))
    assert reply.status == 200, reply
    return reply.json()["repositories"], next_link(served, reply)


@pytest_twisted.ensureDeferred
async def test_a_catalog_page_costs_what_it_holds(served):
    """
    5,000 repositories, half at the top, half in 25 namespaces: a page of
    100 anywhere in the catalog lists about 100 folders and reads a few
    hundred entries, not the 5,000 repositories' tens of thousands.
    """
    names = [f"flat{i:04d}" for i in range(2500)] + [f"team{i % 25:02d}/app{i:04d}" for i in range(2500)]
    await link_repositories(served, names)
    everything = sorted(names + ["seed/image"])
    quiet(served.root)
    await catalog_page(served, f"?n={N}")  # the first page reads the top folder (2,525 entries) whole, once
    served.cost()
    for last in (None, "flat1234", "seed/image", "team07/app1607", "team13", "team24/app2474"):
        page, link = await catalog_page(served, f"?n={N}" + (f"&last={last}" if last else ""))
        expected = [n for n in everything if last is None or n > last]
        assert page == expected[:N], last
        assert (link is not None) == (len(expected) > N), last
        calls, listed, entries = served.cost()
        # One call per repository (`IFolderPeek`: its names and whether it holds a file), one per namespace crossed.
        assert calls <= N + 2 + 20, (last, served.storage.calls)
        # Each folder on the way is peeked at (its first 8 names): a sibling namespace costs 8, not its size.
        assert listed <= 10 * (N + 2), (last, listed)
        assert entries <= 10 * (N + 2), (last, entries)


@pytest_twisted.ensureDeferred
async def test_the_whole_catalog_pages_in_linear_cost(served):
    """Following every Link over 5,000 repositories costs about as much as one listing of them, not 50 times it."""
    names = [f"r{i:04d}" for i in range(5000)]
    await link_repositories(served, names)
    quiet(served.root)
    served.cost()
    seen, target = [], url(served, "/v2/_catalog?n=100")
    for _ in range(60):
        reply = await fetch("GET", target)
        seen += reply.json()["repositories"]
        target = next_link(served, reply)
        if target is None:
            break
    assert seen == sorted(names + ["seed/image"])
    calls, listed, entries = served.cost()
    assert calls <= 5100 + 400, served.storage.calls
    assert entries <= 12 * 5100 + 5000, entries


@pytest_twisted.ensureDeferred
async def test_a_tag_page_costs_what_it_holds(served):
    """A repository with 10,000 tags: a page of 100 stats about 100 tag links and reads no folder whole."""
    image = await push_image(served, "many/tags", "seed")
    tags = [f"build-{i:05d}" for i in range(10_000)]
    for tag in tags:
        write(served.root, f"{paths.tags(Name('many/tags'))}/{tag}/current/link", image.digest.encode())
    everything = sorted(tags + ["seed"])
    quiet(served.root)
    reply = await fetch("GET", url(served, f"/v2/many/tags/tags/list?n={N}"))  # reads the tags folder once
    assert reply.json()["tags"] == everything[:N]
    served.cost()
    for last in ("build-00099", "build-04999", "build-09950", "build-09999"):
        reply = await fetch("GET", url(served, f"/v2/many/tags/tags/list?n={N}&last={last}"))
        assert reply.status == 200, reply
        expected = [t for t in everything if t > last]
        assert reply.json()["tags"] == expected[:N], last
        assert (reply.header("Link") is not None) == (len(expected) > N), last
        calls, listed, entries = served.cost()
        assert calls <= N + 10, (last, served.storage.calls)
        assert listed <= N + 5, (last, listed)
        assert entries == 0, (last, entries)


@pytest_twisted.ensureDeferred
async def test_a_referrers_page_costs_what_it_holds(served):
    """A subject with 2,000 referrers: a page of 100 reads about 100 entries, each once."""
    image = await push_image(served, "signed/app", "v1")
    name, subject = Name("signed/app"), Digest.parse(image.digest)
    digests = []
    for i in range(2000):
        digest = Digest.of(f"referrer {i}".encode())
        descriptor = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": str(digest), "size": 10}
        write(served.root, paths.referrer(name, subject, digest), json.dumps(descriptor).encode())
        write(served.root, paths.manifest_link(name, digest), b"application/vnd.oci.image.manifest.v1+json")
        digests.append(str(digest))
    digests.sort()
    quiet(served.root)
    target = url(served, f"/v2/signed/app/referrers/{image.digest}?n={N}")
    await fetch("GET", target)
    served.cost()
    seen = []
    for _ in range(30):
        reply = await fetch("GET", target)
        assert reply.status == 200, reply
        page = [m["digest"] for m in reply.json()["manifests"]]
        assert len(page) == min(N, len(digests) - len(seen))
        seen += page
        calls, listed, entries = served.cost()
        assert calls <= 2 * N + 5, served.storage.calls
        assert listed <= N + 1 and entries == 0, (listed, entries)
        target = next_link(served, reply)
        if target is None:
            break
    assert seen == digests
