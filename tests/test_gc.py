"""Garbage collection, upload expiry, retention and `ociregistry du`."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest
import pytest_twisted

from gc_helpers import HookedStorage, first
from image_builder import OCILayout
from oci_registry import links, paths
from oci_registry.errors import BlobUploadUnknown
from oci_registry.gc import DAY, GCAborted, GCOptions, collect, usage
from oci_registry.reference import Digest, Name, Tag
from oci_registry.registry import Registry
from oci_registry.storage.filesystem import FilesystemDriver
from registry_process import RegistryProcess, registry_environment
from s3_server import s3_server  # noqa: F401  (the session fixture)

LATER = time.time() + 3 * DAY  # "now" for a GC run long after the pushes below


class BytesBody:
    def __init__(self, data: bytes):
        self.data = data

    async def _deliver(self, writer):
        await writer.write(self.data)
        return len(self.data)

    def deliver(self, writer):
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(self._deliver(writer))


@pytest.fixture
def registry(tmp_path):
    driver = FilesystemDriver(str(tmp_path / "data"))
    yield Registry(driver)
    driver.close()


async def push_blob(registry, name, data: bytes) -> Digest:
    digest = Digest.of(data)
    await registry.put_blob(Name(name), digest, BytesBody(data))
    return digest


def image_manifest(config: Digest, layers: list[tuple[Digest, int]], subject=None, **extra) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(config), "size": 2},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(d), "size": s} for d, s in layers
        ],
        **extra,
    }
    if subject is not None:
        doc["subject"] = subject
    return json.dumps(doc).encode()


async def push_image(registry, name, tag, layer: bytes, **extra):
    config = await push_blob(registry, name, b"{}")
    layer_digest = await push_blob(registry, name, layer)
    data = image_manifest(config, [(layer_digest, len(layer))], **extra)
    ref = Tag(tag) if tag else Digest.of(data)
    pushed = await registry.put_manifest(Name(name), ref, data, "application/vnd.oci.image.manifest.v1+json")
    return pushed.digest, layer_digest, data


async def blob_exists(registry, digest) -> bool:
    return (await registry.storage.stat(paths.blob_data(digest))) is not None


@pytest_twisted.ensureDeferred
async def test_orphans_removed_referenced_kept(registry):
    manifest, layer, data = await push_image(registry, "app", "v1", b"layer bytes")
    orphan = await push_blob(registry, "app", b"nobody references me")
    report = await collect(registry.storage, GCOptions(), now=LATER)
    assert report.blobs_removed == [(str(orphan), 20)]
    assert not await blob_exists(registry, orphan)
    assert await blob_exists(registry, layer) and await blob_exists(registry, manifest)
    stored = await registry.get_manifest(Name("app"), Tag("v1"))
    assert stored.data == data
    assert not await registry.has_blob(Name("app"), orphan)


@pytest_twisted.ensureDeferred
async def test_a_removed_blob_takes_its_upstream_records_along(registry):
    """A pull-through cache's record of which upstream sent the bytes goes with them, or it would stay forever."""
    orphan = await push_blob(registry, "app", b"fetched from an upstream once")
    record = paths.blob_upstream(orphan, "https://registry.example")
    await registry.storage.write_bytes(record, b"https://registry.example")
    report = await collect(registry.storage, GCOptions(), now=LATER)
    assert report.blobs_removed == [(str(orphan), 29)]
    assert (await registry.storage.stat(record)) is None
    assert (await registry.storage.stat(paths.blob_upstreams(orphan))) is None


@pytest_twisted.ensureDeferred
async def test_dry_run_changes_nothing(registry):
    orphan = await push_blob(registry, "app", b"x" * 1000)
    report = await collect(registry.storage, GCOptions(dry_run=True), now=LATER)
    assert report.blobs_removed == [(str(orphan), 1000)] and report.bytes_freed == 1000
    assert await blob_exists(registry, orphan)


@pytest_twisted.ensureDeferred
async def test_grace_period_protects_new_blobs(registry):
    """A push whose blobs landed but whose manifest has not arrived yet is never broken."""
    layer = await push_blob(registry, "app", b"pushed a moment ago")
    report = await collect(registry.storage, GCOptions(), now=time.time())
    assert report.blobs_removed == []
    assert await blob_exists(registry, layer)


