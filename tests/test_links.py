"""
What the link files hold (`oci_registry.links`): a layer link its blob's
size, a revision link its manifest's media type, size and (small ones)
bytes; links an earlier release wrote (the digest alone, the media type
alone) read as before; and when a blob HEAD may be answered from the link
alone (a link younger than half the garbage collection grace period) and
when the data is looked up.
"""

from __future__ import annotations

import os
import time

import pytest
import pytest_twisted

from oci_registry import links, paths
from oci_registry.errors import BlobUnknown
from oci_registry.gc import DAY, GCOptions, collect
from oci_registry.reference import Digest, Name, Tag
from oci_registry.registry import Registry
from oci_registry.storage.filesystem import FilesystemDriver
from test_gc import LATER, BytesBody, blob_exists, push_blob, push_image

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def driver(tmp_path):
    driver = FilesystemDriver(str(tmp_path / "data"))
    yield driver
    driver.close()


def test_a_layer_link_holds_the_size():
    digest = Digest.of(b"layer")
    assert links.layer_size(links.layer(digest, 5), digest) == 5
    assert links.layer_size(str(digest).encode(), digest) is None  # an earlier release's
    assert links.layer_size(links.layer(Digest.of(b"other"), 5), digest) is None
    for damaged in (b"{", b'{"digest": 1}', b'{"digest": "%s", "size": -1}', b'{"digest": "%s", "size": true}', b"[]"):
        assert links.layer_size(damaged.replace(b"%s", str(digest).encode()), digest) is None


def test_a_revision_link_holds_a_small_manifest():
    data = b'{"schemaVersion": 2}'
    digest = Digest.of(data)
    assert links.parse_revision(links.revision(digest, OCI_MANIFEST, data), digest) == links.Revision(
        OCI_MANIFEST, len(data), data
    )
    large = b" " * (links.INLINE_MANIFEST + 1)
    assert links.parse_revision(links.revision(digest, OCI_MANIFEST, large), digest) == links.Revision(
        OCI_MANIFEST, len(large), None
    )
    # An earlier release's link: the media type alone.
    assert links.parse_revision(OCI_MANIFEST.encode(), digest) == links.Revision(OCI_MANIFEST)
    # Bytes of another length than the line says are not served.
    torn = links.revision(digest, OCI_MANIFEST, data)[:-1]
    assert links.parse_revision(torn, digest).data is None


async def rewrite_as_an_earlier_release(storage, name: Name, manifest: Digest, layers) -> None:
    link = paths.manifest_link(name, manifest)
    revision = links.parse_revision(await storage.read_bytes(link), manifest)
    await storage.write_bytes(link, revision.media_type.encode())
    for layer in layers:
        await storage.write_bytes(paths.layer_link(name, layer), str(layer).encode())


@pytest_twisted.ensureDeferred
async def test_links_an_earlier_release_wrote_are_read(driver):
    registry, name = Registry(driver), Name("app")
    manifest, layer, data = await push_image(registry, "app", "v1", b"layer bytes")
    config = Digest.of(b"{}")
    await rewrite_as_an_earlier_release(driver, name, manifest, [layer, config])
    for reference in (manifest, Tag("v1")):
        got = await registry.get_manifest(name, reference)
        assert (got.digest, got.media_type, got.data) == (manifest, OCI_MANIFEST, data)
        got = await registry.get_manifest(name, reference, head=True)
        assert (got.media_type, got.size, got.data) == (OCI_MANIFEST, len(data), None)
    assert (await registry.stat_blob(name, layer, head=True)).size == len(b"layer bytes")
    assert (await registry.stat_blob(name, layer)).size == len(b"layer bytes")
    # Garbage collection reads them too: what the manifest references stays, an orphan goes.
    orphan = await push_blob(registry, "app", b"an orphan")
    await driver.write_bytes(paths.layer_link(name, orphan), str(orphan).encode())
    report = await collect(driver, GCOptions(), now=LATER)
    assert report.blobs_removed == [(str(orphan), 9)]
    assert await blob_exists(registry, layer) and await blob_exists(registry, manifest)
    assert not await driver.holds_files(paths.layer_link(name, orphan).rsplit("/", 1)[0])
    # Written again in the new form by the next push.
    await registry.put_blob(name, layer, BytesBody(b"layer bytes"))
    assert links.layer_size(await driver.read_bytes(paths.layer_link(name, layer)), layer) == 11


@pytest_twisted.ensureDeferred
async def test_a_blob_head_trusts_a_fresh_link_only(driver):
    """
    The data a fresh link names is there (a sweep removes links first, and
    never takes a blob linked within its grace period); an older link's
    blob has its data looked up, and kept from a collection, as before.
    """
    registry, name = Registry(driver, gc_grace=DAY), Name("app")
    data = b"a layer"
    digest = await push_blob(registry, "app", data)
    # Data gone behind the registry's back: the fresh link still answers a HEAD, never a GET.
    os.rename(driver._path(paths.blob_data(digest)), driver._path(paths.blob_data(digest)) + ".saved")
    assert (await registry.stat_blob(name, digest, head=True)).size == len(data)
    with pytest.raises(BlobUnknown):
        await registry.stat_blob(name, digest)
    # A link older than half the grace period: the data is looked up for a HEAD too.
    old = time.time() - DAY / 2 - 60
    os.utime(driver._path(paths.layer_link(name, digest)), (old, old))
    with pytest.raises(BlobUnknown):
        await registry.stat_blob(name, digest, head=True)
    os.rename(driver._path(paths.blob_data(digest)) + ".saved", driver._path(paths.blob_data(digest)))
    assert (await registry.stat_blob(name, digest, head=True)).size == len(data)
