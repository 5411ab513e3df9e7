"""
Pushes that race a garbage collection, made at the worst moment: just
before the sweep deletes (or just after it moved to quarantine) a blob that
has been unreferenced for longer than the grace period, while a client
makes it referenced again over HTTP, through a real registry process.  On
the filesystem and on S3 (SeaweedFS).  After each race the image pulls back
byte-identical, and a second collection keeps it so.

The collection runs in this process, on the same storage, through a
wrapper that makes the client's requests at the chosen call.
"""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from gc_helpers import MUTATIONS, HookedStorage, first
from image_builder import (
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_MANIFEST,
    descriptor,
    dump_json,
    http_request,
    push_blob_http,
    random_bytes,
    sha256_digest,
)
from oci_registry import paths
from oci_registry.gc import GCOptions, collect
from oci_registry.reference import Digest, Name
from oci_registry.storage.filesystem import FilesystemDriver
from registry_process import RegistryProcess
from s3_server import s3_server  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.ociregistry_only

GRACE = 3.0  # the registries' gc_grace and the collections' grace, in seconds


class Target:
    """A registry process and a driver on its storage, for the collection."""

    def __init__(self, registry, driver):
        self.registry = registry
        self.driver = driver

    @property
    def url(self) -> str:
        return self.registry.url

    def collect(self, storage=None):
        return collect(storage or self.driver, GCOptions(grace=GRACE))


@pytest.fixture(params=["filesystem", "s3"])
def target(request, tmp_path):
    config = str(tmp_path / "config.yaml")
    if request.param == "filesystem":
        with open(config, "w") as f:
            json.dump({"gc_grace": f"{GRACE}s"}, f)
        registry = RegistryProcess(str(tmp_path / "data"), config=config).start()
        driver = FilesystemDriver(registry.data_dir)
    else:
        from oci_registry.storage.s3 import S3Driver

        server = request.getfixturevalue("s3_server")
        settings = server.settings()
        config = server.config_file(str(tmp_path), settings, gc_grace=f"{GRACE}s")
        registry = RegistryProcess(str(tmp_path / "data"), config=config).start()
        driver = S3Driver(settings)
    try:
        yield Target(registry, driver)
    finally:
        registry.stop()
        driver.close()


def unreferenced_long_enough() -> None:
    time.sleep(GRACE + 0.3)


def image(config: bytes, layer: bytes, **annotations) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": descriptor(MEDIA_TYPE_OCI_CONFIG, config),
        "layers": [descriptor(MEDIA_TYPE_OCI_LAYER_GZIP, layer)],
    }
    if annotations:
        doc["annotations"] = annotations
    return dump_json(doc)


def put_manifest(url: str, name: str, reference: str, data: bytes) -> None:
    response = http_request(
        "PUT", f"{url}/v2/{name}/manifests/{reference}", data, {"Content-Type": MEDIA_TYPE_OCI_MANIFEST}
    )
    assert response.status == 201, (response.status, response.body)


def assert_pulls(url: str, name: str, reference: str, manifest: bytes, blobs: list[bytes]) -> None:
    got = http_request("GET", f"{url}/v2/{name}/manifests/{reference}", headers={"Accept": MEDIA_TYPE_OCI_MANIFEST})
    assert got.status == 200 and got.body == manifest, (got.status, got.body[:200])
    for blob in blobs:
        got = http_request("GET", f"{url}/v2/{name}/blobs/{sha256_digest(blob)}")
        assert got.status == 200 and got.body == blob, (got.status, len(got.body), len(blob))


def touching(digest: str):
    """The first call of the sweep that changes anything of this blob (its data, marker, or a link to it)."""
    hex_ = digest.split(":", 1)[1]
    return lambda method, path, args: method in MUTATIONS and hex_ in path


def quarantined(digest: str):
    """Just after the sweep moved the blob's data to quarantine."""
    data = paths.blob_data(Digest.parse(digest))
    return lambda method, path, args: method == "move" and path == data