@pytest_twisted.ensureDeferred
async def test_old_blob_mounted_recently_is_kept(registry, tmp_path):
    old = await push_blob(registry, "source", b"old layer")
    # Age the blob and its link, then mount it into another repository now.
    for path in (paths.blob_data(old), paths.layer_link(Name("source"), old)):
        full = os.path.join(registry.storage.root, path)
        os.utime(full, (time.time() - 5 * DAY, time.time() - 5 * DAY))
    assert await registry.mount_blob(Name("target"), old, Name("source"))
    report = await collect(registry.storage, GCOptions(), now=time.time() + 3600)
    assert report.blobs_removed == []


@pytest_twisted.ensureDeferred
async def test_deleted_manifest_frees_its_blobs(registry):
    manifest, layer, _ = await push_image(registry, "app", "v1", b"soon unreferenced")
    await registry.delete_manifest(Name("app"), manifest)
    report = await collect(registry.storage, GCOptions(), now=LATER)
    removed = {d for d, _ in report.blobs_removed}
    assert {str(manifest), str(layer)} <= removed


@pytest_twisted.ensureDeferred
async def test_shared_blob_kept_while_any_repository_uses_it(registry):
    _, layer, _ = await push_image(registry, "one", "v1", b"shared layer")
    manifest2, _, _ = await push_image(registry, "two", "v1", b"shared layer")
    await registry.delete_manifest(Name("two"), manifest2)
    await collect(registry.storage, GCOptions(), now=LATER)
    assert await blob_exists(registry, layer)


@pytest_twisted.ensureDeferred
async def test_delete_untagged_keeps_index_children_and_referrers(registry):
    child, child_layer, child_data = await push_image(registry, "app", None, b"child image")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": str(child),
                    "size": len(child_data),
                    "platform": {"os": "linux", "architecture": "amd64"},
                }
            ],
        }
    ).encode()
    pushed = await registry.put_manifest(Name("app"), Tag("multi"), index, "application/vnd.oci.image.index.v1+json")
    subject = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": str(pushed.digest), "size": len(index)}
    signature, sig_layer, _ = await push_image(
        registry, "app", None, b"signature", subject=subject, artifactType="application/vnd.example.sig"
    )
    untagged, untagged_layer, _ = await push_image(registry, "app", None, b"nobody tags me")

    options = GCOptions(delete_untagged=True)
    report = await collect(registry.storage, options, now=LATER)
    assert report.manifests_removed == [("app", str(untagged))]
    removed = {d for d, _ in report.blobs_removed}
    assert str(untagged_layer) in removed
    for kept in (child, child_layer, signature, sig_layer, pushed.digest):
        assert await blob_exists(registry, kept)
    referrers = await registry.referrers(Name("app"), pushed.digest)
    assert [r["digest"] for r in referrers.entries] == [str(signature)]


@pytest_twisted.ensureDeferred
async def test_tag_retention(registry):
    for i in range(5):
        await push_image(registry, "app", f"build-{i}", f"layer {i}".encode())
        path = os.path.join(registry.storage.root, paths.tag_link(Name("app"), Tag(f"build-{i}")))
        os.utime(path, (1000 + i, 1000 + i))
    await push_image(registry, "app", "stable", b"stable layer")
    report = await collect(registry.storage, GCOptions(keep_tags=2, tag_pattern="build-*"), now=LATER)
    assert sorted(t for _, t in report.tags_removed) == ["build-0", "build-1", "build-2"]
    assert (await registry.list_tags(Name("app"))).entries == ["build-3", "build-4", "stable"]
    assert len(report.manifests_removed) == 3


