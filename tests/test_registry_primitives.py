"""
`Registry` is the only code that writes storage paths.  The pull-through
cache and its fills store through the primitives of `ILocalRegistry`, which
apply the checks a push does; these tests hold them to that, on a real
filesystem store, and check that no other module names a storage path.
"""

from __future__ import annotations

import ast
import json
import os

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

import oci_registry
from oci_registry import paths
from oci_registry.errors import (
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    SizeInvalid,
    TooLarge,
)
from oci_registry.interfaces import ILocalRegistry
from oci_registry.reference import Digest, Name, Tag
from oci_registry.registry import Registry, VerifiedManifest
from oci_registry.storage.filesystem import FilesystemDriver

NAME = Name("cache/app")
URL = "https://upstream.example"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def registry(tmp_path):
    return Registry(FilesystemDriver(str(tmp_path)), max_manifest_size=4096, max_upload_size=64)


def test_the_registry_provides_the_local_interface(registry):
    assert verifyObject(ILocalRegistry, registry)


async def _uploads(registry) -> list[str]:
    return [p for p in await registry.storage.walk(paths.REPOSITORIES) if "/_uploads/" in "/" + p]


@pytest_twisted.ensureDeferred
async def test_a_received_blob_is_published_only_when_its_size_and_digest_are_verified(registry):
    data = b"bytes from the upstream"
    digest = Digest.of(data)

    incoming = await registry.receive_blob(NAME, digest)
    await incoming.write(data)
    with pytest.raises(SizeInvalid):
        await incoming.publish(len(data) + 1, source=URL)
    await incoming.discard()
    assert not await registry.sent_by(digest, URL)
    assert (await registry.storage.stat(paths.blob_data(digest))) is None

    incoming = await registry.receive_blob(NAME, digest)
    await incoming.write(b"other bytes, same length!")
    with pytest.raises(DigestInvalid):
        await incoming.publish(incoming.size, source=URL)
    assert incoming.actual == Digest.of(b"other bytes, same length!")
    await incoming.discard()
    assert (await registry.storage.stat(paths.blob_data(digest))) is None

    incoming = await registry.receive_blob(NAME, digest)
    await incoming.write(data)
    info = await incoming.publish(len(data), source=URL)
    await incoming.discard()
    assert (info.digest, info.size) == (digest, len(data))
    assert await registry.sent_by(digest, URL) and not await registry.sent_by(digest, "https://another.example")
    assert not await registry.has_blob(NAME, digest)  # stored, linked into no repository yet
    assert await registry.adopt_blob(NAME, digest)
    reader = await registry.open_blob(NAME, digest)
    assert await reader.read(1000) == data
    await reader.close()
    assert await _uploads(registry) == []  # every session is gone


@pytest_twisted.ensureDeferred
async def test_a_received_blob_stops_at_the_upload_limit(registry):
    incoming = await registry.receive_blob(NAME, Digest.of(b"x" * 65))
    await incoming.write(b"x" * 64)
    with pytest.raises(TooLarge):
        incoming.write(b"x")
    assert incoming.size == 64
    await incoming.discard()
    assert await _uploads(registry) == []


def _manifest(**extra) -> bytes:
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(Digest.of(b"{}")), "size": 2}
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [], **extra}).encode()


@pytest_twisted.ensureDeferred
async def test_a_manifest_is_stored_only_as_the_registry_verified_it(registry):
    with pytest.raises(TooLarge):
        await registry.verify_manifest(b" " * 4097, OCI_MANIFEST)
    with pytest.raises(ManifestInvalid):
        await registry.verify_manifest(b"{}", OCI_MANIFEST)
    data = _manifest()
    verified = await registry.verify_manifest(data, OCI_MANIFEST, "sha512")
    assert verified.digest == Digest.of(data, "sha512")  # computed from the bytes, by the algorithm asked for
    with pytest.raises(TypeError):
        await registry.store_manifest(NAME, (verified.digest, data, verified.parsed))
    # A push needs the config blob in the repository; a cache fetches blobs when they are asked for.
    with pytest.raises(ManifestBlobUnknown):
        await registry.store_manifest(NAME, verified, (Tag("v1"),))
    pushed = await registry.store_manifest(NAME, verified, (Tag("v1"), Tag("v1")), check_references=False)
    assert pushed.tags == (Tag("v1"),) and pushed.media_type == OCI_MANIFEST
    stored = await registry.get_manifest(NAME, Tag("v1"))
    assert (stored.digest, stored.data) == (verified.digest, data)
    assert isinstance(verified, VerifiedManifest)


@pytest_twisted.ensureDeferred
async def test_a_tag_points_only_at_a_manifest_the_repository_holds(registry):
    data = _manifest(annotations={"n": "1"})
    verified = await registry.verify_manifest(data, OCI_MANIFEST)
    with pytest.raises(ManifestUnknown):
        await registry.set_tag(NAME, Tag("moved"), verified.digest)
    await registry.store_manifest(NAME, verified, check_references=False)
    await registry.set_tag(NAME, Tag("moved"), verified.digest)
    assert (await registry.get_manifest(NAME, Tag("moved"))).digest == verified.digest

    assert await registry.tag_checked_at(NAME, Tag("moved")) is None
    await registry.record_tag_check(NAME, Tag("moved"), 1700000000.5)
    assert await registry.tag_checked_at(NAME, Tag("moved")) == 1700000000.5
    await registry.remove_tag(NAME, Tag("moved"))
    await registry.remove_tag(NAME, Tag("moved"))  # gone already: nothing to do
    assert await registry.tag_checked_at(NAME, Tag("moved")) is None
    with pytest.raises(ManifestUnknown):
        await registry.get_manifest(NAME, Tag("moved"))


# The paths of the registry's content: blobs, repositories' links and tags, upload sessions, and what the
# pull-through cache records of its upstreams.  (Services that keep bookkeeping of their own in storage, the
# fill claims and the notification outbox, have folders of their own in paths.py.)
CONTENT_PATHS = {
    "blob_data",
    "blob_folder",
    "blob_referenced",
    "blob_quarantine",
    "blob_upstreams",
    "blob_upstream",
    "repository",
    "layer_link",
    "layer_quarantine",
    "layers",
    "manifest_link",
    "manifest_revisions",
    "tags",
    "tag_link",
    "tag_folder",
    "tag_checked",
    "referrers",
    "referrer",
    "upload",
    "upload_data",
    "upload_started",
}


def test_only_the_registry_and_the_garbage_collector_name_content_paths():
    """
    Everything else changes content through `Registry`.  The garbage
    collector deletes what nothing references; `listing` reads the
    registry's pages and writes nothing.
    """
    assert CONTENT_PATHS <= set(dir(paths))
    package = os.path.dirname(oci_registry.__file__)
    allowed = {"registry.py", "gc.py", "paths.py", "listing.py"}
    naming = {}
    for folder, _, files in os.walk(package):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(folder, file)
            relative = os.path.relpath(path, package)
            tree = ast.parse(open(path, encoding="utf-8").read(), path)
            used = {
                node.attr
                for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "paths"
            }
            imported = {
                alias.name
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("paths")
                for alias in node.names
            }
            if (used | imported) & CONTENT_PATHS and relative not in allowed:
                naming[relative] = sorted((used | imported) & CONTENT_PATHS)
    assert naming == {}
    listing = open(os.path.join(package, "listing.py"), encoding="utf-8").read()
    assert not any(call in listing for call in ("write_bytes(", "open_writer(", ".move(", ".delete("))
