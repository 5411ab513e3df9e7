"""
The behavioural suite every storage driver must pass.

Subclass `StorageSuite` in a ``test_storage_<driver>.py`` module and give it
a ``driver`` fixture that yields a fresh, empty `IStorageDriver` and a
``leftovers`` fixture-free method ``temp_files(driver)`` listing anything
the driver left behind that is not a real file (temporary names, partial
uploads); the suite checks after every test that nothing was left.
``driver_capabilities`` and ``reader_capabilities`` name the optional
interfaces the driver and its readers declare: the suite checks each with
``verifyObject``, and that they declare no other.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList
from zope.interface.verify import verifyObject

from oci_registry.storage.interfaces import (
    DRIVER_EXTENSIONS,
    DestinationExists,
    IBatchDelete,
    IClosableDriver,
    IExclusiveCreate,
    IFolderPeek,
    IReader,
    IReadFile,
    ISendfileReader,
    IStatFile,
    IStorageDriver,
    IWalkAfter,
    IWalkPages,
    IWriter,
    PathNotFound,
    SourceChanged,
)

# Every optional capability a driver or its readers may declare.
CAPABILITIES = (IClosableDriver, ISendfileReader, *DRIVER_EXTENSIONS)


async def _write_file(driver, path, chunks, hasher=None):
    writer = await driver.open_writer(path, hasher=hasher)
    for chunk in chunks:
        await writer.write(chunk)
    await writer.commit()
    return writer


class StorageSuite:
    driver_capabilities: tuple = ()  # override: the optional interfaces the driver provides
    reader_capabilities: tuple = ()  # override: those its readers provide

    def temp_files(self, driver) -> list[str]:
        """Override: paths of temporary files the driver left behind."""
        return []

    @pytest.fixture(autouse=True)
    def _no_leftovers(self, driver):
        yield
        assert self.temp_files(driver) == []

    def test_provides_interface(self, driver):
        assert verifyObject(IStorageDriver, driver)

    def test_declares_its_capabilities(self, driver):
        for capability in self.driver_capabilities:
            assert verifyObject(capability, driver)
        undeclared = [c for c in CAPABILITIES if c.providedBy(driver) and c not in self.driver_capabilities]
        assert undeclared == []

    @pytest_twisted.ensureDeferred
    async def test_its_readers_declare_their_capabilities(self, driver):
        await driver.write_bytes("capabilities", b"x" * 1000)
        reader = await driver.open_reader("capabilities", 10)
        try:
            assert verifyObject(IReader, reader)
            for capability in self.reader_capabilities:
                assert verifyObject(capability, reader)
            undeclared = [c for c in CAPABILITIES if c.providedBy(reader) and c not in self.reader_capabilities]
            assert undeclared == []
        finally:
            await reader.close()

    @pytest_twisted.ensureDeferred
    async def test_write_and_read_bytes(self, driver):
        await driver.write_bytes("a/b/c", b"hello")
        assert await driver.read_bytes("a/b/c") == b"hello"
        await driver.write_bytes("a/b/c", b"bye")
        assert await driver.read_bytes("a/b/c") == b"bye"

    @pytest_twisted.ensureDeferred
    async def test_empty_file(self, driver):
        await driver.write_bytes("empty", b"")
        assert await driver.read_bytes("empty") == b""
        assert (await driver.stat("empty")).size == 0

    @pytest_twisted.ensureDeferred
    async def test_read_missing(self, driver):
        with pytest.raises(PathNotFound):
            await driver.read_bytes("no/such/file")

    @pytest_twisted.ensureDeferred
    async def test_stat(self, driver):
        assert await driver.stat("missing") is None
        await driver.write_bytes("dir/file", b"12345")
        info = await driver.stat("dir/file")
        assert info.size == 5 and not info.is_dir
        assert (await driver.stat("dir")).is_dir
        assert await driver.stat("dir/file/below") is None

    @pytest_twisted.ensureDeferred
    async def test_list(self, driver):
        assert await driver.list("nothing") == []
        for name in ("c", "a", "b/x"):
            await driver.write_bytes(f"top/{name}", b"x")
        assert await driver.list("top") == ["a", "b", "c"]

    @pytest_twisted.ensureDeferred
    async def test_list_page(self, driver):
        """Pages in byte order after any string, folders and files alike ("a" < "a-b" < "a.c" < "a0")."""
        assert await driver.list_page("nothing") == []
        assert await driver.list_page("nothing", "a", 10) == []
        for name in ("a/x", "a-b/x", "a.c/y/z", "a0/x", "b", "a-b-c/x"):
            await driver.write_bytes(f"lp/{name}", b"x")
        everything = ["a", "a-b", "a-b-c", "a.c", "a0", "b"]
        assert await driver.list_page("lp") == everything
        assert await driver.list_page("lp") == await driver.list("lp")
        for start in [None, "", "a", "a-", "a-b", "a-b-c", "a-c", "a.c", "a/", "a/x", "a0", "a1", "b", "c"]:
            rest = [n for n in everything if start is None or n > start]
            assert await driver.list_page("lp", start) == rest, start
            for limit in range(len(everything) + 2):
                assert await driver.list_page("lp", start, limit) == rest[:limit], (start, limit)

    @pytest_twisted.ensureDeferred
    async def test_list_page_of_a_large_folder(self, driver):
        """Pages cut anywhere in a folder longer than one S3 listing (1000 keys) follow each other."""
        names = [f"t{i:04d}" for i in range(1010)] + ["t0500-rc", "t0500.1"]
        await DeferredList([driver.write_bytes(f"many/{n}/link", b"x") for n in names], fireOnOneErrback=True)
        names.sort()
        assert await driver.list_page("many") == names
        seen, start = [], None
        for _ in range(10):
            page = await driver.list_page("many", start, 400)
            seen += page
            if len(page) < 400:
                break
            start = page[-1]
        assert seen == names
        assert await driver.list_page("many", "t0499", 3) == ["t0500", "t0500-rc", "t0500.1"]
        assert await driver.list_page("many", "t1009") == []

    @pytest_twisted.ensureDeferred
    async def test_holds_files(self, driver):
        assert await driver.holds_files("none") is False
        await driver.write_bytes("h/a/b/c", b"x")
        await driver.write_bytes("h/d", b"x")
        assert await driver.holds_files("h") is True
        assert await driver.holds_files("h/a") is True
        assert await driver.holds_files("h/a/b") is True
        assert await driver.holds_files("h/a/b/c") is False  # a file holds nothing below it
        await driver.delete("h/a/b/c")
        assert await driver.holds_files("h/a") is False
        assert await driver.holds_files("h") is True
        await driver.delete("h/d")
        assert await driver.holds_files("h") is False

    @pytest_twisted.ensureDeferred
    async def test_peek_folder(self, driver):
        """`IFolderPeek`: ``list_page(path, None, limit)`` and the first marker ``holds_files`` finds a file under."""
        if not IFolderPeek.providedBy(driver):
            pytest.skip("the driver has no peek_folder")
        assert await driver.peek_folder("none", 8, ("m", "n")) == ([], None)
        for name in ("m/a/b", "n/c", "x/y", "a0/z", "b"):
            await driver.write_bytes(f"p/{name}", b"x")
        assert await driver.peek_folder("p", 8, ()) == (["a0", "b", "m", "n", "x"], None)
        assert await driver.peek_folder("p", 2, ("m", "n")) == (["a0", "b"], "m")
        assert await driver.peek_folder("p", 8, ("n", "m")) == (["a0", "b", "m", "n", "x"], "n")
        assert await driver.peek_folder("p", 8, ("b", "q")) == (["a0", "b", "m", "n", "x"], None)  # b is a file
        # What a delete empties may still be listed (a file system keeps "m" while "m/a" is left), never found.
        await driver.delete("p/m/a/b")
        names, holding = await driver.peek_folder("p", 8, ("m", "n"))
        assert holding == "n" and names == await driver.list_page("p", None, 8)
        await driver.delete("p/n/c")
        names, holding = await driver.peek_folder("p", 2, ("m", "n"))
        assert holding is None and names == ["a0", "b"]

    @pytest_twisted.ensureDeferred
    async def test_walk(self, driver):
        for name in ("x/1", "x/y/2", "x/y/z/3", "other/4"):
            await driver.write_bytes(name, b"data")
        assert await driver.walk("x") == ["1", "y/2", "y/z/3"]
        assert await driver.walk("missing") == []

    @pytest_twisted.ensureDeferred
    async def test_walk_page_by_page(self, driver):
        """Pages of any size give every file once, each folder's files next to each other, as ``walk`` does."""
        if not IWalkPages.providedBy(driver):
            pytest.skip("the driver walks in one piece only")
        # Names that sort differently by key and folder by folder ("a-b/" < "a/" < "a0").
        names = ["a/1", "a/b/2", "a/b/3", "a-b/4", "a0", "a/_c/5", "c/d/e/6", "c/d/7", "z"]
        for name in names:
            await driver.write_bytes(f"w/{name}", b"data")
        await driver.write_bytes("w-outside", b"data")
        for limit in (1, 2, 3, 1000):
            found, cursor, pages = [], None, 0
            while pages < 20:
                page, cursor = await driver.walk_page("w", cursor, limit)
                pages += 1
                assert len(page) <= limit
                found += page
                if cursor is None:
                    break
            assert sorted(found) == sorted(names) == await driver.walk("w")
            for folder in ("a/", "a/b/", "c/", "c/d/"):
                at = [i for i, path in enumerate(found) if path.startswith(folder)]
                assert at == list(range(at[0], at[-1] + 1)), (folder, found)
        assert await driver.walk_page("missing", None, 10) == ([], None)

    @pytest_twisted.ensureDeferred
    async def test_walk_after(self, driver):
        """Files below a folder from any point, a page at a time, each once, in one order from page to page."""
        if not IWalkAfter.providedBy(driver):
            pytest.skip("the driver lists in order only folder by folder")
        names = ["a/1", "a/b/2", "a/b/3", "a-b/4", "a0", "a/_c/5", "c/d/e/6", "c/d/7", "z"]
        for name in names:
            await driver.write_bytes(f"o/{name}", b"data")
        await driver.write_bytes("o-outside", b"data")
        everything = await driver.walk_after("o", None, 1000)
        assert sorted(everything) == sorted(names)
        for limit in (1, 2, 4):
            found, start = [], None
            for _ in range(20):
                page = await driver.walk_after("o", start, limit)
                assert len(page) <= limit
                found += page
                if len(page) < limit:
                    break
                start = page[-1]
            assert found == everything, limit
        # Flat names of one folder come in byte order, from any point.
        assert await driver.walk_after("o", "a0", 1000) == everything[everything.index("a0") + 1 :]
        for start in ("a", "a0", "b", "y", "zz"):
            flat = [n for n in everything if "/" not in n]
            assert [n for n in await driver.walk_after("o", start, 1000) if "/" not in n] == [
                n for n in flat if n > start
            ]
        assert await driver.walk_after("missing", None, 10) == []
        assert await driver.walk_after("o", None, 0) == []

    @pytest_twisted.ensureDeferred
    async def test_stat_file(self, driver):
        """A file's info as ``stat`` gives it; None for nothing, and for a folder."""
        if not IStatFile.providedBy(driver):
            pytest.skip("the driver has stat alone")
        await driver.write_bytes("files/one", b"12345")
        await driver.write_bytes("files/folder/inside", b"x")
        info = await driver.stat_file("files/one")
        assert info.size == 5 and not info.is_dir
        assert info == await driver.stat("files/one")
        assert await driver.stat_file("files/missing") is None
        assert await driver.stat_file("files/folder") is None
        writer = await driver.open_writer("files/growing")
        await writer.write(b"abc")
        await writer.close()
        assert (await driver.stat_file("files/growing")).size == 3
        await driver.delete("files")

    @pytest_twisted.ensureDeferred
    async def test_read_file(self, driver):
        """A small file's bytes and its time as ``stat`` gives them, in one call; None for nothing, and for a folder."""
        if not IReadFile.providedBy(driver):
            pytest.skip("the driver reads and stats apart")
        await driver.write_bytes("read/one", b"12345")
        await driver.write_bytes("read/empty", b"")
        await driver.write_bytes("read/large", b"x" * (100 << 10))  # past what is read without a thread
        await driver.write_bytes("read/folder/inside", b"x")
        found = await driver.read_file("read/one")
        assert found.data == b"12345"
        assert found.mtime == (await driver.stat("read/one")).mtime
        assert (await driver.read_file("read/empty")).data == b""
        assert (await driver.read_file("read/large")).data == b"x" * (100 << 10)
        assert await driver.read_file("read/missing") is None
        assert await driver.read_file("read/folder") is None
        assert await driver.read_file("read/one/below") is None
        writer = await driver.open_writer("read/growing")
        await writer.write(b"abc")
        await writer.close()
        assert (await driver.read_file("read/growing")).data == b"abc"
        await driver.delete("read")

    @pytest_twisted.ensureDeferred
    async def test_delete_files(self, driver):
        """Many files in one call, missing ones too; a folder named among them stays."""
        if not IBatchDelete.providedBy(driver):
            pytest.skip("the driver deletes one path at a time")
        paths = [f"many/{i:04d}/file" for i in range(1100)]  # more than one S3 request's worth
        for path in paths[:20]:
            await driver.write_bytes(path, b"x")
        await driver.write_bytes("many/folder/inside", b"kept")
        await driver.write_bytes("many/kept", b"kept")
        await driver.delete_files([*paths, "many/folder", "many/missing"])
        assert await driver.walk("many") == ["folder/inside", "kept"]
        assert await driver.list("many") == ["folder", "kept"]
        await driver.delete_files([])

    @pytest_twisted.ensureDeferred
    async def test_delete_file_and_folder(self, driver):
        await driver.write_bytes("d/one", b"1")
        await driver.write_bytes("d/sub/two", b"2")
        await driver.write_bytes("keep", b"k")
        await driver.delete("d/one")
        assert await driver.stat("d/one") is None
        await driver.delete("d")
        assert await driver.stat("d/sub/two") is None
        assert await driver.list("d") == []
        await driver.delete("d")  # missing is fine
        assert await driver.read_bytes("keep") == b"k"

    @pytest_twisted.ensureDeferred
    @pytest_twisted.ensureDeferred
    async def test_exclusive_create(self, driver):
        """``create_bytes`` creates a file only where none is: of many at once, exactly one does."""
        if not IExclusiveCreate.providedBy(driver):
            pytest.skip("the driver cannot create exclusively")
        await driver.create_bytes("claims/one", b"first")
        with pytest.raises(DestinationExists):
            await driver.create_bytes("claims/one", b"second")
        assert await driver.read_bytes("claims/one") == b"first"
        results = await DeferredList(
            [driver.create_bytes("claims/race", b"%d" % i) for i in range(8)], consumeErrors=True
        )
        won = [i for i, (ok, _) in enumerate(results) if ok]
        assert len(won) == 1
        assert all(f.check(DestinationExists) for ok, f in results if not ok)
        assert await driver.read_bytes("claims/race") == b"%d" % won[0]
        await driver.delete("claims/one")
        await driver.create_bytes("claims/one", b"again")
        assert await driver.read_bytes("claims/one") == b"again"

    async def test_move_replaces(self, driver):
        await driver.write_bytes("src", b"new")
        await driver.write_bytes("deep/dst", b"old")
        await driver.move("src", "deep/dst")
        assert await driver.read_bytes("deep/dst") == b"new"
        assert await driver.stat("src") is None
        await driver.write_bytes("src2", b"x")
        await driver.move("src2", "fresh/folder/dst")
        assert await driver.read_bytes("fresh/folder/dst") == b"x"

    @pytest_twisted.ensureDeferred
    async def test_move_without_replacing(self, driver):
        """``replace=False`` moves only to a free path; else nothing moves (what puts bytes back from quarantine)."""
        await driver.write_bytes("q/held", b"held")
        await driver.write_bytes("q/data", b"there")
        with pytest.raises(DestinationExists):
            await driver.move("q/held", "q/data", replace=False)
        assert await driver.read_bytes("q/held") == b"held"
        assert await driver.read_bytes("q/data") == b"there"
        await driver.delete("q/data")
        await driver.move("q/held", "q/data", replace=False)
        assert await driver.read_bytes("q/data") == b"held"
        assert await driver.stat("q/held") is None
        with pytest.raises(PathNotFound):
            await driver.move("q/held", "q/data", replace=False)
        await driver.move("q/data", "new/folder/data", replace=False)
        assert await driver.read_bytes("new/folder/data") == b"held"
        assert isinstance(driver.move_is_copy, bool)

    @pytest_twisted.ensureDeferred
    async def test_deleting_a_folders_last_file_removes_the_folder(self, driver):
        await driver.write_bytes("f/sub/one", b"1")
        await driver.write_bytes("f/sub/two", b"2")
        await driver.delete("f/sub/one")
        assert (await driver.stat("f/sub")).is_dir
        await driver.delete("f/sub/two")
        assert await driver.stat("f/sub") is None
        assert await driver.list("f") == []
        # Writes into the folder create it again.
        await driver.write_bytes("f/sub/three", b"3")
        await driver.write_bytes("f/moved", b"4")
        await driver.move("f/moved", "f/sub/four")
        assert await driver.list("f/sub") == ["four", "three"]

    @pytest_twisted.ensureDeferred
    async def test_move_missing(self, driver):
        with pytest.raises(PathNotFound):
            await driver.move("absent", "dst")

    @pytest_twisted.ensureDeferred
    async def test_writer_streams_and_hashes(self, driver):
        chunks = [os.urandom(size) for size in (1, 1000, 70000, 3 << 20, 5)]
        hasher = hashlib.sha256()
        writer = await _write_file(driver, "up/data", chunks, hasher)
        assert verifyObject(IWriter, writer)
        data = b"".join(chunks)
        assert writer.size == len(data)
        assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
        assert await driver.read_bytes("up/data") == data

    @pytest_twisted.ensureDeferred
    async def test_large_write_with_back_pressure(self, driver):
        block = os.urandom(1 << 16)
        expected = hashlib.sha256()
        writer = await driver.open_writer("big")
        for i in range(512):  # 32 MiB, waiting on each write as callers must
            chunk = block[i % 7 :] + block[: i % 7]
            expected.update(chunk)
            await writer.write(chunk)
        await writer.commit()
        got = await driver.hash_file("big", hashlib.sha256())
        assert got.hexdigest() == expected.hexdigest()
        assert (await driver.stat("big")).size == 512 << 16

    @pytest_twisted.ensureDeferred
    async def test_writer_append(self, driver):
        await _write_file(driver, "f", [b"abc"])
        writer = await driver.open_writer("f", append=True)
        assert writer.size == 3
        await writer.write(b"def")
        await writer.close()
        assert await driver.read_bytes("f") == b"abcdef"

    @pytest_twisted.ensureDeferred
    async def test_writer_version_tells_another_writers_data_of_the_same_size(self, driver):
        """
        What lets a process trust its running hash of an upload: after
        ``close()``, the writer's ``version`` is the one ``stat`` reports until
        somebody else writes the file.  Two writers storing different bytes of
        the same size leave different versions, unless the driver keeps none
        (None), in which case appends only grow the file and the size tells.
        """
        first = await driver.open_writer("uploads/u/data")
        await first.write(b"a" * 10)
        await first.close()
        assert first.version == (await driver.stat("uploads/u/data")).version

        second = await driver.open_writer("uploads/u/data")  # another process's writer, from the start
        await second.write(b"b" * 10)
        await second.close()
        info = await driver.stat("uploads/u/data")
        assert info.size == 10 and second.version == info.version
        if first.version is None:
            assert second.version is None
        else:
            assert second.version != first.version

        resumed = await driver.open_writer("uploads/u/data", append=True)
        assert resumed.version == info.version  # nothing of its own stored yet
        await resumed.write(b"c" * 10)
        await resumed.close()
        assert resumed.version == (await driver.stat("uploads/u/data")).version
        await driver.delete("uploads/u")

    @pytest_twisted.ensureDeferred
    async def test_move_with_a_size_moves_only_those_bytes(self, driver):
        """
        ``move(size=n)`` publishes exactly the ``n`` bytes a caller verified:
        of another size it refuses; with a writer appending meanwhile, it
        refuses or moves the bytes from before the writer (which then
        cannot add to the destination).
        """
        await _write_file(driver, "up/a/data", [b"x" * 10])
        with pytest.raises(SourceChanged):
            await driver.move("up/a/data", "blobs/a", size=9)
        assert await driver.stat("blobs/a") is None
        await driver.move("up/a/data", "blobs/a", size=10)
        assert await driver.read_bytes("blobs/a") == b"x" * 10
        assert await driver.stat("up/a/data") is None

        await _write_file(driver, "up/b/data", [b"x" * 10])
        writer = await driver.open_writer("up/b/data", append=True)
        await writer.write(b"y" * 10)
        try:
            await driver.move("up/b/data", "blobs/b", size=10)
            moved = True
        except SourceChanged:
            moved = False
        await writer.close()
        if moved:
            assert await driver.read_bytes("blobs/b") == b"x" * 10
        else:
            assert await driver.stat("blobs/b") is None
            assert await driver.read_bytes("up/b/data") == b"x" * 10 + b"y" * 10
        await driver.delete("up")
        await driver.delete("blobs")

    @pytest_twisted.ensureDeferred
    async def test_writer_cancel(self, driver):
        writer = await driver.open_writer("gone/data")
        await writer.write(b"x" * 100)
        await writer.cancel()
        assert await driver.stat("gone/data") is None

    @pytest_twisted.ensureDeferred
    async def test_reader(self, driver):
        data = os.urandom(300000)
        await driver.write_bytes("r", data)
        reader = await driver.open_reader("r", 1000)
        assert verifyObject(IReader, reader)
        assert reader.size == len(data)
        got = []
        while block := await reader.read(65536):
            got.append(block)
        await reader.close()
        assert b"".join(got) == data[1000:]

    @pytest_twisted.ensureDeferred
    async def test_open_reader_missing(self, driver):
        with pytest.raises(PathNotFound):
            await driver.open_reader("nope")

    @pytest_twisted.ensureDeferred
    async def test_hash_file_limit(self, driver):
        await driver.write_bytes("h", b"0123456789")
        hasher = await driver.hash_file("h", hashlib.sha256(), 4)
        assert hasher.hexdigest() == hashlib.sha256(b"0123").hexdigest()

    @pytest_twisted.ensureDeferred
    async def test_concurrent_writes_are_atomic(self, driver):
        values = [bytes([i]) * 200000 for i in range(8)]
        await DeferredList([driver.write_bytes("race", v) for v in values], fireOnOneErrback=True)
        assert await driver.read_bytes("race") in values

    @pytest.mark.parametrize("path", ["../escape", "/absolute", "a//b", "a/./b", "a/../../b", ""])
    @pytest_twisted.ensureDeferred
    async def test_rejects_paths_outside(self, driver, path):
        with pytest.raises(ValueError):
            await driver.write_bytes(path, b"x")
        with pytest.raises(ValueError):
            await driver.read_bytes(path)

    @pytest_twisted.ensureDeferred
    async def test_redirect_url_is_string_or_none(self, driver):
        await driver.write_bytes("blob", b"x")
        url = await driver.redirect_url("blob")
        assert url is None or url.startswith(("http://", "https://"))
