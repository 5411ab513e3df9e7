"""
The storage driver interface.

A driver stores opaque files under slash-separated paths (like CNCF
Distribution's storage driver).  The registry decides what the paths mean
(`oci_registry.paths`); a driver only has to keep these promises, which
``tests/storage_suite.py`` checks for every driver:

- every method returns a Deferred and never blocks the reactor;
- ``write_bytes`` and ``move`` are atomic: a reader sees the old content or
  the new, never a mix, and a crash leaves no partial file under the target
  path;
- a committed writer's bytes are durable (on the file system: fsynced), and
  so is whatever ``write_bytes`` and ``move`` put at a path once they fired;
- missing paths raise `PathNotFound` from the reading methods, and are not
  an error for ``delete`` or ``list``;
- a storage that cannot be used (unreachable, failing, refusing the
  registry's credentials, its bucket missing) raises `StorageUnavailable`
  from any method, never `PathNotFound`: nothing is known about the path.

Beyond `IStorageDriver`, a driver (or its readers) may provide optional
capabilities, each an interface of its own that callers check with
``providedBy``: `ISendfileReader` (bytes straight from a file to a socket),
`IClosableDriver` (release threads and connections before the reactor
stops), `IExclusiveCreate` (create a small file only where none is),
`IWalkPages` (a walk page by page, for stores too large to list at once),
`IBatchDelete` (delete many files in few requests), `IStatFile` (a stat
that looks for a file only, in one request), `IReadFile` (a small file's
content and age, or None, in one request).  A
driver is found by the name of its configuration section through the
`IStorageDriverFactory` its module declares (`oci_registry.storage.drivers`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attr
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface, implementer


class PathNotFound(Exception):
    """The path does not exist in storage."""


class StorageFull(Exception):
    """The storage has no room left for a write."""


class StorageUnavailable(Exception):
    """
    The storage cannot serve this operation now, so nothing is known about
    the path: the HTTP API answers 503 UNAVAILABLE.  ``misconfigured``: the
    storage answers but refuses this configuration (a missing bucket,
    credentials it does not accept), which will not pass by itself; else it
    is an outage (unreachable, timing out, failing), which may.
    """

    def __init__(self, cause: str, misconfigured: bool = False):
        super().__init__(cause)
        self.cause = cause
        self.misconfigured = misconfigured


@attr.s(auto_attribs=True, frozen=True, slots=True)
class FileInfo:
    """What `IStorageDriver.stat` tells about a path."""

    size: int
    mtime: float
    is_dir: bool
    # Names the file's content as last written (S3: the object's ETag), or
    # None where the storage keeps none: see ``IWriter.version``.
    version: str | None = None


@attr.s(auto_attribs=True, frozen=True, slots=True)
class FileContent:
    """What `IReadFile.read_file` gives: a small file's bytes, and when it was last written."""

    data: bytes
    mtime: float


class SourceChanged(Exception):
    """A `move` with a ``size`` found the source of another size, or being written to."""


class DestinationExists(Exception):
    """A `move` with ``replace=False`` found something at the destination, and moved nothing."""


class IWriter(Interface):
    """An append-only writer for one file, obtained from ``open_writer``."""

    size = Attribute("Bytes in the file so far, including ones not yet flushed.")
    version = Attribute(
        "After close(): the version stat() reports while nobody else has written the file since (S3: the ETag "
        "of what close() stored), so a process can tell its own write from another's of the same size; None "
        "where the storage keeps no versions (appends to a local file only grow it, and the size tells)."
    )

    def write(data):
        """
        Append ``data``.  The returned Deferred fires when the writer is ready
        for more (back-pressure): callers wait for it before writing again.
        If the writer was given a hasher, each byte is fed to it once, in
        order.
        """

    def commit():
        """Flush and make the bytes durable.  The writer is closed after."""

    def cancel():
        """Close the writer and delete the file."""

    def close():
        """Flush and close without the durability promise of ``commit``."""


class IReader(Interface):
    """A sequential reader for one file, obtained from ``open_reader``."""

    size = Attribute("The file's total size in bytes.")

    def read(amount):
        """Fire with up to ``amount`` bytes; ``b""`` at the end."""

    def close():
        """Release the reader."""


