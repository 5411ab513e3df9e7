"""The storage suite against the filesystem driver, plus what only it promises."""

import os
import pathlib
import time

import pytest
import pytest_twisted

from oci_registry.storage.filesystem import TEMP_PREFIX, FilesystemDriver
from oci_registry.storage.interfaces import (
    IBatchDelete,
    IClosableDriver,
    IExclusiveCreate,
    IFolderPeek,
    IReadFile,
    ISendfileReader,
    IWalkPages,
    StorageFull,
)
from storage_suite import StorageSuite


class TestFilesystemStorage(StorageSuite):
    driver_capabilities = (IClosableDriver, IExclusiveCreate, IWalkPages, IBatchDelete, IFolderPeek, IReadFile)
    reader_capabilities = (ISendfileReader,)

    @pytest.fixture
    def driver(self, tmp_path):
        driver = FilesystemDriver(str(tmp_path / "root"))
        yield driver
        driver.close()

    def temp_files(self, driver):
        found = []
        for top, _dirs, files in os.walk(driver.root):
            found += [os.path.join(top, f) for f in files if f.startswith(TEMP_PREFIX)]
        return found

    @pytest_twisted.ensureDeferred
    async def test_files_stay_inside_root(self, driver, tmp_path):
        await driver.write_bytes("x/y", b"data")
        assert os.path.isfile(os.path.join(driver.root, "x", "y"))
        assert sorted(os.listdir(tmp_path)) == ["root"]

    @pytest_twisted.ensureDeferred
    async def test_full_disk_is_storage_full(self, driver, monkeypatch):
        # /dev/full fails every write with ENOSPC, as a full file system does.
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full")
        os.makedirs(os.path.join(driver.root, "full"), exist_ok=True)
        os.symlink("/dev/full", os.path.join(driver.root, "full", "data"))
        writer = await driver.open_writer("full/data", append=True)
        with pytest.raises(StorageFull):
            for _ in range(4):
                await writer.write(b"x" * (1 << 20))
            await writer.commit()


class TestFilesystemStorageThreadedReads(StorageSuite):
    """The same suite with every read going through the thread pool."""

    driver_capabilities = (IClosableDriver, IExclusiveCreate, IWalkPages, IBatchDelete, IFolderPeek, IReadFile)
    reader_capabilities = (ISendfileReader,)

    @pytest.fixture
    def driver(self, tmp_path):
        driver = FilesystemDriver(str(tmp_path / "root"), inline_reads=False)
        yield driver
        driver.close()


@pytest_twisted.ensureDeferred
async def test_writes_race_the_removal_of_an_emptied_folder(tmp_path):
    """A delete that empties a folder removes it; a write into that folder at the same moment still lands."""
    from twisted.internet.defer import gatherResults

    driver = FilesystemDriver(str(tmp_path / "root"), threads=8)
    try:
        for i in range(200):
            await driver.write_bytes("f/old", b"x")
            await driver.write_bytes("src", b"moved")
            await gatherResults(
                [
                    driver.delete("f/old"),
                    driver.write_bytes(f"f/new-{i}", b"new"),
                    driver.move("src", f"f/moved-{i}"),
                ],
                consumeErrors=True,
            )
            assert await driver.read_bytes(f"f/new-{i}") == b"new"
            assert await driver.read_bytes(f"f/moved-{i}") == b"moved"
            await driver.delete("f")
    finally:
        driver.close()


@pytest_twisted.ensureDeferred
async def test_only_durable_writes_are_fsynced(tmp_path, monkeypatch):
    """An upload session's bookkeeping (``durable=False``) costs no fsync; every other write does."""
    from oci_registry.storage import filesystem

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(filesystem.os, "fsync", fsync)
    driver = FilesystemDriver(str(tmp_path / "root"))
    try:
        await driver.write_bytes("uploads/u1/startedat", b"1", durable=False)
        assert synced == []
        assert await driver.read_bytes("uploads/u1/startedat") == b"1"
        await driver.write_bytes("links/l1/link", b"2")
        assert os.path.join(driver.root, "links", "l1") in synced and len(synced) >= 3
    finally:
        driver.close()


@pytest_twisted.ensureDeferred
async def test_move_fsyncs_the_file_before_renaming_it(tmp_path, monkeypatch):
    """The bytes reach the disk before the name: after a power cut the blob is whole or absent."""
    from oci_registry.storage import filesystem

    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("rename", src))
        return real_replace(src, dst)

    monkeypatch.setattr(filesystem.os, "fsync", fsync)
    monkeypatch.setattr(filesystem.os, "replace", replace)
    driver = FilesystemDriver(str(tmp_path / "root"))
    try:
        full = os.path.join(driver.root, "up", "data")
        os.makedirs(os.path.dirname(full))
        pathlib.Path(full).write_bytes(b"bytes")
        await driver.move("up/data", "blobs/x/data", size=5)
    finally:
        driver.close()
    assert calls.index(("fsync", full)) < calls.index(("rename", full))


def _quiet(folder) -> None:
    """Make a folder look unchanged for an hour, as one is between pushes: its listing may then be kept."""
    old = os.stat(folder).st_mtime - 3600
    os.utime(folder, (old, old))


def _tags(root, count: int):
    """A folder ``tags`` under ``root`` of ``count`` folders, v00000 up."""
    folder = root / "tags"
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"v{i:05d}").mkdir()
    return folder


