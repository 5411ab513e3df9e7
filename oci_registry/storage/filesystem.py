"""
The embedded default storage: files in a directory on the local file system.

Blocking calls run in a thread pool of the driver's own; the reactor thread
only moves buffers around, except for ``stat`` and reads of small files
(links, tags, manifests: at most 64 KiB), which take microseconds from the
page cache and far longer through the pool (``inline_reads=False`` sends
them to the pool too).  Small files are written to a temporary
name, fsynced and renamed; large files are written through an `IWriter` that
batches the incoming chunks into large blocks, writes and hashes each block
in the pool (hashlib releases the GIL), and applies back-pressure while the
disk is behind.

Durability: a file is fsynced before it is renamed to its path (``move``,
``write_bytes``), the folder it lands in is fsynced after, and so is the
parent of every folder created on the way, so that once a call has
returned the file survives a power cut under its name.  Deleting a folder's
last file removes the folder too (as on S3, where folders are only key
prefixes); writes into a folder removed meanwhile create it again.
"""

from __future__ import annotations

import bisect
import collections
import ctypes
import errno
import fcntl
import os
import pwd
import shutil
import stat as stat_module
import threading
import time
import uuid

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .availability import Availability
from .interfaces import (
    DestinationExists,
    DriverFactory,
    FileContent,
    FileInfo,
    IBatchDelete,
    IClosableDriver,
    IExclusiveCreate,
    IFolderPeek,
    IReadFile,
    ISendfileReader,
    IStorageDriver,
    IWalkPages,
    IWriter,
    PathNotFound,
    SourceChanged,
    StorageFull,
    StorageUnavailable,
)