class IStorageDriver(Interface):
    min_chunk_length = Attribute(
        "The smallest upload chunk the driver stores without re-buffering (bytes), or None for any size: "
        "sent to clients as OCI-Chunk-Min-Length."
    )
    move_is_copy = Attribute(
        "True where ``move`` copies the bytes (S3: a server-side copy, as long as the file), False where it "
        "only renames (a file system).  Publishing always moves a verified upload over an existing blob where "
        "that is cheap, which also repairs a damaged one; where it copies, only over one of another size."
    )

    def read_bytes(path):
        """Fire with the whole content of a small file."""

    def write_bytes(path, data, durable=True):
        """
        Atomically create or replace a small file.  ``durable=False``: the
        write may be lost in a power cut (never torn), for bookkeeping whose
        loss only ends something not yet promised, such as an upload session's
        start; the filesystem then skips its fsyncs.
        """

    def stat(path):
        """Fire with a `FileInfo`, or None when nothing is at the path."""

    def list(path):
        """Fire with the sorted names of the path's direct children."""

    def list_page(path, start_after=None, limit=None):
        """
        Fire with a page of ``list``: the sorted names of the path's direct
        children that sort after ``start_after`` (from the first, if None),
        at most ``limit`` of them (all, if None).  Sorted means by code point
        (ASCII byte order), whatever order the storage itself lists in.  What
        it reads grows with the page, not with the folder, as far as the
        storage allows (S3: ``start-after`` and ``max-keys``; a file system
        reads a folder whole, so large folders are read once and kept).  Like
        ``list``, it may name a folder that holds no file (a file system keeps
        an emptied folder, some S3 servers keep reporting emptied prefixes):
        callers that need a file there ask ``holds_files``.
        """

    def holds_files(path):
        """Fire with whether at least one file is below the folder ``path`` (at any depth)."""

    def walk(path):
        """Fire with the sorted paths of every file below ``path``, relative to it."""

    def delete(path):
        """Delete a file or a whole folder, if it exists.  A folder left empty is gone too."""

    def move(source, destination, size=None, replace=True):
        """
        Atomically move a file to a path, replacing what was there.  With
        ``size``, only while the source holds exactly that many bytes and
        no writer is appending to it, so that what lands at the destination
        is what the caller verified (else `SourceChanged`, and nothing moves).
        With ``replace=False``, only if nothing is at the destination (else
        `DestinationExists`, and nothing moves); where the storage cannot
        check and move in one step (S3), a file written to the destination
        between the two may be replaced.
        """

    def open_writer(path, append=False, hasher=None):
        """
        Fire with an `IWriter` for ``path``: a new empty file, or with
        ``append`` the existing file's end.  ``hasher`` (a hashlib object),
        when given, is fed every byte written from here on.
        """

    def open_reader(path, offset=0):
        """Fire with an `IReader` positioned at ``offset``."""

    def hash_file(path, hasher, limit=None):
        """Feed the file's first ``limit`` bytes (all, if None) to ``hasher``."""

    def redirect_url(path):
        """Fire with a URL clients may fetch the file from directly, or None."""

    def check():
        """
        Fire when this process can use the storage (creating what must exist,
        such as the filesystem's root directory); fail with
        `StorageUnavailable` (with ``misconfigured`` when it will not pass by
        itself) when it cannot.  The daemon calls it once at start-up, after
        dropping privileges.
        """


# ------------------------------------------------------------ optional capabilities


class ISendfileReader(IReader):
    """
    A reader over a local open file, which the HTTP layer may hand to
    ``os.sendfile`` so that a download's bytes go from the page cache to
    the socket without passing through Python.
    """

    def sendfile_source():
        """``(fd, offset)``: the open file's descriptor and the reader's position in it."""


class IClosableDriver(Interface):
    """
    A driver holding threads or connections that it can release at once;
    a driver that is not closed releases them when the reactor stops.  A
    short-lived command (``ociregistry gc``) closes its driver when done.
    """

    def close():
        """Release them; may return a Deferred that fires once they are (or None)."""


