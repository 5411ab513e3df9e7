"""
The content cache (`oci_registry.content_cache`): bounded, and never a
reason to report a blob that garbage collection deleted.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted

from oci_registry.content_cache import ContentCache
from oci_registry.errors import BlobUnknown
from oci_registry.gc import GCOptions, collect
from oci_registry.reference import Digest, Name
from oci_registry.registry import Registry
from oci_registry.storage.filesystem import FilesystemDriver
from test_gc import BytesBody


@pytest.fixture
def cached_registry(tmp_path):
    driver = FilesystemDriver(str(tmp_path / "data"))
    yield Registry(driver, cache=ContentCache())
    driver.close()


@pytest_twisted.ensureDeferred
async def test_a_blob_collected_after_a_head_is_not_reported_present(cached_registry):
    registry, name = cached_registry, Name("app")
    data = b"unreferenced layer"
    digest = Digest.of(data)
    await registry.put_blob(name, digest, BytesBody(data), len(data))
    assert (await registry.stat_blob(name, digest)).size == len(data)  # its link remembered now
    assert registry.cache.holds_blob(name, digest)
    # A collection with a grace shorter than the registry's (``ociregistry gc --grace 0s``) takes it at once.
    report = await collect(registry.storage, GCOptions(grace=0), now=time.time() + 1)
    assert [d for d, _ in report.blobs_removed] == [str(digest)]
    # Within the cache's ttl the link is still remembered; the data is looked up all the same.
    assert registry.cache.holds_blob(name, digest)
    with pytest.raises(BlobUnknown):
        await registry.stat_blob(name, digest)
    assert not await registry.mount_blob(Name("other"), digest, name)


def test_manifest_bytes_are_bounded():
    cache = ContentCache(manifest_bytes=64 << 10)
    for i in range(100):
        cache.add_manifest(Digest.of(str(i).encode()), bytes(4 << 10))
    assert cache.manifest_size <= 64 << 10
    assert cache.manifest(Digest.of(b"99")) is not None
    assert cache.manifest(Digest.of(b"0")) is None
    cache.add_manifest(Digest.of(b"huge"), bytes(32 << 10))  # more than an eighth of the budget: not kept
    assert cache.manifest(Digest.of(b"huge")) is None


def test_links_expire_and_are_bounded():
    now = [0.0]
    cache = ContentCache(entries=10, ttl=10.0, clock=lambda: now[0])
    for i in range(20):
        cache.add_blob_link(Name("app"), Digest.of(str(i).encode()))
    assert not cache.holds_blob(Name("app"), Digest.of(b"0"))
    assert cache.holds_blob(Name("app"), Digest.of(b"19"))
    now[0] = 10.0
    assert not cache.holds_blob(Name("app"), Digest.of(b"19"))


def test_nothing_is_held_with_zero_sizes():
    cache = ContentCache(0, 0, 0)
    cache.add_manifest(Digest.of(b"m"), b"{}")
    cache.add_revision(Name("app"), Digest.of(b"m"), "application/json")
    assert cache.manifest(Digest.of(b"m")) is None
    assert cache.revision(Name("app"), Digest.of(b"m")) is None