TEMP_PREFIX = ".tmp-"
BLOCK = 1 << 20  # bytes handed to the pool per write job
HIGH_WATER = 8 << 20  # buffered bytes above which writers push back
INLINE_READ_LIMIT = 64 << 10  # small files read on the reactor thread
_TOO_LARGE = object()  # what an inline `read_file` says of a file past INLINE_READ_LIMIT
# Folders whose size (st_size) is at most this are listed on the reactor
# thread (a few hundred entries: tens of microseconds), larger ones in the pool.
INLINE_FOLDER_SIZE = 16 << 10
# Entries a `holds_files` search looks at on the reactor thread before it
# carries on in the pool (it stops at the first file, so it rarely gets there).
INLINE_SEARCH_ENTRIES = 1000
# A listing of at least this many names is kept (sorted) while the folder is unchanged.
CACHED_LISTING_MIN = 1000
CACHED_NAMES_MAX = 2_000_000  # names kept in all, at most (about 100 MB at the worst)
# A folder changed less than this long before it was read may change again
# within the same timestamp tick without its mtime moving: its listing is not kept.
QUIET_NS = 2_000_000_000
# The same on a local file system whose timestamps have sub-second parts: this
# host's kernel stamps them from its clock tick (at most 10 ms), with no other
# machine's clock in the way.
LOCAL_QUIET_NS = 100_000_000
LOCAL_FILESYSTEMS = frozenset(
    {"ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "bcachefs", "overlay", "ramfs", "jfs", "reiserfs"}
)


# The file system failing or refusing this process, rather than a path missing.
_UNAVAILABLE = {
    getattr(errno, name)
    for name in ("EIO", "EROFS", "EACCES", "EPERM", "ESTALE", "ENOTCONN", "ETIMEDOUT", "EHOSTDOWN", "EUCLEAN")
    if hasattr(errno, name)
}


def _translate(exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(str(exc))
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return PathNotFound(str(exc))
    if exc.errno in _UNAVAILABLE:
        return StorageUnavailable(str(exc))
    return exc


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _libc_renameat2():
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None


_renameat2 = _libc_renameat2()
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (`FileExistsError`), atomically."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        error = ctypes.get_errno()
        if error not in (errno.ENOSYS, errno.EINVAL):  # else the file system cannot: link, then unlink
            raise OSError(error, os.strerror(error), src, None, dst)
    os.link(src, dst)  # fails, atomically, when the destination exists
    os.unlink(src)


def _makedirs(directory: str) -> None:
    """Create ``directory`` and its missing parents, each new entry made durable (its parent fsynced)."""
    missing = []
    while not os.path.isdir(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue  # created meanwhile by another writer, who makes it durable
        _fsync_dir(os.path.dirname(folder))


def _in_folder(full: str, create, source: str | None = None, durable: bool = True):
    """
    Run ``create()``, which makes an entry at ``full`` (from ``source``, if
    it moves one), with its folder in place: a delete of the folder's last
    file may remove the folder between its creation and ``create()`` (then
    ENOENT, and the folder is made again).  A missing ``source`` is the
    caller's error.
    """
    folder = os.path.dirname(full)
    for _ in range(10):
        if durable:
            _makedirs(folder)
        else:
            os.makedirs(folder, exist_ok=True)
        try:
            return create()
        except FileNotFoundError:
            if source is not None and not os.path.lexists(source):
                raise
    raise OSError(errno.EAGAIN, f"{folder} keeps being removed")


def _unlink_pruning(full: str, root: str, missing: tuple[type[OSError], ...]) -> None:
    """Remove the file ``full`` (an error in ``missing``: nothing to remove), then its folder if it is now empty."""
    try:
        os.unlink(full)
    except missing:
        return
    folder = os.path.dirname(full)
    if folder != root:
        try:
            os.rmdir(folder)  # only when that was its last entry
        except OSError:
            pass


@implementer(IStorageDriver, IClosableDriver, IExclusiveCreate, IWalkPages, IBatchDelete, IFolderPeek, IReadFile)
class FilesystemDriver:
    """Stores files under ``root``; ``reactor`` and the pool are injectable."""

    min_chunk_length = None  # appends cost the same whatever their size
    move_is_copy = False  # a rename

    def __init__(self, root: str, reactor=None, threads: int = 8, inline_reads: bool = True):
        if reactor is None:
            from twisted.internet import reactor
        self.root = os.path.abspath(root)
        self._inline_reads = inline_reads
        self.availability = Availability(f"data directory {self.root}")
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name="ociregistry-fs")
        self._pool.start()
        self._shutdown = reactor.addSystemEventTrigger("during", "shutdown", self.close)
        self.listings = _Listings(local_quiet_ns=LOCAL_QUIET_NS if _local_filesystem(self.root) else None)

    def close(self) -> None:
        if self._pool.started:
            self._pool.stop()

    def __repr__(self) -> str:
        return f"<FilesystemDriver {self.root}>"

    @property
    def entries_read(self) -> int:
        """Folder entries read from the file system so far by ``list_page`` and ``holds_files``."""
        return self.listings.entries_read

    # helpers

    def _path(self, path: str) -> str:
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid storage path {path!r}")
        return os.path.join(self.root, *parts)

    def _translate(self, exc: OSError) -> Exception:
        error = _translate(exc)
        if isinstance(error, StorageUnavailable):
            self.availability.failed(error)
        return error

    def _run(self, function, *args):
        def answered(result):
            self.availability.answered()
            return result

        def translate(failure):
            failure.trap(OSError)
            raise self._translate(failure.value)

        return deferToThreadPool(self._reactor, self._pool, function, *args).addCallbacks(answered, translate)

    def _call(self, function, path, *args):
        try:
            full = self._path(path)
        except ValueError:
            return fail()
        return self._run(function, full, *args)

    # IStorageDriver

    def read_bytes(self, path):
        def read(full):
            with open(full, "rb") as f:
                return f.read()

        if not self._inline_reads:
            return self._call(read, path)
        # Links, tags and manifests are tiny and almost always in the page
        # cache: reading them here costs microseconds, a trip through the
        # pool costs far more.  Anything larger goes to the pool.
        try:
            full = self._path(path)
            fd = os.open(full, os.O_RDONLY)
        except ValueError:
            return fail()
        except OSError as e:
            return fail(self._translate(e))
        try:
            size = os.fstat(fd).st_size
            if size <= INLINE_READ_LIMIT:
                data = os.read(fd, size + 1)
                self.availability.answered()
                return succeed(data)
        except OSError as e:
            return fail(self._translate(e))
        finally:
            os.close(fd)
        return self._call(read, path)

    def read_file(self, path):
        """`IReadFile`: the bytes and modification time of a small file, or None; read as ``read_bytes`` is."""

        def read(full, inline_limit=None):
            try:
                fd = os.open(full, os.O_RDONLY)
            except (FileNotFoundError, NotADirectoryError):
                return None
            try:
                st = os.fstat(fd)
                if stat_module.S_ISDIR(st.st_mode):
                    return None
                if inline_limit is not None and st.st_size > inline_limit:
                    return _TOO_LARGE
                chunks = []
                while chunk := os.read(fd, max(st.st_size + 1, 1 << 16)):
                    chunks.append(chunk)
                return FileContent(b"".join(chunks), st.st_mtime)
            finally:
                os.close(fd)

        if not self._inline_reads:
            return self._call(read, path)
        try:
            found = read(self._path(path), INLINE_READ_LIMIT)
        except ValueError:
            return fail()
        except OSError as e:
            return fail(self._translate(e))
        if found is _TOO_LARGE:
            return self._call(read, path)
        self.availability.answered()
        return succeed(found)

    def write_bytes(self, path, data, durable=True):
        return self._call(_atomic_write, path, bytes(data), durable)

    def create_bytes(self, path, data):
        def create(full):
            try:
                _atomic_write(full, bytes(data), replace=False)
            except FileExistsError:
                raise DestinationExists(path) from None

        return self._call(create, path)

    def stat(self, path):
        def stat(full):
            try:
                st = os.stat(full)
            except FileNotFoundError:
                return None
            except NotADirectoryError:
                return None
            return FileInfo(st.st_size, st.st_mtime, os.path.isdir(full))

        if not self._inline_reads:
            return self._call(stat, path)
        try:
            return succeed(stat(self._path(path)))
        except ValueError:
            return fail()
        except OSError as e:
            return fail(self._translate(e))

    def list(self, path):
        def listdir(full):
            try:
                names = os.listdir(full)
            except (FileNotFoundError, NotADirectoryError):
                return []
            return sorted(n for n in names if not n.startswith(TEMP_PREFIX))

        return self._call(listdir, path)

    def list_page(self, path, start_after=None, limit=None):
        listings = self.listings

        def page(names):
            start = 0 if start_after is None else bisect.bisect_right(names, start_after)
            return list(names[start:] if limit is None else names[start : start + limit])

        def read(full):
            return page(listings.names(full))

        try:
            full = self._path(path)
            names = listings.cached(full)
            if names is None:
                try:
                    small = os.stat(full).st_size <= INLINE_FOLDER_SIZE
                except (FileNotFoundError, NotADirectoryError):
                    return succeed([])
                if not small or not self._inline_reads:
                    return self._run(read, full)
                names = listings.names(full)
        except ValueError:
            return fail()
        except OSError as e:
            return fail(self._translate(e))
        self.availability.answered()
        return succeed(page(names))

    def holds_files(self, path):
        listings = self.listings

        def search(full):
            return listings.holds_files(full, None)

        try:
            full = self._path(path)
            found = listings.holds_files(full, INLINE_SEARCH_ENTRIES if self._inline_reads else 0)
        except ValueError:
            return fail()
        except OSError as e:
            return fail(self._translate(e))
        if found is None:
            return self._run(search, full)
        self.availability.answered()
        return succeed(found)

    def peek_folder(self, path, limit, markers):
        listings = self.listings

        def peek(full, budget):
            # budget: entries a search may look at before it gives up (None:
            # no end); with one, a large folder is not read either (None).
            names = listings.cached(full)
            if names is None:
                try:
                    st = os.stat(full)
                except (FileNotFoundError, NotADirectoryError):
                    return [], None
                if budget is not None and st.st_size > INLINE_FOLDER_SIZE:
                    return None
                names = listings.names(full, st)
            for marker in markers:
                i = bisect.bisect_left(names, marker)
                if i < len(names) and names[i] == marker:
                    found = listings.holds_files(os.path.join(full, marker), budget)
                    if found is None:
                        return None
                    if found:
                        return list(names[:limit]), marker
            return list(names[:limit]), None

        try:
            full = self._path(path)
            answer = peek(full, INLINE_SEARCH_ENTRIES) if self._inline_reads else None
        except ValueError:
            return fail()
        except OSError as e:
            return fail(self._translate(e))
        if answer is None:
            return self._run(peek, full, None)
        self.availability.answered()
        return succeed(answer)

    def walk(self, path):
        def walk(full):
            # scandir and string slicing rather than os.walk and relpath: garbage
            # collection walks the whole store, in a thread that shares the GIL
            # with the reactor, so the fewer Python steps per entry the better.
            found = []
            skip = len(full) + 1
            folders = [full]
            while folders:
                try:
                    entries = os.scandir(folders.pop())
                except (FileNotFoundError, NotADirectoryError):
                    continue
                with entries:
                    for entry in entries:
                        if entry.name.startswith(TEMP_PREFIX):
                            continue
                        if entry.is_dir(follow_symlinks=False):
                            folders.append(entry.path)
                        else:
                            found.append(entry.path[skip:])
            found.sort()
            return found

        return self._call(walk, path)

    def walk_page(self, path, cursor=None, limit=1000):
        """
        Folder by folder, each in name order: the cursor is the last path
        given, and the next page descends to it again, one sorted folder
        listing per level.
        """
        limit = max(1, limit)

        def page(full):
            found: list[str] = []

            def visit(folder: str, prefix: str, after: list[str] | None) -> bool:
                # False once the page is full.
                try:
                    with os.scandir(folder) as it:
                        entries = sorted(
                            (e.name, e.is_dir(follow_symlinks=False)) for e in it if not e.name.startswith(TEMP_PREFIX)
                        )
                except (FileNotFoundError, NotADirectoryError):
                    return True
                start = 0 if not after else bisect.bisect_left(entries, (after[0],))
                for name, is_dir in entries[start:]:
                    below = after[1:] if after and name == after[0] else None
                    if is_dir:
                        if not visit(os.path.join(folder, name), f"{prefix}{name}/", below or None):
                            return False
                    elif below is None:
                        found.append(prefix + name)
                        if len(found) >= limit:
                            return False
                return True

            done = visit(full, "", cursor.split("/") if cursor else None)
            return found, (None if done else found[-1])

        return self._call(page, path)

    def delete_files(self, paths):
        root = self.root

        def remove(fulls):
            for full in fulls:
                _unlink_pruning(full, root, (FileNotFoundError, IsADirectoryError, NotADirectoryError))

        try:
            fulls = [self._path(path) for path in paths]
        except ValueError:
            return fail()
        return self._run(remove, fulls)

    def delete(self, path):
        root = self.root

        def remove(full):
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full, ignore_errors=True)
                return
            _unlink_pruning(full, root, (FileNotFoundError,))

        return self._call(remove, path)

    def move(self, source, destination, size=None, replace=True):
        try:
            src, dst = self._path(source), self._path(destination)
        except ValueError:
            return fail()

        def move():
            with open(src, "rb") as f:
                if size is not None:
                    # Writers (of this or another process) hold a shared lock on
                    # the file while they append: with the exclusive one, nobody
                    # can add bytes between the size check and the rename, nor
                    # afterwards through a descriptor opened before it.
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise SourceChanged(f"{source} is being written to") from None
                    if os.fstat(f.fileno()).st_size != size:
                        raise SourceChanged(f"{source} no longer holds {size} bytes")
                # The bytes reach the disk before the name does: after a power
                # cut the destination holds all of them or is not there.
                os.fsync(f.fileno())

                def rename():
                    if replace:
                        os.replace(src, dst)
                        return
                    try:
                        _rename_noreplace(src, dst)
                    except FileExistsError:
                        raise DestinationExists(destination) from None

                _in_folder(dst, rename, source=src)
            _fsync_dir(os.path.dirname(dst))

        return self._run(move)

    def open_writer(self, path, append=False, hasher=None):
        def open_(full):
            os.makedirs(os.path.dirname(full), exist_ok=True)
            for _ in range(10):
                f = open(full, "ab" if append else "wb")
                # Shared with other writers, excluded by a `move` with a size
                # (which waits for nobody: it refuses while a writer holds it).
                fcntl.flock(f, fcntl.LOCK_SH)
                try:
                    if os.stat(full).st_ino == os.fstat(f.fileno()).st_ino:
                        return _Writer(self, full, f, f.tell(), hasher)
                except FileNotFoundError:
                    pass
                f.close()  # moved away before the lock was ours: open what is at the path now
            raise OSError(errno.EAGAIN, f"{full} keeps being replaced")

        return self._call(open_, path)

    def open_reader(self, path, offset=0):
        def open_(full):
            f = open(full, "rb")
            size = os.fstat(f.fileno()).st_size
            f.seek(offset)
            return _Reader(self, f, size)

        return self._call(open_, path)

    def hash_file(self, path, hasher, limit=None):
        def hash_(full):
            remaining = limit
            with open(full, "rb") as f:
                while remaining is None or remaining > 0:
                    block = f.read(BLOCK if remaining is None else min(BLOCK, remaining))
                    if not block:
                        break
                    hasher.update(block)
                    if remaining is not None:
                        remaining -= len(block)
            return hasher

        return self._call(hash_, path)

    def redirect_url(self, path):
        return succeed(None)

    def check(self):
        """Create the root if need be (as this process's user) and check that it can read and write there."""
        try:
            os.makedirs(self.root, exist_ok=True)
            names = os.listdir(self.root)
            probe = os.path.join(self.root, f"{TEMP_PREFIX}check-{uuid.uuid4().hex}")
            with open(probe, "wb"):
                pass
            os.unlink(probe)
            # The folders below, as an earlier run (as another user) may have left them.
            for name in names:
                full = os.path.join(self.root, name)
                if os.path.isdir(full) and not os.access(full, os.R_OK | os.W_OK | os.X_OK):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), full)
        except OSError as e:
            where = f": {e.filename}" if e.filename and e.filename != self.root else ""
            cause = f"cannot use data directory {self.root} as {_user()}: {e.strerror or e}{where}"
            return fail(StorageUnavailable(cause, misconfigured=True))
        return succeed(None)