class IExclusiveCreate(Interface):
    """
    A driver that can create a small file only if nothing is at its path,
    in one atomic step that every process and machine on the storage
    agrees on (a rename that refuses to replace, on a file system; a
    conditional put, ``If-None-Match: *``, on S3).  Processes use it to
    claim work no other should do at the same time (one upstream fetch of a
    blob: `oci_registry.proxy.claim`).
    """

    def create_bytes(path, data):
        """
        Atomically create ``path`` holding ``data``, durably; fail with
        `DestinationExists` when something is there already (and change
        nothing).  A storage that does not check the condition would replace
        the file: callers read it back to see whose it is.
        """


class IWalkPages(Interface):
    """
    A driver that can walk a folder a page at a time, so that a caller
    going through a whole store (garbage collection) holds one page of
    paths, not all of them, and on S3 starts working after the first
    listing request rather than the last.
    """

    def walk_page(path, cursor=None, limit=1000):
        """
        Fire with ``(paths, cursor)``: at most ``limit`` paths of files
        below ``path`` (relative to it, like ``walk``), and the cursor that
        continues after them, or None when the walk is done.  ``cursor`` is
        None for the first page, then what the previous page gave.  Paths
        come in an order of the driver's own, the same from page to page,
        in which the paths below any one folder are next to each other (S3:
        key order; a file system: name by name, folder by folder); files
        created or deleted while the walk goes on may or may not be seen.
        """


class IWalkAfter(Interface):
    """
    A driver that lists the files below a folder in the byte order of their
    paths, from any point, in one request for a page (S3: ListObjectsV2
    without a delimiter, with ``start-after``), where a folder-by-folder
    walk costs a request per folder.  The catalog and a repository's tags
    are read through it (see `oci_registry.listing`).
    """

    def walk_after(path, start_after=None, limit=1000):
        """
        Fire with at most ``limit`` paths of files below ``path`` (relative
        to it, like ``walk``) that come after ``start_after`` (None: from
        the start), fewer only when no more follow.  The order is the
        store's: byte order of the whole path (S3), or name by name, folder
        by folder (SeaweedFS); the same for every call, so that the last
        path of one page, given as ``start_after``, continues with the next.
        """


class IFolderPeek(Interface):
    """
    A driver that answers ``list_page`` and ``holds_files`` of the same
    folder in one call, at once where it can (a file system: a few
    syscalls on the reactor thread, where two calls cost more in Deferreds
    than in reading).  The catalog's walk examines each repository folder
    through it (see `oci_registry.listing`).
    """

    def peek_folder(path, limit, markers):
        """
        Fire with ``(names, holding)``: ``list_page(path, None, limit)``, and
        the first of ``markers`` (names of child folders, in the order
        given) below which ``holds_files`` finds a file, or None if none
        does (or ``markers`` is empty).  A marker is looked at only if the
        folder has a child of that name.
        """


class IBatchDelete(Interface):
    """
    A driver that can delete many files in one request (S3: DeleteObjects,
    up to 1,000 keys each).  Garbage collection sends its deletions of
    files it knows are files through it.
    """

    def delete_files(paths):
        """
        Delete each of these files that exists, in as few requests as the
        storage allows; missing paths are not an error.  Each is deleted as
        ``delete`` deletes a file (a folder it leaves empty goes too, where
        the storage has folders); a path that names a folder is left alone.
        """


class IStatFile(Interface):
    """
    A driver whose ``stat`` of a missing path costs more than a look for a
    file (S3: a HEAD, then a listing to tell an empty "folder" from
    nothing), and that can look for a file alone.  The registry asks it
    for paths it knows are files (links, blob data, upload sessions), so
    that a push or a pull never lists.
    """

    def stat_file(path):
        """Fire with the file's `FileInfo`, or None when no file is at the path (a folder there is None too)."""


class IReadFile(Interface):
    """
    A driver that reads a small file together with its age in one request
    (S3: one GET, whose answer also tells a missing bucket from a missing
    key), and says None rather than fail when nothing is there.  The
    registry reads its links through it, so that what a HEAD then a GET
    asked costs one request.
    """

    def read_file(path):
        """Fire with the file's `FileContent`, or None when no file is at the path (a folder there is None too)."""