async def race(target: Target, digest: str, when: str, requests) -> None:
    """Run a collection that makes ``requests()`` (blocking HTTP) at ``when`` for ``digest``, then another."""
    hook = first(touching(digest) if when == "before" else quarantined(digest), lambda: deferToThread(requests))
    storage = HookedStorage(target.driver, **{"before" if when == "before" else "after": hook})
    report = await target.collect(storage)
    assert hook.fired, "the collection never got to the blob"
    assert digest not in {d for d, _ in report.blobs_removed}


@pytest.mark.parametrize("when", ["before", "after"])
@pytest_twisted.ensureDeferred
async def test_head_then_manifest_referencing_an_old_unreferenced_layer(target, when):
    """skopeo and docker HEAD each layer, skip what is there and push the manifest."""
    layer = random_bytes(300_000, f"race-head-{when}")
    config = dump_json({"architecture": "amd64", "os": "linux", "race": when})
    digest = push_blob_http(target.url, "race/head", layer)
    manifest = image(config, layer)
    unreferenced_long_enough()

    def requests():
        assert http_request("HEAD", f"{target.url}/v2/race/head/blobs/{digest}").status == 200
        push_blob_http(target.url, "race/head", config)
        put_manifest(target.url, "race/head", "v1", manifest)

    await race(target, digest, when, requests)
    assert_pulls(target.url, "race/head", "v1", manifest, [config, layer])
    await target.collect()
    assert_pulls(target.url, "race/head", "v1", manifest, [config, layer])


@pytest_twisted.ensureDeferred
async def test_full_upload_of_an_old_unreferenced_layer_into_a_new_repository(target):
    layer = random_bytes(300_000, "race-upload")
    config = dump_json({"architecture": "amd64", "os": "linux", "race": "upload"})
    digest = push_blob_http(target.url, "race/upload-old", layer)
    manifest = image(config, layer)
    unreferenced_long_enough()

    def requests():
        assert http_request("HEAD", f"{target.url}/v2/race/upload-new/blobs/{digest}").status == 404
        push_blob_http(target.url, "race/upload-new", layer)
        push_blob_http(target.url, "race/upload-new", config)
        put_manifest(target.url, "race/upload-new", "v1", manifest)

    await race(target, digest, "before", requests)
    assert_pulls(target.url, "race/upload-new", "v1", manifest, [config, layer])
    await target.collect()
    assert_pulls(target.url, "race/upload-new", "v1", manifest, [config, layer])


@pytest_twisted.ensureDeferred
async def test_manifest_pushed_again_by_the_same_digest(target):
    layer = random_bytes(100_000, "race-manifest")
    config = dump_json({"architecture": "amd64", "os": "linux", "race": "manifest"})
    for blob in (config, layer):
        push_blob_http(target.url, "race/manifest", blob)
    kept = image(config, layer, keep="yes")  # keeps the layer and config referenced
    doomed = image(config, layer, keep="no")
    put_manifest(target.url, "race/manifest", "kept", kept)
    put_manifest(target.url, "race/manifest", "doomed", doomed)
    digest = sha256_digest(doomed)
    deleted = http_request("DELETE", f"{target.url}/v2/race/manifest/manifests/{digest}")
    assert deleted.status == 202
    unreferenced_long_enough()

    def requests():
        put_manifest(target.url, "race/manifest", "again", doomed)

    await race(target, digest, "before", requests)
    for reference in (digest, "again"):
        assert_pulls(target.url, "race/manifest", reference, doomed, [config, layer])
    await target.collect()
    assert_pulls(target.url, "race/manifest", digest, doomed, [config, layer])


@pytest_twisted.ensureDeferred
async def test_what_nothing_claims_is_still_collected(target):
    """The handshake does not keep garbage: an old unreferenced layer nobody asks for goes, with its link."""
    layer = random_bytes(50_000, "race-garbage")
    digest = push_blob_http(target.url, "race/garbage", layer)
    unreferenced_long_enough()
    report = await target.collect()
    assert (digest, len(layer)) in report.blobs_removed
    assert http_request("HEAD", f"{target.url}/v2/race/garbage/blobs/{digest}").status == 404
    assert await target.driver.stat(paths.blob_data(Digest.parse(digest))) is None
    found = [p for p in await target.driver.walk(paths.REPOSITORIES) if digest.split(":")[1] in p]
    assert found == []
    # And it can be pushed again.
    push_blob_http(target.url, "race/garbage", layer)
    assert http_request("GET", f"{target.url}/v2/race/garbage/blobs/{digest}").body == layer