class _Listings:
    """
    Reads folders for ``list_page`` and ``holds_files``, counting the entries
    read, and keeps the sorted listing of a large folder while its
    modification time says it is unchanged: a page of a folder of 100,000
    repositories or tags then costs one ``stat`` and a bisection, not a read
    of 100,000 entries.  Every process checks for itself, so a change made
    by another process (or machine, on shared storage) is seen at the next
    page.  A folder that changed within `QUIET_NS` of being read is read
    again each time until it has been quiet that long: a change in the same
    timestamp tick as the read might not move its mtime.  ``local_quiet_ns``
    (on a local file system): the shorter wait for a folder whose mtime has
    a sub-second part, so that a page soon after a push is a bisection too.
    Used from the reactor thread and the pool at once, hence the lock.
    """

    def __init__(
        self,
        min_names: int = CACHED_LISTING_MIN,
        max_names: int = CACHED_NAMES_MAX,
        quiet_ns: int = QUIET_NS,
        local_quiet_ns: int | None = None,
    ):
        self.min_names = min_names
        self.max_names = max_names
        self.quiet_ns = quiet_ns
        self.local_quiet_ns = local_quiet_ns
        self.entries_read = 0
        self._kept: collections.OrderedDict[str, tuple] = collections.OrderedDict()
        self._kept_names = 0
        self._lock = threading.Lock()

    def cached(self, full: str):
        """The kept sorted names of folder ``full`` if it is unchanged since, else None (one ``stat``)."""
        with self._lock:
            kept = self._kept.get(full)
        if kept is None:
            return None
        try:
            st = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            self._forget(full)
            return None
        if (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns) != kept[0]:
            self._forget(full)
            return None
        with self._lock:
            if full in self._kept:
                self._kept.move_to_end(full)
        return kept[1]

    def names(self, full: str, st=None):
        """
        The sorted names in folder ``full`` (temporary files left out; none
        if it is missing), read now; ``st``: its ``stat``, if just taken.
        """
        started = time.time_ns()
        try:
            if st is None:
                st = os.stat(full)
            with os.scandir(full) as entries:
                names = [entry.name for entry in entries]
        except (FileNotFoundError, NotADirectoryError):
            return []
        self._count(len(names))
        names = sorted(n for n in names if not n.startswith(TEMP_PREFIX))
        # st was taken before the read: a change during it moves the mtime past what is kept.
        quiet = self.quiet_ns
        if self.local_quiet_ns is not None and st.st_mtime_ns % 1_000_000_000:
            quiet = self.local_quiet_ns
        if len(names) >= self.min_names and st.st_mtime_ns < started - quiet:
            self._keep(full, (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns), tuple(names))
        return names

    def holds_files(self, full: str, budget: int | None):
        """
        Whether a file is anywhere below folder ``full``, depth first,
        stopping at the first; None once ``budget`` entries were looked at
        without an answer (the caller carries on in the pool).
        """
        stack = []
        seen = 0
        try:
            try:
                stack.append(os.scandir(full))
            except (FileNotFoundError, NotADirectoryError):
                return False
            while stack:
                entry = next(stack[-1], None)
                if entry is None:
                    stack.pop().close()
                    continue
                seen += 1
                if entry.name.startswith(TEMP_PREFIX):
                    continue
                if not entry.is_dir(follow_symlinks=False):
                    return True
                if budget is not None and seen >= budget:
                    return None
                try:
                    stack.append(os.scandir(entry.path))
                except (FileNotFoundError, NotADirectoryError):
                    continue  # removed meanwhile
            return False
        finally:
            self._count(seen)
            for entries in stack:
                entries.close()

    def _count(self, entries: int) -> None:
        with self._lock:
            self.entries_read += entries

    def _keep(self, full: str, key: tuple, names: tuple) -> None:
        if len(names) > self.max_names:
            return
        with self._lock:
            old = self._kept.pop(full, None)
            if old is not None:
                self._kept_names -= len(old[1])
            self._kept[full] = (key, names)
            self._kept_names += len(names)
            while self._kept_names > self.max_names:
                _, (_, dropped) = self._kept.popitem(last=False)
                self._kept_names -= len(dropped)

    def _forget(self, full: str) -> None:
        with self._lock:
            old = self._kept.pop(full, None)
            if old is not None:
                self._kept_names -= len(old[1])


