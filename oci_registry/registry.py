"""
The registry's domain: push, pull, mount, tag, delete, list and referrers,
independent of HTTP.  It keeps nothing a later request needs in memory: every
fact is in storage (see `oci_registry.paths`), so several processes on the
same storage serve one registry.  The one thing held in memory is an
optimisation: the running hash of an upload this process is receiving, so
that finishing it does not re-read the data.  When another process (or a
restart) continues the upload, the partial data is hashed again from storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from typing import Any, Protocol

import attr
from twisted.internet.defer import Deferred, DeferredLock, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from . import links, listing, paths
from . import manifest as manifests
from .catalog import Catalog
from .content_cache import ContentCache, no_cache
from .cpu import CPUPool
from .errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    InsufficientStorage,
    ManifestBlobUnknown,
    ManifestUnknown,
    NameUnknown,
    SizeInvalid,
    TooLarge,
    UploadRangeInvalid,
)
from .gc import DAY, Keeper
from .identity import Caller
from .interfaces import ILocalRegistry
from .listing import Page
from .reference import DEFAULT_ALGORITHM, Digest, Name, Tag, is_upload_id
from .storage.interfaces import (
    IBatchDelete,
    IStorageDriver,
    PathNotFound,
    SourceChanged,
    StorageFull,
    read_file,
    stat_file,
)

log = Logger()

INLINE_PARSE_LIMIT = 64 << 10  # manifests up to this size are parsed on the reactor thread
CHECKS_PER_TURN = 200  # a manifest's blob checks before other connections get a turn
# A blob sent whole in one request up to this size is verified in memory and
# stored at its digest at once, without going through an upload's data file.
SMALL_BLOB = 64 << 10


class Body(Protocol):
    """A request body on its way in; see `oci_registry.api.body`."""

    def deliver(self, writer):
        """Write every chunk into ``writer`` honouring its back-pressure; fire with the byte count."""


@attr.s(auto_attribs=True, frozen=True, slots=True)
class UploadStatus:
    name: Name
    id: str
    offset: int  # bytes received so far

    @property
    def range(self) -> str:
        """The ``Range`` header value: the inclusive range received so far."""
        return f"0-{max(self.offset - 1, 0)}"


@attr.s(auto_attribs=True, frozen=True, slots=True)
class StoredManifest:
    digest: Digest
    media_type: str
    size: int
    data: bytes | None  # None for a HEAD, which never reads the bytes


@attr.s(auto_attribs=True, frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int


@attr.s(auto_attribs=True, frozen=True, slots=True)
class VerifiedManifest:
    """
    Manifest bytes that `Registry.verify_manifest` checked: no larger than
    the limit, valid, and ``digest`` computed from them.  The only thing
    `Registry.store_manifest` stores, so nothing lands under a digest that
    is not its bytes'.
    """

    digest: Digest
    data: bytes
    parsed: manifests.Manifest

    @property
    def media_type(self) -> str:
        return self.parsed.media_type


@attr.s(auto_attribs=True, frozen=True, slots=True)
class PushedManifest:
    digest: Digest
    subject: Digest | None
    media_type: str
    size: int
    tags: tuple[Tag, ...] = ()  # every tag now pointing at it: the reference's, then ``?tag=``'s
    references: tuple[manifests.Descriptor, ...] = ()  # the blobs and child manifests it references


class _LiveUpload:
    """
    A running hash of an upload's first ``offset`` bytes, in this process
    only: trusted while the stored data is still what this process wrote
    (its size and its storage ``version``), re-hashed from storage otherwise.
    """

    def __init__(self, hasher, offset: int):
        self.hasher = hasher
        self.offset = offset
        self.version: str | None = None
        self.lock = DeferredLock()

    def matches(self, info) -> bool:
        """Whether the stored data (a `FileInfo`) is the one this process hashed."""
        return info is not None and self.offset == info.size and self.version == info.version


@contextlib.contextmanager
def _listing(name: Name):
    """Around a write of ``name``'s catalog entry: a full storage is the client's 507, with a log line."""
    try:
        yield
    except StorageFull:
        log.error("storage is full: could not list {name} in the catalog", name=str(name))
        raise InsufficientStorage() from None


def _digest_and_parse(data: bytes, algorithm: str, content_type: str | None):
    """The manifest's digest, and the manifest parsed and validated (`ManifestInvalid` if not)."""
    parsed = manifests.parse(data, content_type)
    return Digest.of(data, algorithm), parsed