@pytest_twisted.ensureDeferred
async def test_upload_expiry(registry):
    status = await registry.start_upload(Name("app"))
    await registry.append_upload(Name("app"), status.id, BytesBody(b"partial"))
    fresh = await registry.start_upload(Name("app"))
    full = os.path.join(registry.storage.root, paths.upload_data(Name("app"), status.id))
    os.utime(full, (time.time() - 2 * DAY,) * 2)
    report = await collect(registry.storage, GCOptions(), now=time.time())
    assert report.uploads_removed == [("app", status.id, 7)]
    with pytest.raises(BlobUploadUnknown):
        await registry.upload_status(Name("app"), status.id)
    assert (await registry.upload_status(Name("app"), fresh.id)).offset == 0


@pytest_twisted.ensureDeferred
async def test_sessions_of_the_startedat_layout_are_served_and_expire(registry):
    """Sessions marked by a ``startedat`` file (before the data file marked them) still work, and expire."""
    name, old, idle = Name("app"), "a" * 32, "b" * 32
    for upload_id in (old, idle):
        await registry.storage.write_bytes(paths.upload_started(name, upload_id), str(time.time()).encode())
    assert (await registry.upload_status(name, old)).offset == 0
    await registry.append_upload(name, old, BytesBody(b"resumed"))
    assert (await registry.upload_status(name, old)).offset == 7
    await registry.finish_upload(name, old, Digest.of(b"resumed"))
    assert await registry.has_blob(name, Digest.of(b"resumed"))
    assert not (await registry.storage.stat(paths.upload(name, old)))
    full = os.path.join(registry.storage.root, paths.upload_started(name, idle))
    os.utime(full, (time.time() - 2 * DAY,) * 2)
    report = await collect(registry.storage, GCOptions(), now=time.time())
    assert report.uploads_removed == [("app", idle, 0)]
    with pytest.raises(BlobUploadUnknown):
        await registry.upload_status(name, idle)


@pytest_twisted.ensureDeferred
async def test_usage_unique_and_shared(registry):
    await push_image(registry, "one", "v1", b"s" * 100)
    await push_image(registry, "two", "v1", b"s" * 100)
    await push_image(registry, "two", "v2", b"u" * 50)
    rows = {r["repository"]: r for r in await usage(registry.storage)}
    # one:v1 and two:v1 are the same image: manifest, config and layer are shared.
    assert rows["one"]["unique"] == 0
    assert rows["two"]["shared"] == rows["one"]["shared"] == rows["one"]["total"] >= 102
    assert rows["two"]["unique"] > 50  # v2's own layer and manifest


def run_cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "oci_registry.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=registry_environment(),
    )


def skopeo_copy(src, dst):
    subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "-q",
            "--retry-times",
            "0",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            src,
            dst,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def stored_blobs(data_dir: str) -> int:
    """Blobs whose bytes are in the data directory (a collected blob's folder may keep its marker a while)."""
    return sum("data" in files for _, _, files in os.walk(os.path.join(data_dir, "blobs")))


def age_everything(data_dir: str, days: float) -> None:
    past = time.time() - days * DAY
    for top, _dirs, files in os.walk(data_dir):
        for name in files:
            os.utime(os.path.join(top, name), (past, past))


def test_gc_during_concurrent_pushes(tmp_path):
    """GC racing pushes deletes nothing a pushed image needs, and frees what was orphaned."""
    data = str(tmp_path / "data")
    registry = RegistryProcess(data).start()
    try:
        # Orphans from long ago: a blob pushed but never referenced, and a deleted image.
        import urllib.request

        orphans = []
        for i in range(5):
            blob = os.urandom(50_000) + bytes([i])
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            req = urllib.request.Request(
                f"{registry.url}/v2/old/blobs/uploads/?digest={digest}", data=blob, method="POST"
            )
            assert urllib.request.urlopen(req).status == 201
            orphans.append(digest)
        age_everything(data, 3)

        layouts = []
        for i in range(4):
            layout = OCILayout(str(tmp_path / f"layout{i}"))
            image = layout.add_image("v1", layers=3, layer_size=200_000, seed=f"gc-{i}")
            layouts.append((layout, image))

        errors = []
        stop = threading.Event()

        def gc_loop():
            while not stop.is_set():
                result = run_cli("gc", "--data-dir", data)
                if result.returncode != 0:
                    errors.append(result.stderr)
                    return

        def push(i):
            layout, _ = layouts[i]
            try:
                for tag in ("v1", "v2"):
                    skopeo_copy(f"oci:{layout.path}:v1", f"docker://{registry.host}/race/app{i}:{tag}")
            except subprocess.CalledProcessError as e:
                errors.append(e.stderr)

        collector = threading.Thread(target=gc_loop)
        collector.start()
        pushers = [threading.Thread(target=push, args=(i,)) for i in range(4)]
        for t in pushers:
            t.start()
        for t in pushers:
            t.join(300)
        stop.set()
        collector.join(300)
        assert errors == []

        result = run_cli("gc", "--data-dir", data, "--json")
        assert result.returncode == 0, result.stderr
        for digest in orphans:
            assert not os.path.exists(os.path.join(data, "blobs", "sha256", digest[7:9], digest[7:], "data"))

        for i, (layout, image) in enumerate(layouts):
            out = tmp_path / f"pulled{i}"
            skopeo_copy(f"docker://{registry.host}/race/app{i}:v2", f"oci:{out}:v1")
            pulled = OCILayout(str(out))
            for digest in [image.manifest_digest, image.config_digest, *image.layer_digests]:
                assert pulled.read_blob(digest) == layout.read_blob(digest)
    finally:
        registry.stop()