def _local_filesystem(path: str) -> bool:
    """Whether ``path`` is on a file system of `LOCAL_FILESYSTEMS` (by /proc/self/mountinfo; if unreadable, no)."""
    path = os.path.realpath(path)
    found, kind = "", None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                # ID, parent ID, major:minor, root, mount point, options, optional fields..., "-", type, source, options
                fields = line.split()
                if "-" not in fields[6:]:
                    continue
                point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
                inside = path == point or path.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(found):
                    found, kind = point, fields[fields.index("-", 6) + 1]
    except (OSError, IndexError):
        return False
    return kind in LOCAL_FILESYSTEMS


def _atomic_write(full: str, data: bytes, durable: bool = True, replace: bool = True) -> None:
    """Write ``data`` at ``full`` by a rename; ``replace=False``: only if nothing is there (`FileExistsError`)."""
    directory = os.path.dirname(full)
    temp = os.path.join(directory, TEMP_PREFIX + uuid.uuid4().hex)

    def write():
        try:
            with open(temp, "wb") as f:
                f.write(data)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            if replace:
                os.replace(temp, full)
            else:
                _rename_noreplace(temp, full)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise

    _in_folder(full, write, durable=durable)
    if durable:
        _fsync_dir(directory)


@implementer(IWriter)
class _Writer:
    """Buffers chunks into blocks; one pool job in flight at a time keeps order."""

    version = None  # appends only grow a file: the size tells one writer's from another's

    def __init__(self, driver: FilesystemDriver, full: str, f, size: int, hasher):
        self._driver = driver
        self._full = full
        self._file = f
        self._hasher = hasher
        self.size = size
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._in_flight = 0
        self._error: BaseException | None = None
        self._ready: list[Deferred] = []  # writers waiting for room
        self._idle: list[Deferred] = []  # finishers waiting for no job in flight
        self._closed = False

    def _job(self, blocks):
        f, hasher = self._file, self._hasher
        for block in blocks:
            f.write(block)
            if hasher is not None:
                hasher.update(block)

    def _pump(self) -> None:
        if self._in_flight or not self._pending or self._error is not None:
            return
        blocks, self._pending = self._pending, []
        self._in_flight, self._pending_bytes = self._pending_bytes, 0

        def done(_):
            self._in_flight = 0
            if self._pending_bytes >= BLOCK:
                self._pump()
            self._wake()

        def failed(failure):
            self._in_flight = 0
            self._error = failure.value
            self._wake()

        self._driver._run(self._job, blocks).addCallbacks(done, failed)

    def _wake(self) -> None:
        ready = self._error is not None or self._pending_bytes + self._in_flight < HIGH_WATER
        fire = []
        if ready:
            fire, self._ready = self._ready, []
        if not self._in_flight:
            fire, self._idle = fire + self._idle, []
        for waiter in fire:
            if self._error is None:
                waiter.callback(None)
            else:
                waiter.errback(self._error)

    def write(self, data):
        if self._error is not None:
            return fail(self._error)
        if self._closed:
            return fail(ValueError("writer is closed"))
        if not data:
            return succeed(None)
        self._pending.append(bytes(data))
        self._pending_bytes += len(data)
        self.size += len(data)
        if self._pending_bytes >= BLOCK:
            self._pump()
        if self._pending_bytes + self._in_flight < HIGH_WATER:
            return succeed(None)
        waiter = Deferred()
        self._ready.append(waiter)
        return waiter

    async def _settle(self) -> None:
        """Wait until every buffered byte is in the file, or a write has failed."""
        while self._error is None and (self._pending or self._in_flight):
            self._pump()
            waiter: Deferred[None] = Deferred()
            self._idle.append(waiter)
            await waiter

    async def _drain(self) -> None:
        """Wait until every buffered byte is in the file; raise the error of a write that failed."""
        await self._settle()
        if self._error is not None:
            raise self._error

    def _finish(self, durable: bool) -> Deferred:
        async def finish():
            try:
                await self._drain()
            finally:
                self._closed = True

            def close():
                try:
                    if durable:
                        self._file.flush()
                        os.fsync(self._file.fileno())
                finally:
                    self._file.close()

            await self._driver._run(close)

        async def guarded():
            try:
                await finish()
            except BaseException:
                try:
                    self._file.close()
                except OSError:
                    pass  # flushing what is left fails the same way; the first error is the one to report
                raise

        return Deferred.fromCoroutine(guarded())

    def commit(self):
        return self._finish(durable=True)

    def close(self):
        return self._finish(durable=False)

    def cancel(self):
        self._pending.clear()
        self._pending_bytes = 0

        async def cancel():
            await self._settle()  # a failed write does not matter to a file that is removed
            self._closed = True

            def remove():
                try:
                    self._file.close()
                except OSError:
                    pass
                try:
                    os.unlink(self._full)
                except FileNotFoundError:
                    pass

            await self._driver._run(remove)

        return Deferred.fromCoroutine(cancel())


@implementer(ISendfileReader)
class _Reader:
    def __init__(self, driver: FilesystemDriver, f, size: int):
        self._driver = driver
        self._file = f
        self.size = size

    def read(self, amount):
        return self._driver._run(self._file.read, amount)

    def sendfile_source(self) -> tuple[int, int]:
        """The open file and position, for ``os.sendfile`` straight to a socket."""
        return self._file.fileno(), self._file.tell()

    def close(self):
        self._file.close()
        return succeed(None)


def _parse(section) -> None:
    if section:
        raise ValueError("storage: filesystem takes no options (use data_dir)")
    return None


# The default driver: no section of its own (its settings are None), the files under ``data_dir``.
DRIVER = DriverFactory(
    name="filesystem",
    settings_type=None,
    parse=_parse,
    describe=lambda settings, data_dir: data_dir,
    build=lambda settings, data_dir, reactor: FilesystemDriver(data_dir, reactor=reactor),
)