@implementer(ILocalRegistry)
class Registry:
    """
    The `IRegistry` over an `IStorageDriver`.  ``caller`` arguments are
    accepted and ignored: the HTTP API authorized the request already, and
    what reports who did what wraps this (`oci_registry.observe`).
    """

    def __init__(
        self,
        storage: IStorageDriver,
        max_manifest_size: int = manifests.MAX_MANIFEST_SIZE,
        max_upload_size: int = 0,
        reactor=None,
        gc_grace: float = DAY,
        cache: ContentCache | None = None,
    ):
        self.storage = storage
        # What this process read or wrote of the content, so that pulls ask the storage less.
        self.cache = cache if cache is not None else no_cache()
        self.max_manifest_size = max_manifest_size
        self.max_upload_size = max_upload_size  # 0: no limit
        self._cpu = CPUPool(reactor)  # large manifests are parsed there
        self._live: dict[str, _LiveUpload] = {}
        # Requests that rely on a stored blob keep it from a garbage collection running meanwhile.
        self.keeper = Keeper(storage, gc_grace)
        # On S3, one entry per repository, which a catalog page lists (see oci_registry.catalog).
        self._catalog = Catalog(storage, self._cpu.yield_now, reactor)

    @property
    def min_chunk_length(self) -> int | None:
        """The chunk size below which uploads cost the storage more (``OCI-Chunk-Min-Length``), or None."""
        return self.storage.min_chunk_length

    # ------------------------------------------------------------------ blobs

    def _stat(self, path: str):
        """The `FileInfo` of a path the registry knows is a file (one request on S3: `IStatFile`), or None."""
        return stat_file(self.storage, path)

    async def _read_link(self, path: str) -> str | None:
        try:
            return (await self.storage.read_bytes(path)).decode()
        except PathNotFound:
            return None

    async def has_blob(self, name: Name, digest: Digest) -> bool:
        return (await self._stat(paths.layer_link(name, digest))) is not None

    async def _read_layer_link(self, name: Name, digest: Digest):
        """
        The repository's link to the blob (a `FileContent`: what it holds
        and its age), or None.  One request on S3: a GET, whose answer also
        tells a missing bucket (503) from a missing link (404).
        """
        return await read_file(self.storage, paths.layer_link(name, digest))

    async def _linked(self, name: Name, digest: Digest) -> bool:
        """`has_blob`, for a read: a link seen in the last few seconds counts (see `oci_registry.content_cache`)."""
        if self.cache.holds_blob(name, digest):
            return True
        if await self._read_layer_link(name, digest) is None:
            return False
        self.cache.add_blob_link(name, digest)
        return True

    async def stat_blob(self, name: Name, digest: Digest, head: bool = False, caller: Caller | None = None) -> BlobInfo:
        """
        The blob's size, if ``name`` holds it; HEAD never opens the data.
        ``head``: only the size is wanted (a pull-through cache then asks its
        upstream rather than starting the download a GET needs), and a
        link written less than half the garbage collection grace period
        ago answers it alone: see `oci_registry.gc` for why no collection
        can take that blob, and why it is there.
        """
        if not self.cache.holds_blob(name, digest):
            link = await self._read_layer_link(name, digest)
            if link is None:
                raise BlobUnknown(str(digest))
            self.cache.add_blob_link(name, digest)
            if head and self.keeper.fresh(link.mtime):
                size = links.layer_size(link.data, digest)
                if size is not None:
                    return BlobInfo(digest, size)
        # A client may skip uploading a blob it found here: it stays.  The
        # data is looked up (never remembered: a GC may have taken it), and
        # a GET serves the size the data has, whatever the link says.
        info = await self._kept(digest, await self._stat(paths.blob_data(digest)))
        if info is None:
            raise BlobUnknown(str(digest))
        return BlobInfo(digest, info.size)

    async def open_blob(
        self, name: Name, digest: Digest, offset: int = 0, length: int | None = None, caller: Caller | None = None
    ):
        """
        A reader of the blob from ``offset``.  ``length``: how many bytes the
        caller will read (None: to the end); a pull-through cache serves a
        part of a blob it is still fetching only once it is verified.
        """
        # The HTTP layer asked stat_blob first (which keeps the blob from a running GC).
        if not await self._linked(name, digest):
            raise BlobUnknown(str(digest))
        for _ in range(2):
            try:
                return await self.storage.open_reader(paths.blob_data(digest), offset)
            except PathNotFound:
                # In quarantine for a moment, while a garbage collection saw it was kept?
                if (await self._kept(digest, None)) is None:
                    break
        raise BlobUnknown(str(digest))

    async def _kept(self, digest: Digest, info):
        """The blob's data `FileInfo` (``info``: as just stat'ed) once safe from a running GC, or None."""
        try:
            return await self.keeper.keep(digest, info)
        except StorageFull:
            log.error("storage is full: could not keep {digest} from garbage collection", digest=str(digest))
            raise InsufficientStorage() from None

    async def _holds(self, name: Name, digest: Digest) -> bool:
        """Whether ``name`` holds the blob and its data stays, for a reference about to be written."""
        # Read again, not remembered: another replica may have deleted the link.
        if not await self.has_blob(name, digest) and not await self.keeper.keep_link(name, digest):
            return False
        return (await self._kept(digest, await self._stat(paths.blob_data(digest)))) is not None

    async def blob_redirect(self, name: Name, digest: Digest, caller: Caller | None = None) -> str | None:
        return await self.storage.redirect_url(paths.blob_data(digest))

    async def delete_blob(self, name: Name, digest: Digest, caller: Caller | None = None) -> None:
        """Unlink the blob from the repository; its bytes go when GC finds them unused."""
        if not await self.has_blob(name, digest):
            raise BlobUnknown(str(digest))
        self.cache.drop_blob_link(name, digest)
        await self.storage.delete(paths.layer_link(name, digest).rsplit("/", 1)[0])
        await self._catalog.removed_from(name)

    async def _link_blob(self, name: Name, digest: Digest, size: int) -> None:
        """Link the blob (``size`` bytes, as verified or stored) into ``name``."""
        await self._listed(name)
        await self._write(paths.layer_link(name, digest), links.layer(digest, size))

    async def mount_blob(
        self, name: Name, digest: Digest, source: Name, caller: Caller | None = None
    ) -> BlobInfo | None:
        """Link a blob ``source`` holds into ``name``; None when it does not hold it."""
        if not await self.has_blob(source, digest):
            return None
        info = await self._kept(digest, await self._stat(paths.blob_data(digest)))
        if info is None:
            return None
        await self._link_blob(name, digest, info.size)
        return BlobInfo(digest, info.size)

    async def adopt_blob(self, name: Name, digest: Digest, caller: Caller | None = None) -> BlobInfo | None:
        """Link a blob stored for any repository into ``name``; None when no repository has it."""
        info = await self._kept(digest, await self._stat(paths.blob_data(digest)))
        if info is None:
            return None
        await self._link_blob(name, digest, info.size)
        return BlobInfo(digest, info.size)

    async def _listed(self, name: Name) -> None:
        """The repository's catalog entry, before its first link from this process (see `oci_registry.catalog`)."""
        with _listing(name):
            await self._catalog.add(name)

    async def _write(self, path: str, data: bytes, durable: bool = True) -> None:
        try:
            await self.storage.write_bytes(path, data, durable)
        except StorageFull:
            log.error("storage is full: could not write {path}", path=path)
            raise InsufficientStorage() from None

    # ---------------------------------------------------------------- uploads

    async def start_upload(self, name: Name, caller: Caller | None = None) -> UploadStatus:
        upload_id = uuid.uuid4().hex
        # The session is its data file, empty for now: one look tells whether
        # it exists and how far it got.  Not fsynced: a session lost in a
        # power cut is one the client starts again (nothing was promised yet).
        await self._write(paths.upload_data(name, upload_id), b"", durable=False)
        return UploadStatus(name, upload_id, 0)

    async def upload_status(self, name: Name, upload_id: str, caller: Caller | None = None) -> UploadStatus:
        return (await self._upload_data_status(name, upload_id))[0]

    async def _upload_data_status(self, name: Name, upload_id: str):
        """
        The upload's status, the `FileInfo` of its data (None before any
        byte of a session that has none yet) and the session's files.
        Sessions started before the data file marked them have a
        ``startedat`` file instead.
        """
        if not is_upload_id(upload_id):
            raise BlobUploadUnknown(upload_id)
        data_path = paths.upload_data(name, upload_id)
        data = await self._stat(data_path)
        if data is not None:
            return UploadStatus(name, upload_id, data.size), data, [data_path]
        started = paths.upload_started(name, upload_id)
        if (await self._stat(started)) is None:
            raise BlobUploadUnknown(upload_id)
        return UploadStatus(name, upload_id, 0), None, [started]

    def _live_for(self, upload_id: str) -> _LiveUpload:
        live = self._live.get(upload_id)
        if live is None:
            live = self._live[upload_id] = _LiveUpload(None, -1)
        return live

    async def append_upload(
        self,
        name: Name,
        upload_id: str,
        body: Body,
        start: int | None = None,
        length: int | None = None,
        caller: Caller | None = None,
    ) -> UploadStatus:
        """
        Append ``body`` to the upload.  ``start`` (from ``Content-Range``) must
        be where the upload ends now, else `UploadRangeInvalid` (416).
        """
        live = self._live_for(upload_id)
        await live.lock.acquire()
        try:
            return (await self._append(name, upload_id, live, body, start, length))[0]
        finally:
            live.lock.release()
            self._forget_idle(upload_id, live)

    async def _append(
        self, name, upload_id, live, body, start=None, length=None, hold: bool = False, empty: bool = False
    ):
        """
        `append_upload` under the upload's lock: fires with the new status and,
        with ``hold``, the body's bytes when the upload was empty and the body
        no larger than `SMALL_BLOB`: those are held in memory, not stored;
        and the session's files.  ``empty``: the session is known to be
        there with its data empty (`_listed_from_session`), not looked up.
        """
        if empty:
            data_path = paths.upload_data(name, upload_id)
            status, data, files = UploadStatus(name, upload_id, 0), None, [data_path]
        else:
            status, data, files = await self._upload_data_status(name, upload_id)
        if start is not None and start != status.offset:
            raise UploadRangeInvalid(
                f"chunk starts at {start} but the upload has {status.offset} bytes",
                headers={"Range": status.range, "Location": upload_location(name, upload_id)},
            )
        # Keep hashing as bytes arrive when this process has hashed every
        # byte before them; otherwise the final step re-hashes from storage.
        hashing = live.hasher is not None and live.matches(data)
        if status.offset == 0:
            live.hasher, hashing = hashlib.new(DEFAULT_ALGORITHM), True
        limit = self.max_upload_size
        if limit and length is not None and status.offset + length > limit:
            raise TooLarge(f"an upload may hold at most {limit} bytes")

        async def open_writer():
            writer = await self._open_upload_writer(name, upload_id, live.hasher if hashing else None)
            return _CappedWriter(writer, limit) if limit else writer

        writer: Any
        if hold and status.offset == 0:
            writer = _HeldFirst(min(SMALL_BLOB, limit or SMALL_BLOB), open_writer)
        else:
            writer = await open_writer()
        received = 0
        try:
            received = await body.deliver(writer)
        finally:
            await self._close_writer(writer)
            if isinstance(writer, _HeldFirst) and writer.held is not None:
                live.hasher = None  # nothing stored: the held bytes are hashed when they are published
            else:
                live.offset = writer.size if hashing else -1
                live.version = writer.version
        if length is not None and received != length:
            raise SizeInvalid(f"received {received} bytes, Content-Length said {length}")
        held = writer.held if isinstance(writer, _HeldFirst) else None
        return UploadStatus(name, upload_id, writer.size), held, files

    def _forget_idle(self, upload_id: str, live: _LiveUpload) -> None:
        # Requests for unknown uploads must not leave entries behind.
        if live.hasher is None and not live.lock.locked and not live.lock.waiting:
            self._live.pop(upload_id, None)

    async def _open_upload_writer(self, name, upload_id, hasher):
        # Always an append, also for the first chunk: two processes that both
        # saw an empty upload then add to it rather than overwrite each
        # other's bytes, and the size they leave shows that neither holds a
        # running hash of what is stored.
        try:
            return await self.storage.open_writer(paths.upload_data(name, upload_id), append=True, hasher=hasher)
        except StorageFull:
            raise InsufficientStorage() from None

    async def _close_writer(self, writer) -> None:
        try:
            await writer.close()
        except StorageFull:
            log.error("storage is full: an upload could not be written")
            raise InsufficientStorage() from None

    async def finish_upload(
        self, name: Name, upload_id: str, digest: Digest, body: Body | None = None, caller: Caller | None = None
    ) -> BlobInfo:
        """
        Append the last chunk (if any), verify ``digest`` and publish the
        blob.  A small blob sent whole in this last chunk is published from
        memory: its bytes never go through the session's data file.
        """
        live = self._live_for(upload_id)
        await live.lock.acquire()
        listed = False
        try:
            if body is not None:
                listed = await self._listed_from_session(name, upload_id, live)
                _, held, files = await self._append(name, upload_id, live, body, hold=True, empty=listed)
                if held is not None:
                    return await self._finish_held(name, upload_id, digest, held, files)
                if listed:
                    # Not a small blob after all: the entry is written again just before the
                    # link, as for any upload, so that no delete can drop it meanwhile.
                    self._catalog.forget(name)
            status, data, files = await self._upload_data_status(name, upload_id)
            data_path = paths.upload_data(name, upload_id)
            if data is None:
                await self._write(data_path, b"")
                files = files + [data_path]
            # Another process may have written the same upload meanwhile (a
            # client appending through two replicas at once): then the data
            # is not what this process hashed, whatever its size.
            if live.hasher is not None and live.matches(data) and live.hasher.name == digest.algorithm:
                actual = Digest.from_hasher(live.hasher)
            else:
                actual = Digest.from_hasher(await self.storage.hash_file(data_path, digest.hasher()))
            if actual != digest:
                await self.cancel_upload(name, upload_id, locked=True)
                raise DigestInvalid(f"upload has digest {actual}, not {digest}")
            if await self._publish(name, digest, data_path, status.offset):
                files = [f for f in files if f != data_path]
            await self._end_session(name, upload_id, files)
            return BlobInfo(digest, status.offset)
        except BaseException:
            if listed:
                await self._unlisted_if_empty(name)
            raise
        finally:
            live.lock.release()
            self._live.pop(upload_id, None)

    async def _listed_from_session(self, name: Name, upload_id: str, live: _LiveUpload) -> bool:
        """
        For the request that finishes an upload with a body, which is often
        a whole small blob, when this process is still to list ``name`` in
        the catalog: True once the session's data, empty, was copied to the
        repository's catalog entry (`Catalog.add_copying`, one request that
        says what a look at the session would say); False when it was not
        (the entry is not this request's to write, the storage cannot copy
        so, or the session is missing or holds bytes), and the session is
        to be looked at.
        """
        if live.offset > 0:  # this process appended bytes to it
            return False
        with _listing(name):
            return await self._catalog.add_copying(name, paths.upload_data(name, upload_id))

    async def _unlisted_if_empty(self, name: Name) -> None:
        """After a failed push that listed ``name``: its entry goes if the repository holds nothing, as on a delete."""
        try:
            await self._catalog.removed_from(name)
        except Exception as e:  # noqa: BLE001 the push's own failure is what its client is told
            log.warn(
                "could not look whether {name} holds anything after a push into it failed: {error}",
                name=str(name),
                error=e,
            )

    async def _finish_held(self, name: Name, upload_id: str, digest: Digest, held: bytes, files: list) -> BlobInfo:
        actual = Digest.of(held, digest.algorithm)
        if actual != digest:
            await self.cancel_upload(name, upload_id, locked=True)
            raise DigestInvalid(f"upload has digest {actual}, not {digest}")
        await self._publish_held(name, digest, held)
        await self._end_session(name, upload_id, files)
        return BlobInfo(digest, len(held))

    async def _publish_held(self, name: Name, digest: Digest, data: bytes) -> None:
        """Make verified bytes held in memory the blob ``digest``, as `_publish_data` does an upload's, and link it."""
        target = paths.blob_data(digest)
        info = await self._stat(target)
        if info is not None:
            info = await self._kept(digest, info)  # before replacing it: a GC may be taking it
        if info is None or info.size != len(data) or not self.storage.move_is_copy:
            await self._write(target, data)
        await self._link_blob(name, digest, len(data))

    async def _end_session(self, name: Name, upload_id: str, files: list[str]) -> None:
        """
        Remove a finished upload session.  On object storage, where a folder
        is only a prefix, its files are deleted by name (``files``: those it
        may still have), so that finishing an upload never lists; elsewhere
        its folder goes, whatever is in it.
        """
        if self.storage.move_is_copy and IBatchDelete.providedBy(self.storage):
            if files:
                await self.storage.delete_files(files)
        else:
            await self.storage.delete(paths.upload(name, upload_id))

    async def _publish(self, name: Name, digest: Digest, data_path: str, size: int) -> bool:
        """
        Make verified upload data (``size`` bytes) the blob ``digest``,
        atomically, and link it; whether the data was moved (else it is
        still at ``data_path``).
        """
        moved = await self._publish_data(digest, data_path, size)
        await self._link_blob(name, digest, size)
        return moved

    async def _publish_data(self, digest: Digest, data_path: str, size: int) -> bool:
        """
        Make verified data (``size`` bytes at ``data_path``) the blob
        ``digest``, durably: a blob stored already is replaced by it where a
        move is a rename (which also repairs stored bytes a crash damaged),
        and kept where a move copies (S3: unless of another size); the
        caller deletes ``data_path`` if it is still there (False: it is).
        """
        target = paths.blob_data(digest)
        try:
            info = await self._stat(target)
            if info is not None:
                info = await self._kept(digest, info)  # before replacing it: a GC may be taking it
            if info is None or info.size != size or not self.storage.move_is_copy:
                # Only the bytes verified: a client appending to the upload
                # through another process meanwhile must not slip more in.
                await self.storage.move(data_path, target, size=size)
                return True
            return False
        except StorageFull:
            raise InsufficientStorage() from None
        except SourceChanged:
            raise BlobUploadInvalid("the upload was appended to while it was being finished") from None

    async def receive_blob(self, name: Name, digest: Digest) -> IncomingBlob:
        """
        Start receiving the blob ``digest`` from elsewhere than a client's
        upload (a pull-through cache's upstream) into an upload session of
        ``name``; see `IncomingBlob`.
        """
        status = await self.start_upload(name)
        data_path = paths.upload_data(name, status.id)
        hasher = digest.hasher()
        try:
            writer = await self.storage.open_writer(data_path, hasher=hasher)
        except BaseException as e:
            await self.storage.delete(paths.upload(name, status.id))
            if isinstance(e, StorageFull):
                raise InsufficientStorage() from None
            raise
        return IncomingBlob(self, name, status.id, digest, writer, hasher)

    async def sent_by(self, digest: Digest, upstream_url: str) -> bool:
        """Whether the upstream at ``upstream_url`` sent this blob's bytes (`IncomingBlob.publish`), still stored."""
        if (await self._stat(paths.blob_upstream(digest, upstream_url))) is None:
            return False
        return (await self._stat(paths.blob_data(digest))) is not None

    async def put_blob(
        self, name: Name, digest: Digest, body: Body, length: int | None = None, caller: Caller | None = None
    ) -> BlobInfo:
        """
        A monolithic upload (``POST ?digest=``): a session opened and closed
        at once, or none for a small blob of a declared ``length``, whose
        bytes are verified in memory and published from there.
        """
        if length is not None and length <= SMALL_BLOB:
            if self.max_upload_size and length > self.max_upload_size:
                raise TooLarge(f"an upload may hold at most {self.max_upload_size} bytes")
            held = _HeldFirst(length, None)
            received = await body.deliver(held)
            if received != length or held.held is None:
                raise SizeInvalid(f"received {received} bytes, Content-Length said {length}")
            actual = Digest.of(held.held, digest.algorithm)
            if actual != digest:
                raise DigestInvalid(f"upload has digest {actual}, not {digest}")
            await self._publish_held(name, digest, held.held)
            return BlobInfo(digest, length)
        status = await self.start_upload(name)
        try:
            await self.append_upload(name, status.id, body, length=length)
            return await self.finish_upload(name, status.id, digest)
        except BaseException:
            self._live.pop(status.id, None)
            await self.storage.delete(paths.upload(name, status.id))
            raise

    async def cancel_upload(
        self, name: Name, upload_id: str, caller: Caller | None = None, locked: bool = False
    ) -> None:
        if not locked:
            await self.upload_status(name, upload_id)
            self._live.pop(upload_id, None)
        await self.storage.delete(paths.upload(name, upload_id))

    # -------------------------------------------------------------- manifests

    async def _resolve(self, name: Name, reference: Digest | Tag) -> Digest:
        if isinstance(reference, Digest):
            return reference
        text = await self._read_link(paths.tag_link(name, reference))
        if text is None:
            raise ManifestUnknown(str(reference))
        return Digest.parse(text)

    async def get_manifest(
        self,
        name: Name,
        reference: Digest | Tag,
        head: bool = False,
        accept: tuple = (),
        caller: Caller | None = None,
    ) -> StoredManifest:
        """``accept``: the client's Accept media types; stored manifests are served as they are, whatever it says."""
        digest = await self._resolve(name, reference)
        remembered = self.cache.revision(name, digest)
        inline = None
        if remembered is not None:
            media_type, size = remembered
        else:
            # One read: the revision link holds the media type, the size and (small manifests) the bytes.
            try:
                content = await self.storage.read_bytes(paths.manifest_link(name, digest))
            except PathNotFound:
                raise ManifestUnknown(str(reference)) from None
            revision = links.parse_revision(content, digest)
            media_type, size, inline = revision.media_type, revision.size, revision.data
            self.cache.add_revision(name, digest, media_type, size)
            if inline is not None:
                self.cache.add_manifest(digest, inline)
        # Bytes stored under a digest never change: remembered ones are those stored.
        cached = self.cache.manifest(digest) if inline is None else inline
        if cached is not None:
            return StoredManifest(digest, media_type, len(cached), None if head else cached)
        if head and size is not None:
            return StoredManifest(digest, media_type, size, None)
        if head:
            info = await self._stat(paths.blob_data(digest))
            if info is None:
                info = await self._kept(digest, None)  # in quarantine, while a GC saw it was kept?
            if info is None:
                raise ManifestUnknown(str(reference))
            return StoredManifest(digest, media_type, info.size, None)
        for _ in range(2):
            try:
                data = await self.storage.read_bytes(paths.blob_data(digest))
                self.cache.add_manifest(digest, data)
                return StoredManifest(digest, media_type, len(data), data)
            except PathNotFound:
                if (await self._kept(digest, None)) is None:
                    break
        raise ManifestUnknown(str(reference))

    async def put_manifest(
        self,
        name: Name,
        reference: Digest | Tag,
        data: bytes,
        content_type: str | None,
        tags: tuple = (),
        caller: Caller | None = None,
    ) -> PushedManifest:
        """Store a manifest under ``reference``, and also tag it with ``tags`` (``PUT …?tag=``)."""
        algorithm = reference.algorithm if isinstance(reference, Digest) else DEFAULT_ALGORITHM
        verified = await self.verify_manifest(data, content_type, algorithm)
        if isinstance(reference, Digest) and verified.digest != reference:
            raise DigestInvalid(f"manifest has digest {verified.digest}, not {reference}")
        every_tag = ((reference,) if isinstance(reference, Tag) else ()) + tuple(tags)
        return await self.store_manifest(name, verified, every_tag)

    async def verify_manifest(
        self, data: bytes, content_type: str | None, algorithm: str = DEFAULT_ALGORITHM
    ) -> VerifiedManifest:
        """
        Check manifest bytes before anything is stored: `TooLarge` past
        ``max_manifest_size``, `ManifestInvalid` unless valid; their digest
        (by ``algorithm``) computed.  A large one is parsed and hashed off
        the reactor thread.
        """
        if len(data) > self.max_manifest_size:
            raise TooLarge(f"a manifest may be at most {self.max_manifest_size} bytes")
        if len(data) > INLINE_PARSE_LIMIT:
            digest, parsed = await self._cpu.run(_digest_and_parse, data, algorithm, content_type)
        else:
            digest, parsed = _digest_and_parse(data, algorithm, content_type)
        return VerifiedManifest(digest, data, parsed)

    async def store_manifest(
        self, name: Name, manifest: VerifiedManifest, tags: tuple = (), check_references: bool = True
    ) -> PushedManifest:
        """
        Store a verified manifest in ``name``: its bytes, its revision link,
        its referrer entry (when it has a subject) and ``tags`` pointing at
        it.  ``check_references``: first make sure ``name`` holds every blob
        and child manifest it references (`ManifestBlobUnknown`), as a push
        must; a pull-through cache stores what its upstream holds, whose
        blobs it fetches when they are asked for.
        """
        if not isinstance(manifest, VerifiedManifest):
            raise TypeError("store_manifest stores what verify_manifest checked")
        digest, data, parsed = manifest.digest, manifest.data, manifest.parsed
        if check_references:
            await self._check_references(name, parsed)
        await self._store_manifest_data(digest, data)
        await self._listed(name)
        await self._write(paths.manifest_link(name, digest), links.revision(digest, parsed.media_type, data))
        self.cache.add_manifest(digest, data)
        if parsed.subject is not None:
            descriptor = parsed.referrer_descriptor(digest, len(data))
            await self._write(
                paths.referrer(name, parsed.subject.digest, digest),
                json.dumps(descriptor.to_json()).encode(),
            )
        every_tag = tuple(dict.fromkeys(tags))
        for tag in every_tag:
            await self._write(paths.tag_link(name, tag), str(digest).encode())
        return PushedManifest(
            digest,
            parsed.subject.digest if parsed.subject else None,
            parsed.media_type,
            len(data),
            every_tag,
            parsed.blobs + parsed.manifests,
        )

    async def _check_references(self, name: Name, parsed: manifests.Manifest) -> None:
        blobs = list(dict.fromkeys(blob.digest for blob in parsed.blobs if not blob.is_foreign))
        children = list(dict.fromkeys(child.digest for child in parsed.manifests))
        for i, blob in enumerate(blobs, 1):
            # The link says the repository holds it; the data must still be there too, and stay.
            if not await self._holds(name, blob):
                raise ManifestBlobUnknown(str(blob))
            if i % CHECKS_PER_TURN == 0:
                await self._cpu.yield_now()
        for i, child in enumerate(children, 1):
            if (await self._stat(paths.manifest_link(name, child))) is None:
                raise ManifestBlobUnknown(str(child))
            if i % CHECKS_PER_TURN == 0:
                await self._cpu.yield_now()

    async def _store_manifest_data(self, digest: Digest, data: bytes) -> None:
        """Store a verified manifest's bytes, or keep them (from a running GC too) if they are stored already."""
        target = paths.blob_data(digest)
        info = await self._stat(target)
        if info is not None:
            info = await self._kept(digest, info)  # before rewriting them: a GC may be taking them
        if info is None or info.size != len(data):
            await self._write(target, data)

    # ------------------------------------------------------------------ tags

    async def set_tag(self, name: Name, tag: Tag, digest: Digest) -> None:
        """Point ``tag`` at a manifest ``name`` holds (`ManifestUnknown` if it does not)."""
        if (await self._stat(paths.manifest_link(name, digest))) is None:
            raise ManifestUnknown(str(digest))
        await self._write(paths.tag_link(name, tag), str(digest).encode())

    async def remove_tag(self, name: Name, tag: Tag) -> None:
        """Remove ``tag`` (with what a pull-through cache recorded of it), if it is there."""
        await self.storage.delete(paths.tag_folder(name, tag))

    async def tag_checked_at(self, name: Name, tag: Tag) -> float | None:
        """When a pull-through cache last recorded that its upstream confirmed ``tag`` (`record_tag_check`)."""
        try:
            return float((await self.storage.read_bytes(paths.tag_checked(name, tag))).decode())
        except (PathNotFound, ValueError):
            return None

    async def record_tag_check(self, name: Name, tag: Tag, when: float) -> None:
        """Record that the upstream confirmed ``tag`` at ``when`` (in storage: every worker sees it)."""
        await self._write(paths.tag_checked(name, tag), repr(when).encode())

    async def delete_manifest(
        self, name: Name, reference: Digest | Tag, caller: Caller | None = None
    ) -> tuple[Tag, ...]:
        if isinstance(reference, Tag):
            if (await self._stat(paths.tag_link(name, reference))) is None:
                raise ManifestUnknown(str(reference))
            await self.remove_tag(name, reference)
            return (reference,)
        digest = reference
        link = paths.manifest_link(name, digest)
        if (await self.storage.stat(link)) is None:
            raise ManifestUnknown(str(digest))
        removed = []
        for tag in await self.storage.list(paths.tags(name)):
            if await self._read_link(paths.tag_link(name, Tag(tag))) == str(digest):
                await self.storage.delete(paths.tag_folder(name, tag))
                removed.append(Tag(tag))
        subject = await self._subject_of(digest)
        if subject is not None:
            await self.storage.delete(paths.referrer(name, subject, digest))
        self.cache.drop_revision(name, digest)
        await self.storage.delete(link.rsplit("/", 1)[0])
        await self._catalog.removed_from(name)
        return tuple(removed)

    async def _subject_of(self, digest: Digest) -> Digest | None:
        try:
            data = await self.storage.read_bytes(paths.blob_data(digest))
            doc = json.loads(data)
            return Digest.parse(doc["subject"]["digest"])
        except (PathNotFound, ValueError, RecursionError, KeyError, TypeError, DigestInvalid):
            return None  # no manifest (any more), or one without a subject

    # -------------------------------------------------------------- discovery

    async def repository_exists(self, name: Name) -> bool:
        return (await self.storage.stat(paths.repository(name))) is not None

    async def list_tags(
        self, name: Name, limit: int | None = None, last: str | None = None, caller: Caller | None = None
    ) -> Page:
        """
        Up to ``limit`` tags after ``last`` (all, with None), in byte order;
        reads about as much as the page holds (see `oci_registry.listing`).
        """
        page = await listing.tag_page(self.storage, name, last, limit, self._cpu.yield_now)
        if not page.entries and not await self.repository_exists(name):
            raise NameUnknown(str(name))
        return page

    async def catalog(self, limit: int | None = None, last: str | None = None, caller: Caller | None = None) -> Page:
        """Up to ``limit`` repositories holding a manifest or a blob, after ``last`` (all, with None), sorted."""
        return await self._catalog.page(last, limit)

    async def referrers(
        self,
        name: Name,
        subject: Digest,
        artifact_type: str | None = None,
        last: str | None = None,
        limit: int = listing.REFERRERS_PAGE,
        caller: Caller | None = None,
    ) -> Page:
        """
        The descriptors of the manifests in ``name`` whose subject is
        ``subject``, in digest order, a page at a time: at most ``limit``
        read, and no more than a manifest's worth of JSON
        (``max_manifest_size``); ``Page.next`` is the ``last`` of the page
        that follows.
        """
        return await listing.referrer_page(
            self.storage, name, subject, artifact_type or None, last, limit, self.max_manifest_size
        )