@pytest_twisted.ensureDeferred
async def test_upload_into_the_same_repository_while_the_sweep_removes_its_links(target):
    """
    The sweep found the data gone for good and is removing the old links
    when the same bytes are uploaded again into their repository: the
    upload's link stays (or comes back from the link's quarantine for the
    manifest pushed at that moment).
    """
    layer = random_bytes(200_000, "race-links")
    config = dump_json({"architecture": "amd64", "os": "linux", "race": "links"})
    digest = push_blob_http(target.url, "race/links", layer)
    manifest = image(config, layer)
    unreferenced_long_enough()
    held = paths.layer_quarantine(Name("race/links"), Digest.parse(digest))
    link = paths.layer_link(Name("race/links"), Digest.parse(digest))

    def upload():
        push_blob_http(target.url, "race/links", layer)
        push_blob_http(target.url, "race/links", config)

    def manifest_push():
        assert http_request("HEAD", f"{target.url}/v2/race/links/blobs/{digest}").status == 404  # for a moment
        put_manifest(target.url, "race/links", "v1", manifest)

    uploaded = first(lambda method, path, args: method == "write_bytes" and path == held, lambda: deferToThread(upload))
    pushed = first(lambda method, path, args: method == "delete" and path == link, lambda: deferToThread(manifest_push))
    report = await target.collect(HookedStorage(target.driver, before=uploaded, after=pushed))
    assert uploaded.fired and pushed.fired
    assert digest not in {d for d, _ in report.blobs_removed}
    assert_pulls(target.url, "race/links", "v1", manifest, [config, layer])
    assert await target.driver.stat(held) is None
    await target.collect()
    assert_pulls(target.url, "race/links", "v1", manifest, [config, layer])


@pytest_twisted.ensureDeferred
async def test_mount_of_an_old_unreferenced_layer_into_another_repository(target):
    layer = random_bytes(200_000, "race-mount")
    config = dump_json({"architecture": "amd64", "os": "linux", "race": "mount"})
    digest = push_blob_http(target.url, "race/mount-from", layer)
    manifest = image(config, layer)
    unreferenced_long_enough()

    def requests():
        query = f"mount={urllib.parse.quote(digest)}&from=race/mount-from"
        mounted = http_request("POST", f"{target.url}/v2/race/mount-to/blobs/uploads/?{query}", b"")
        assert mounted.status == 201, (mounted.status, mounted.body)
        push_blob_http(target.url, "race/mount-to", config)
        put_manifest(target.url, "race/mount-to", "v1", manifest)

    await race(target, digest, "before", requests)
    assert_pulls(target.url, "race/mount-to", "v1", manifest, [config, layer])
    await target.collect()
    assert_pulls(target.url, "race/mount-to", "v1", manifest, [config, layer])


@pytest_twisted.ensureDeferred
async def test_a_blob_head_never_finds_a_link_whose_data_the_sweep_deleted(target):
    """
    A blob HEAD is answered from a fresh layer link alone (its size is in
    it), so the sweep removes the links before the bytes: once it deleted
    them, no HEAD reports the blob, even from a link young enough to be
    trusted (a collection with a grace shorter than the registry's, as
    ``ociregistry gc --grace 0s`` is).
    """
    layer = random_bytes(50_000, "race-fresh-link")
    digest = push_blob_http(target.url, "race/fresh", layer)
    held = paths.blob_quarantine(Digest.parse(digest))
    seen = []

    async def head():
        seen.append((await deferToThread(http_request, "HEAD", f"{target.url}/v2/race/fresh/blobs/{digest}")).status)

    deleted = first(lambda method, path, args: method == "delete" and path == held, head)
    report = await collect(HookedStorage(target.driver, after=deleted), GCOptions(grace=0))
    assert deleted.fired
    assert (digest, len(layer)) in report.blobs_removed
    assert seen == [404]
    assert http_request("HEAD", f"{target.url}/v2/race/fresh/blobs/{digest}").status == 404