class IEmptyCopy(Interface):
    """
    A driver that can write an empty file where another file is empty, in
    one request that looks at that file too (S3: a CopyObject of the
    source's empty version only, ``x-amz-copy-source-if-match``).  The
    registry lists a repository with it when a blob is sent whole in the
    request that finishes an upload: the session's data, empty since it
    started, copied to the repository's catalog entry, says that the
    session is there and holds no byte yet, where a look at the session and
    a write of the entry would be two requests.
    """

    def copy_empty(source, destination):
        """
        Fire with True once an empty file is at ``destination``, written
        because ``source`` was an empty file; with False when ``source`` is
        missing or holds bytes, or the storage cannot tell (nothing was
        written: look for yourself).
        """


#: The optional calls a driver may offer beside `IStorageDriver`, an interface each.
DRIVER_EXTENSIONS = (
    IExclusiveCreate,
    IWalkPages,
    IWalkAfter,
    IBatchDelete,
    IStatFile,
    IFolderPeek,
    IReadFile,
    IEmptyCopy,
)


def stat_file(storage, path: str):
    """The file's `FileInfo` or None (a Deferred), through `IStatFile` where the driver has it."""
    if IStatFile.providedBy(storage):
        return storage.stat_file(path)
    return storage.stat(path)


async def _read_then_stat(storage, path: str) -> FileContent | None:
    try:
        data = await storage.read_bytes(path)
    except PathNotFound:
        return None
    info = await storage.stat(path)
    return None if info is None or info.is_dir else FileContent(data, info.mtime)


def read_file(storage, path: str):
    """The small file's `FileContent` or None (a Deferred), through `IReadFile` where the driver has it."""
    if IReadFile.providedBy(storage):
        return storage.read_file(path)
    return Deferred.fromCoroutine(_read_then_stat(storage, path))


# ------------------------------------------------------------ drivers by name


class IStorageDriverFactory(Interface):
    """
    What a storage driver's module declares, as its module-level ``DRIVER``,
    so that the driver can be chosen by name in the configuration
    (``storage: {NAME: {...}}``) and built by the composition root, like
    CNCF Distribution's driver factories.  ``settings`` values are the
    driver's own immutable configuration; None stands for the default
    driver's (the filesystem under ``data_dir``).
    """

    name = Attribute("The key under ``storage:`` that chooses this driver, e.g. ``s3``.")

    def parse(section):
        """The driver's settings from its configuration section (a mapping); ValueError says what is wrong."""

    def sources(section, environ, options):
        """
        The driver's section once environment variables (``environ``) and
        command-line ``options`` are applied over the file's ``section``
        (None when the file has none): None when neither the file nor those
        choose this driver.
        """

    def owns(settings):
        """Whether ``settings`` (a parsed value) are this driver's."""

    def section(settings):
        """``settings`` back as a configuration section: `parse` gives them again (worker processes get it)."""

    def describe(settings, data_dir):
        """Where the data is, for the logs, never a secret."""

    def build(settings, data_dir, reactor):
        """A new `IStorageDriver` for ``settings``."""


def _no_sources(section, environ, options):
    return None


@implementer(IStorageDriverFactory)
@attr.s(auto_attribs=True, frozen=True, kw_only=True)
class DriverFactory:
    """
    An `IStorageDriverFactory` from its parts, for a driver module to
    declare as ``DRIVER``.  ``settings_type`` is the class of the driver's
    settings (None for the default driver, whose settings are None);
    ``sources`` defaults to taking nothing from the environment.
    """

    name: str
    settings_type: type | None
    parse: Callable[[Mapping], Any]
    build: Callable[[Any, str, Any], Any]
    describe: Callable[[Any, str], str]
    sources: Callable[[Mapping | None, Mapping, Mapping], Mapping | None] = _no_sources

    def owns(self, settings) -> bool:
        if self.settings_type is None:
            return settings is None
        return isinstance(settings, self.settings_type)

    def section(self, settings) -> dict:
        return {} if settings is None else attr.asdict(settings)