class IncomingBlob:
    """
    A blob on its way in from elsewhere than a client's upload (a
    pull-through cache's upstream), made by `Registry.receive_blob`.  Its
    bytes go into an upload session, hashed as they pass, with the limits a
    push has: `write` refuses to go past ``max_upload_size`` (`TooLarge`),
    and `publish` makes the data the blob only once its size and digest are
    the ones expected, exactly as finishing an upload does.  `discard`
    removes the session, whatever happened.
    """

    def __init__(self, registry: Registry, name: Name, upload_id: str, digest: Digest, writer, hasher):
        self.registry = registry
        self.name = name
        self.digest = digest
        self.actual: Digest | None = None  # the digest of what was received, once `publish` computed it
        self._upload_id = upload_id
        self.data_path = paths.upload_data(name, upload_id)  # where the bytes are written, for readers
        self._writer = writer
        self._hasher = hasher
        self._limit = registry.max_upload_size

    @property
    def size(self) -> int:
        """Bytes received so far."""
        return self._writer.size

    def write(self, data: bytes):
        """Append ``data``; the Deferred fires when more may be written.  `TooLarge` (raised) past the limit."""
        if self._limit and self._writer.size + len(data) > self._limit:
            raise TooLarge(f"an upload may hold at most {self._limit} bytes")
        return self._writer.write(data)

    @property
    def shared_path(self) -> str | None:
        """
        ``data_path`` where other processes can read the bytes as they
        arrive (a storage whose move is a rename: the file is there as it
        grows); None where they cannot (object storage: nothing is there
        before the upload completes).
        """
        return None if self.registry.storage.move_is_copy else self.data_path

    async def publish(self, size: int, source: str | None = None) -> BlobInfo:
        """
        Make the bytes the blob: `SizeInvalid` unless exactly ``size`` were
        received, `DigestInvalid` unless they have the digest expected.
        ``source``: the upstream's URL, recorded as having sent these bytes
        (`Registry.sent_by`).  The blob is linked into no repository yet
        (`Registry.adopt_blob` does that).
        """
        writer, self._writer = self._writer, _Closed(self._writer.size)
        try:
            await writer.commit()
        except StorageFull:
            raise InsufficientStorage() from None
        if writer.size != size:
            raise SizeInvalid(f"received {writer.size} bytes, not {size}")
        self.actual = Digest.from_hasher(self._hasher)
        if self.actual != self.digest:
            raise DigestInvalid(f"upload has digest {self.actual}, not {self.digest}")
        await self.registry._publish_data(self.digest, self.data_path, size)
        if source is not None:
            await self.registry._write(paths.blob_upstream(self.digest, source), source.encode())
        return BlobInfo(self.digest, size)

    async def discard(self) -> None:
        """Stop writing (if `publish` did not) and remove the upload session."""
        writer, self._writer = self._writer, _Closed(self._writer.size)
        try:
            await writer.cancel()
        finally:
            await self.registry.storage.delete(paths.upload(self.name, self._upload_id))