def test_cli_dry_run_and_du(tmp_path):
    data = str(tmp_path / "data")
    registry = RegistryProcess(data).start()
    try:
        layout = OCILayout(str(tmp_path / "layout"))
        layout.add_image("v1", layers=2, layer_size=10_000, seed="du")
        skopeo_copy(f"oci:{layout.path}:v1", f"docker://{registry.host}/du/one:v1")
        skopeo_copy(f"oci:{layout.path}:v1", f"docker://{registry.host}/du/two:v1")
    finally:
        registry.stop()
    result = run_cli("du", "--data-dir", data, "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["repository"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"du/one", "du/two"}
    assert rows["du/one"]["shared"] == rows["du/two"]["shared"] > 20_000
    result = run_cli("du", "--data-dir", data)
    assert "du/one" in result.stdout and "SHARED" in result.stdout

    age_everything(data, 3)
    subprocess.run(
        [
            "rm",
            "-r",
            os.path.join(data, "repositories", "du", "one", "_manifests"),
            os.path.join(data, "repositories", "du", "two", "_manifests"),
        ],
        check=True,
    )
    result = run_cli("gc", "--data-dir", data, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would remove" in result.stdout and "would be freed" in result.stdout
    before = stored_blobs(data)
    assert before > 0
    result = run_cli("gc", "--data-dir", data)
    assert "removed" in result.stdout
    assert stored_blobs(data) == 0


def test_cli_rejects_bad_options(tmp_path):
    """Status 2 (bad options, as docs/operations.md says), said by the parser before any storage is used."""
    for option in ("--grace=soon", "--grace=-1h", "--upload-expiry=nan"):
        result = run_cli("gc", "--data-dir", str(tmp_path / "absent"), option)
        assert result.returncode == 2, (option, result.returncode, result.stderr)
        assert "not a duration" in result.stderr.splitlines()[-1] and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "absent").exists()


# ------------------------------------------------ reads that fail during mark


@pytest.fixture(params=["filesystem", "s3"])
def any_storage(request, tmp_path):
    if request.param == "filesystem":
        driver = FilesystemDriver(str(tmp_path / "data"))
        yield driver
        driver.close()
        return
    from oci_registry.storage.s3 import S3Driver

    server = request.getfixturevalue("s3_server")
    driver = S3Driver(server.settings())
    yield driver
    driver.close()


class ReadFailed(Exception):
    """What a storage outage looks like to the GC: neither a result nor PathNotFound."""


def failing_reads(storage, predicate):
    async def before(method, path, args):
        if method == "read_bytes" and predicate(path):
            raise ReadFailed(f"503 Slow Down reading {path}")

    return HookedStorage(storage, before=before)


async def stored_paths(storage) -> list[str]:
    return await storage.walk(paths.BLOBS) + await storage.walk(paths.REPOSITORIES)


@pytest.mark.parametrize("what", ["manifest bytes", "revision link", "tag link"])
@pytest_twisted.ensureDeferred
async def test_a_read_failing_during_mark_stops_the_run_before_anything_is_deleted(any_storage, what):
    registry = Registry(any_storage)
    manifest, layer, _ = await push_image(registry, "app", "v1", b"referenced layer")
    await push_image(registry, "app", None, b"untagged")
    await push_blob(registry, "app", b"an orphan that would go")
    name = Name("app")
    target = {
        "manifest bytes": paths.blob_data(manifest),
        "revision link": paths.manifest_link(name, manifest),
        "tag link": paths.tag_link(name, Tag("v1")),
    }[what]
    if what == "manifest bytes":
        # A small manifest's bytes are in its revision link too; one an earlier release linked has them in its data.
        link = paths.manifest_link(name, manifest)
        revision = links.parse_revision(await any_storage.read_bytes(link), manifest)
        assert revision.data is not None
        await any_storage.write_bytes(link, revision.media_type.encode())
    before = await stored_paths(any_storage)
    with pytest.raises(GCAborted, match="503 Slow Down"):
        await collect(
            failing_reads(any_storage, lambda path: path == target), GCOptions(delete_untagged=True), now=LATER
        )
    assert await stored_paths(any_storage) == before
    assert await blob_exists(registry, layer)


@pytest_twisted.ensureDeferred
async def test_an_unparseable_manifest_keeps_every_blob_it_names(registry):
    manifest, layer, data = await push_image(registry, "app", "v1", b"layer of a damaged manifest")
    config = Digest.of(b"{}")
    orphan = await push_blob(registry, "app", b"an orphan")
    # Torn: the end of the document is missing (what a crash before fsync could leave).
    pathlib.Path(registry.storage.root, paths.blob_data(manifest)).write_bytes(data[:-10])
    report = await collect(registry.storage, GCOptions(), now=LATER)
    assert report.blobs_removed == [(str(orphan), 9)]
    for digest in (layer, config, manifest):
        assert await blob_exists(registry, digest)


@pytest_twisted.ensureDeferred
async def test_an_upload_finished_during_the_run_is_not_reported_as_removed(registry):
    name = Name("app")
    status = await registry.start_upload(name)
    await registry.append_upload(name, status.id, BytesBody(b"finished meanwhile"))
    started = paths.upload_started(name, status.id)

    async def finish():
        await registry.finish_upload(name, status.id, Digest.of(b"finished meanwhile"))

    hook = first(lambda method, path, args: method == "stat" and path == started, finish)
    report = await collect(HookedStorage(registry.storage, before=hook), GCOptions(), now=LATER)
    assert hook.fired
    assert report.uploads_removed == []
    # At LATER the new blob looks old and unreferenced: the sweep may take it, but whole, never a dangling link.
    digest = Digest.of(b"finished meanwhile")
    linked = await registry.has_blob(name, digest)
    assert linked == ((await registry.storage.stat(paths.blob_data(digest))) is not None)
    assert linked == (str(digest) not in {d for d, _ in report.blobs_removed})


def test_cli_stops_with_one_line_when_a_manifest_cannot_be_read(tmp_path):
    data = str(tmp_path / "data")
    registry = RegistryProcess(data).start()
    try:
        layout = OCILayout(str(tmp_path / "layout"))
        image = layout.add_image("v1", layers=2, layer_size=10_000, seed="unreadable")
        skopeo_copy(f"oci:{layout.path}:v1", f"docker://{registry.host}/broken/app:v1")
    finally:
        registry.stop()
    age_everything(data, 3)
    # A read that fails with an I/O error (EISDIR), not "not found": of the
    # revision link, which holds a small manifest's bytes too.
    hex_ = image.manifest_digest.split(":", 1)[1]
    manifest_file = os.path.join(
        data, "repositories", "broken", "app", "_manifests", "revisions", "sha256", hex_, "link"
    )
    os.rename(manifest_file, manifest_file + ".saved")
    os.mkdir(manifest_file)
    before = stored_blobs(data)
    result = run_cli("gc", "--data-dir", data)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "stopped before deleting anything" in result.stderr and hex_ in result.stderr
    assert stored_blobs(data) == before
