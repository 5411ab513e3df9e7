"""The storage suite against the filesystem driver, plus what only it promises."""

import os

import pytest
import pytest_twisted

from oci_registry.storage.filesystem import TEMP_PREFIX, FilesystemDriver
from oci_registry.storage.interfaces import StorageFull
from storage_suite import StorageSuite


class TestFilesystemStorage(StorageSuite):
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

    @pytest.fixture
    def driver(self, tmp_path):
        driver = FilesystemDriver(str(tmp_path / "root"), inline_reads=False)
        yield driver
        driver.close()