class _Closed:
    """Where an `IncomingBlob`'s writer was: published or discarded."""

    def __init__(self, size: int):
        self.size = size

    def write(self, data):
        raise ValueError("the incoming blob is closed")

    def commit(self):
        raise ValueError("the incoming blob is closed")

    def cancel(self):
        return succeed(None)


class _HeldFirst:
    """
    Where a body goes first: held in memory up to ``limit`` bytes.  Past
    that, the bytes held and what follows go to the writer ``open_writer``
    fires with (None: the body is refused, `SizeInvalid`).  ``held``: the
    bytes, when they all stayed in memory (after `close`).
    """

    def __init__(self, limit: int, open_writer):
        self._limit = limit
        self._open = open_writer
        self._chunks: list[bytes] = []
        self._held_size = 0
        self.writer: Any = None

    @property
    def size(self) -> int:
        return self.writer.size if self.writer is not None else self._held_size

    @property
    def version(self):
        return self.writer.version if self.writer is not None else None

    @property
    def held(self) -> bytes | None:
        return b"".join(self._chunks) if self.writer is None else None

    def write(self, data):
        if self.writer is not None:
            return self.writer.write(data)
        if self._held_size + len(data) <= self._limit:
            self._chunks.append(bytes(data))
            self._held_size += len(data)
            return succeed(None)
        if self._open is None:
            return fail(SizeInvalid(f"more than the {self._limit} bytes announced"))
        return Deferred.fromCoroutine(self._spill(bytes(data)))

    async def _spill(self, data: bytes) -> None:
        self.writer = writer = await self._open()
        held, self._chunks = b"".join(self._chunks), []
        if held:
            await writer.write(held)
        await writer.write(data)

    def close(self):
        return self.writer.close() if self.writer is not None else succeed(None)


class _CappedWriter:
    """Refuses writes that would take an upload past the size limit (413)."""

    def __init__(self, writer, limit: int):
        self._writer = writer
        self._limit = limit

    @property
    def size(self) -> int:
        return self._writer.size

    @property
    def version(self):
        return self._writer.version

    def write(self, data):
        if self._writer.size + len(data) > self._limit:
            return fail(TooLarge(f"an upload may hold at most {self._limit} bytes"))
        return self._writer.write(data)

    def close(self):
        return self._writer.close()


def upload_location(name: Name, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"