@pytest_twisted.ensureDeferred
async def test_a_large_folder_is_read_once_while_unchanged(tmp_path):
    """
    A page of a folder of 3,000 entries reads all of them once; the next
    pages only a stat while the folder is unchanged, and a change made
    behind the driver's back (another process) is seen at the next page.
    """
    driver = FilesystemDriver(str(tmp_path / "root"))
    try:
        folder = _tags(tmp_path / "root", 3000)
        _quiet(folder)
        before = driver.entries_read
        assert await driver.list_page("tags", None, 3) == ["v00000", "v00001", "v00002"]
        assert driver.entries_read - before == 3000
        before = driver.entries_read
        for start in ("v00002", "v01000", "v02997"):
            page = await driver.list_page("tags", start, 100)
            assert len(page) == min(100, 3000 - int(start[1:]) - 1) and page[0] > start
        assert driver.entries_read == before

        (folder / "v01000-rc").mkdir()  # by another process
        assert await driver.list_page("tags", "v01000", 2) == ["v01000-rc", "v01001"]
        assert driver.entries_read - before == 3001
        (folder / "v01000-rc").rmdir()
        assert await driver.list_page("tags", "v01000", 2) == ["v01001", "v01002"]
    finally:
        driver.close()


@pytest_twisted.ensureDeferred
async def test_a_recently_changed_folder_is_read_again(tmp_path):
    """A change within the same timestamp tick might not move the mtime: a folder changed just now is not kept."""
    driver = FilesystemDriver(str(tmp_path / "root"))
    try:
        _tags(tmp_path / "root", 1500)
        before = driver.entries_read
        await driver.list_page("tags", None, 10)
        await driver.list_page("tags", None, 10)
        assert driver.entries_read - before == 3000
    finally:
        driver.close()


@pytest_twisted.ensureDeferred
async def test_a_folder_quiet_for_a_moment_is_kept_on_a_local_file_system(tmp_path):
    """
    On a local file system with sub-second timestamps a folder's listing is
    kept once it has been quiet for 0.1 s (so a page soon after a push is a
    bisection), where one whose mtime is whole seconds waits 2 s.
    """
    driver = FilesystemDriver(str(tmp_path / "root"))
    try:
        assert driver.listings.local_quiet_ns == 100_000_000  # tmp_path is on a local file system here
        folder = _tags(tmp_path / "root", 1500)
        fine = time.time_ns() - 300_000_000
        fine += 1 if fine % 1_000_000_000 == 0 else 0
        os.utime(folder, ns=(fine, fine))
        before = driver.entries_read
        await driver.list_page("tags", None, 10)
        assert await driver.list_page("tags", "v00100", 2) == ["v00101", "v00102"]
        assert driver.entries_read - before == 1500

        coarse = (time.time_ns() // 1_000_000_000 - 1) * 1_000_000_000  # 1-2 s ago, in whole seconds
        os.utime(folder, ns=(coarse, coarse))
        before = driver.entries_read
        await driver.list_page("tags", None, 10)
        await driver.list_page("tags", None, 10)
        assert driver.entries_read - before == 3000
    finally:
        driver.close()


def test_which_file_systems_are_local(tmp_path):
    from oci_registry.storage.filesystem import _local_filesystem

    assert _local_filesystem(str(tmp_path))
    assert _local_filesystem(str(tmp_path / "not" / "made" / "yet"))
    assert not _local_filesystem("/proc/self")


@pytest_twisted.ensureDeferred
async def test_holds_files_stops_at_the_first_file(tmp_path):
    driver = FilesystemDriver(str(tmp_path / "root"))
    try:
        layers = tmp_path / "root" / "repo" / "_layers" / "sha256"
        for i in range(2000):
            (layers / f"{i:064x}").mkdir(parents=True)
            (layers / f"{i:064x}" / "link").write_bytes(b"x")
        before = driver.entries_read
        assert await driver.holds_files("repo/_layers") is True
        assert driver.entries_read - before <= 4
        # Emptied folders (left by deletes before they removed them) are looked through.
        empty = tmp_path / "root" / "gone" / "_layers" / "sha256"
        for i in range(50):
            (empty / f"{i:064x}").mkdir(parents=True)
        assert await driver.holds_files("gone/_layers") is False
        assert await driver.holds_files("gone") is False
    finally:
        driver.close()


@pytest_twisted.ensureDeferred
async def test_peek_folder_looks_through_emptied_folders_and_large_ones(tmp_path):
    """
    A marker folder that only holds emptied folders holds nothing; a folder
    too large to read on the reactor thread, or a search that goes on too
    long there, is answered from the pool alike.
    """
    from oci_registry.storage import filesystem

    driver = FilesystemDriver(str(tmp_path / "root"))
    try:
        repo = tmp_path / "root" / "repo"
        for i in range(50):
            (repo / "_layers" / "sha256" / f"{i:064x}").mkdir(parents=True)
        (repo / "_manifests" / "revisions").mkdir(parents=True)
        markers = ("_layers", "_manifests")
        assert await driver.peek_folder("repo", 8, markers) == (["_layers", "_manifests"], None)
        (repo / "_manifests" / "revisions" / "link").write_bytes(b"x")
        assert await driver.peek_folder("repo", 8, markers) == (["_layers", "_manifests"], "_manifests")
        names = [f"{i:060d}" for i in range(600)]
        for name in names:
            (repo / name).mkdir()
        assert os.stat(repo).st_size > filesystem.INLINE_FOLDER_SIZE
        assert await driver.peek_folder("repo", 3, markers) == (names[:3], "_manifests")
        deep = repo / "_layers" / "sha256" / f"{0:064x}"
        for i in range(filesystem.INLINE_SEARCH_ENTRIES):
            (deep / f"{i:04d}").mkdir()
        (repo / "_layers" / "sha256" / f"{49:064x}" / "link").write_bytes(b"x")
        answer = driver.peek_folder("repo", 3, markers)
        assert not answer.called  # the search went on in the pool
        assert await answer == (names[:3], "_layers")
    finally:
        driver.close()
