"""
Storage on S3 or any S3-compatible object store (AWS, SeaweedFS, MinIO, Ceph).

A storage path ``a/b/c`` is the object ``<prefix>/a/b/c``; a "folder" is a
key prefix.  Requests go through `S3Client` on Twisted's HTTP client, so
the reactor never waits on the network; CPU-heavy hashing of large bodies
runs in a small thread pool of the driver's own.

Several registry processes may share one bucket: nothing a later request
needs is kept in a process.  In particular a writer (an upload in progress)
keeps its state in the bucket, under its own path:

- Bytes are buffered up to ``part_size`` (at least 5 MiB) and sent as parts
  of an S3 multipart upload, two parts in flight while the next fills; past
  that the writer pushes back.  A blob is never held whole in memory.
- ``commit()`` uploads the remainder as the last part and completes the
  multipart upload: the object appears at its path atomically.
- ``close()`` (the end of one PATCH) leaves an *upload state* object at the
  path: a JSON line with the multipart upload id and its parts, followed by
  the bytes not yet sent as a part (less than one part), flagged with an
  ``x-amz-meta-ociregistry-upload: <size>`` header.  ``stat`` reports that
  size; ``open_writer(append=True)`` in any process reads the state and
  carries on with the same multipart upload; anything that reads the bytes
  (``read_bytes``, ``open_reader``, ``hash_file``, ``move``) first completes
  the multipart upload into a plain object.  Small files (no part yet) are
  written as plain objects.

Hash state is never stored: the registry re-hashes from storage when an
upload resumes in another process.  See ``docs/storage.md`` for what is and
is not safe with several replicas.
"""

from __future__ import annotations

import functools
import hashlib
import json

import attr
from twisted.internet.defer import Deferred, DeferredLock, DeferredSemaphore, fail, gatherResults, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from . import sigv4
from .availability import Availability
from .interfaces import (
    DestinationExists,
    DriverFactory,
    FileContent,
    FileInfo,
    IBatchDelete,
    IClosableDriver,
    IEmptyCopy,
    IExclusiveCreate,
    IReader,
    IReadFile,
    IStatFile,
    IStorageDriver,
    IWalkAfter,
    IWalkPages,
    IWriter,
    PathNotFound,
    SourceChanged,
    StorageFull,
)
from .s3client import CONNECTION_ERRORS, S3Client, S3Error
from .settings import MIN_PART_SIZE, S3Settings, s3_sources

log = Logger()

STATE_HEADER = "ociregistry-upload"  # x-amz-meta-ociregistry-upload: <size>, on upload state objects
MAX_PARTS = 10000  # S3's limit per multipart upload
PARTS_IN_FLIGHT = 2  # parts a writer sends at once (each holds part_size bytes)
COPY_LIMIT = 5 << 30  # the largest object one CopyObject may copy
COPY_PART_SIZE = 512 << 20  # parts of a multipart copy
COPY_CONCURRENCY = 4
READ_BLOCK = 4 << 20  # bytes handed to the hashing pool at a time
INLINE_HASH_LIMIT = 256 << 10  # payloads hashed on the reactor thread
EMPTY_ETAG = "d41d8cd98f00b204e9800998ecf8427e"  # an empty object's, where ETags are the MD5 of the bytes


def _translate(error: S3Error) -> Exception:
    if error.not_found:
        return PathNotFound(str(error))
    if error.full:
        return StorageFull(str(error))
    return error


def _deferred(method):
    """
    Run an ``async def`` method as a Deferred, with S3 errors translated
    (`S3Client` raises `StorageUnavailable` itself; a connection lost while
    a body streams in becomes one here).
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        async def run():
            try:
                return await method(self, *args, **kwargs)
            except S3Error as e:
                raise _translate(e) from e
            except CONNECTION_ERRORS as e:
                client = self.client if isinstance(self, S3Driver) else self._client
                raise client.unavailable(e) from e

        return Deferred.fromCoroutine(run())

    return wrapper


@attr.s(auto_attribs=True, frozen=True, slots=True)
class UploadState:
    """A multipart upload between two writers: what ``close()`` leaves at the path."""

    upload_id: str
    parts: tuple  # ((number, etag, size), ...)
    size: int  # every byte written: the parts' plus the tail's

    def encode(self, tail: bytes) -> bytes:
        header = {"version": 1, "upload_id": self.upload_id, "parts": [list(p) for p in self.parts], "size": self.size}
        return json.dumps(header, separators=(",", ":")).encode() + b"\n" + tail

    @classmethod
    def decode(cls, data: bytes) -> tuple[UploadState, bytes]:
        header, _, tail = data.partition(b"\n")
        doc = json.loads(header)
        if doc.get("version") != 1:
            raise ValueError(f"unknown upload state version {doc.get('version')!r}")
        state = cls(
            str(doc["upload_id"]), tuple((int(n), str(e), int(s)) for n, e, s in doc["parts"]), int(doc["size"])
        )
        if sum(p[2] for p in state.parts) + len(tail) != state.size:
            raise ValueError("upload state does not add up")
        return state, tail


def _inverted_prefixes(name: str) -> list[str]:
    """The prefixes of ``name`` that S3 may list after it: cut before a character that sorts below ``/``."""
    return [name[:i] for i in range(1, len(name)) if name[i] < "/"]


def _copy_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """Inclusive byte ranges covering ``size``, none but the last under 5 MiB."""
    ranges, start = [], 0
    while start < size:
        end = min(start + part_size, size)
        if 0 < size - end < MIN_PART_SIZE:
            end = size  # fold a short remainder into this part
        ranges.append((start, end - 1))
        start = end
    return ranges


@implementer(
    IStorageDriver,
    IClosableDriver,
    IExclusiveCreate,
    IWalkPages,
    IWalkAfter,
    IBatchDelete,
    IStatFile,
    IReadFile,
    IEmptyCopy,
)
class S3Driver:
    """Stores files as objects in one bucket (under ``settings.prefix``)."""

    move_is_copy = True  # CopyObject, then DeleteObject

    def __init__(self, settings: S3Settings, reactor=None, threads: int = 4, client: S3Client | None = None):
        if reactor is None:
            from twisted.internet import reactor
        if client is None:
            if not settings.access_key or not settings.secret_key:
                raise ValueError(
                    "s3 storage needs access_key and secret_key (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                )
            credentials = sigv4.Credentials(settings.access_key, settings.secret_key, settings.session_token)
            client = S3Client(
                reactor,
                settings.endpoint_url,
                settings.bucket,
                credentials,
                settings.region,
                availability=Availability(settings.describe()),
            )
        self.settings = settings
        self.client = client
        self.part_size = settings.part_size
        self.min_chunk_length = settings.part_size  # smaller PATCHes are re-buffered in the upload state
        self.parts_in_flight = PARTS_IN_FLIGHT
        self.copy_limit = COPY_LIMIT
        self.copy_part_size = COPY_PART_SIZE
        self._prefix = f"{settings.prefix}/" if settings.prefix else ""
        # The ETag `copy_empty` expects of an empty object; None once an empty object this
        # driver wrote had another (SSE-KMS ETags are not MD5s), and then no copy is tried.
        self._empty_etag: str | None = EMPTY_ETAG
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name="ociregistry-s3")
        self._pool.start()
        self._shutdown = reactor.addSystemEventTrigger("during", "shutdown", self.close)

    def __repr__(self) -> str:
        return f"<S3Driver {self.settings.describe()}>"

    def close(self):
        """Stop the hashing threads and drop idle connections (also done at reactor shutdown)."""
        if self._shutdown is not None:
            try:
                self._reactor.removeSystemEventTrigger(self._shutdown)
            except (ValueError, KeyError):
                pass  # it is the trigger running now
            self._shutdown = None
        if self._pool.started:
            self._pool.stop()
        return self.client.close()

    # helpers

    def _key(self, path: str) -> str:
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid storage path {path!r}")
        return self._prefix + path

    def _in_pool(self, function, *args):
        return deferToThreadPool(self._reactor, self._pool, function, *args)

    def payload_hash(self, data: bytes) -> Deferred:
        """The SHA-256 a signed request carries for ``data``: in the pool when large."""
        if len(data) <= INLINE_HASH_LIMIT:
            return succeed(hashlib.sha256(data).hexdigest())
        return self._in_pool(lambda: hashlib.sha256(data).hexdigest())

    async def _materialise(self, key: str, data: bytes) -> None:
        """Complete the multipart upload an upload state describes, so its bytes become readable."""
        state, tail = UploadState.decode(data)
        try:
            # The ETags pin the parts' content: if a part number was sent
            # again after the state was written (a writer cut short, or a
            # client sending one chunk to two replicas at once), the server
            # refuses (AWS, MinIO, Ceph: InvalidPart) or completes with the
            # recorded version (SeaweedFS); it never mixes them.
            parts = [(number, etag) for number, etag, _ in state.parts]
            if tail:
                number = state.parts[-1][0] + 1
                etag = await self.client.upload_part(key, state.upload_id, number, tail, await self.payload_hash(tail))
                parts.append((number, etag))
            await self.client.complete_multipart(key, state.upload_id, parts)
        except S3Error as e:
            if e.code != "NoSuchUpload":
                raise
            # Another process completed it meanwhile: the caller reads the key again.

    async def _plain_head(self, key: str):
        """The object's info once it is a plain object (an upload state is completed first)."""
        for _ in range(3):
            info = await self.client.head(key)
            if info is None or STATE_HEADER not in info.metadata:
                return info
            got, data = await self.client.get_bytes(key)
            if STATE_HEADER in got.metadata:
                await self._materialise(key, data)
        raise RuntimeError(f"upload state at {key} could not be completed")

    async def _open_stream(self, key: str, path: str, start: int = 0, end: int | None = None):
        """``(size, stream or None)`` for the bytes from ``start`` to ``end`` of a plain object."""
        for _ in range(3):
            try:
                info, stream = await self.client.get(key, start, end)
            except S3Error as e:
                if e.not_found:
                    raise PathNotFound(path) from None
                if e.code != "InvalidRange":
                    raise
                # Nothing at or past ``start`` (an empty object, or the end).
                info = await self._plain_head(key)
                if info is None:
                    raise PathNotFound(path) from None
                if start < info.size:  # it grew, or was an upload state: try again
                    continue
                return info.size, None
            if STATE_HEADER not in info.metadata:
                return info.size, stream
            stream.close()
            _, data = await self.client.get_bytes(key)
            await self._materialise(key, data)
        raise RuntimeError(f"upload state at {key} could not be completed")

    async def _copy_parts(self, key: str, upload_id: str, source: str, size: int, first: int = 1) -> list:
        """Copy ``source`` into parts ``first``… of an upload, a few parts at a time."""
        limiter = DeferredSemaphore(COPY_CONCURRENCY)
        ranges = _copy_ranges(size, self.copy_part_size)

        def copy(number, start, end):
            async def run():
                etag = await self.client.upload_part_copy(key, upload_id, number, source, start, end)
                return (number, etag, end - start + 1)

            return limiter.run(lambda: Deferred.fromCoroutine(run()))

        return await gatherResults(
            [copy(first + i, start, end) for i, (start, end) in enumerate(ranges)], consumeErrors=True
        )

    # IStorageDriver

    @_deferred
    async def read_bytes(self, path):
        content = await self.read_file(path)
        if content is None:
            raise PathNotFound(path)
        return content.data

    @_deferred
    async def read_file(self, path):
        """`IReadFile`: one GET.  Its 404 names a missing key or a missing bucket (503), as a HEAD's cannot."""
        key = self._key(path)
        for _ in range(3):
            try:
                info, data = await self.client.get_bytes(key)
            except S3Error as e:
                if e.not_found:
                    return None
                raise
            if STATE_HEADER not in info.metadata:
                return FileContent(data, info.mtime)
            await self._materialise(key, data)
        raise RuntimeError(f"upload state at {key} could not be completed")

    @_deferred
    async def write_bytes(self, path, data, durable=True):
        key = self._key(path)
        data = bytes(data)
        etag = await self.client.put(key, data, await self.payload_hash(data))
        if not data and etag and etag != EMPTY_ETAG:
            self._empty_etag = None

    @_deferred
    async def copy_empty(self, source, destination):
        """
        `IEmptyCopy`: one CopyObject, of the source's version only if it is
        the empty one; and the copy's ETag says so again, on a server that
        would copy whatever the condition (the caller then writes the
        destination itself).
        """
        if self._empty_etag is None:
            return False
        try:
            copied = await self.client.copy(self._key(source), self._key(destination), if_match=self._empty_etag)
        except S3Error as e:
            if e.not_found or e.code == "PreconditionFailed" or e.status == 412:
                return False
            raise
        return copied == self._empty_etag

    @_deferred
    async def create_bytes(self, path, data):
        key = self._key(path)
        data = bytes(data)
        try:
            await self.client.put(key, data, await self.payload_hash(data), if_absent=True)
        except S3Error as e:
            if e.code == "PreconditionFailed" or e.status == 412:
                raise DestinationExists(path) from None
            if e.code == "ConditionalRequestConflict" or e.status == 409:
                # AWS: another conditional write of the key was in progress; it wins.
                raise DestinationExists(path) from None
            raise

    @_deferred
    async def stat(self, path):
        key = self._key(path)
        info = await self.client.head(key)
        if info is not None:
            size = int(info.metadata.get(STATE_HEADER, info.size))
            return FileInfo(size, info.mtime, False, info.etag or None)
        below = await self.client.list(key + "/", limit=1)
        if below:
            return FileInfo(0, below[0].mtime, True)
        return None

    @_deferred
    async def stat_file(self, path):
        """One HEAD: no listing for a folder."""
        info = await self.client.head(self._key(path))
        if info is None:
            return None
        return FileInfo(int(info.metadata.get(STATE_HEADER, info.size)), info.mtime, False, info.etag or None)

    @_deferred
    async def list(self, path):
        # A listing without a delimiter: some servers (SeaweedFS) keep
        # reporting emptied "folders" as common prefixes.
        key = self._key(path) + "/"
        return sorted({info.key[len(key) :].split("/", 1)[0] for info in await self.client.list(key)})

    @_deferred
    async def list_page(self, path, start_after=None, limit=None):
        """
        Delimiter listings from ``start-after``, ``max-keys`` about the page.
        S3 orders a folder ``c`` by its key ``c/``, so ``a-b/`` comes before
        ``a/`` while the names sort ``a`` < ``a-b`` (SeaweedFS lists by name
        instead): a name missing from what was listed so far can still sort
        before one listed only if it is a prefix of it cut before a character
        below ``/``.  Such a prefix that the listing has not yet passed is
        looked up on its own (one request, rarely needed), so the page is
        exact in either order.
        """
        if limit is not None and limit <= 0:
            return []
        base = self._key(path) + "/"
        seen: set[str] = set()
        looked_up: dict[str, bool] = {}
        position = ""  # the greatest key listed so far, relative to base
        token = None
        complete = False

        def after(name: str) -> bool:
            return start_after is None or name > start_after

        def known() -> list[str]:
            return sorted(n for n in seen.union(u for u, there in looked_up.items() if there) if after(n))

        for _ in range(100_000):
            names = known()
            if not complete and (limit is None or len(names) < limit):
                wanted = 1000 if limit is None else limit - len(names) + 2
                listed = await self.client.list_once(
                    base,
                    delimiter="/",
                    start_after=base + start_after if start_after and token is None else None,
                    max_keys=wanted,
                    token=token,
                )
                for key in listed.keys:
                    seen.add(key[len(base) :])
                    position = max(position, key[len(base) :])
                for prefix in listed.prefixes:
                    seen.add(prefix[len(base) : -1])
                    position = max(position, prefix[len(base) :])
                token = listed.token
                complete = not listed.truncated or token is None
                continue
            page = names if limit is None else names[:limit]
            if complete:
                return page
            unresolved = {
                prefix
                for name in page
                for prefix in _inverted_prefixes(name)
                if after(prefix) and prefix not in seen and prefix not in looked_up and prefix + "/" > position
            }
            if not unresolved:
                return page
            for prefix in sorted(unresolved):
                looked_up[prefix] = bool((await self.client.list_once(base + prefix + "/", max_keys=1)).keys)
        raise RuntimeError(f"listing {path} did not end")

    @_deferred
    async def holds_files(self, path):
        return bool((await self.client.list_once(self._key(path) + "/", max_keys=1)).keys)

    @_deferred
    async def walk(self, path):
        key = self._key(path) + "/"
        return sorted(info.key[len(key) :] for info in await self.client.list(key))

    @_deferred
    async def walk_page(self, path, cursor=None, limit=1000):
        """One ListObjectsV2 request; the cursor is its continuation token."""
        key = self._key(path) + "/"
        listed = await self.client.list_once(key, max_keys=limit, token=cursor)
        return [k[len(key) :] for k in listed.keys], listed.token if listed.truncated else None

    @_deferred
    async def walk_after(self, path, start_after=None, limit=1000):
        """ListObjectsV2 without a delimiter from ``start-after``: one request for up to 1,000 paths."""
        if limit <= 0:
            return []
        base = self._key(path) + "/"
        found: list[str] = []
        token = None
        while len(found) < limit:
            listed = await self.client.list_once(
                base,
                start_after=base + start_after if start_after else None,
                max_keys=limit - len(found),
                token=token,
            )
            found += [key[len(base) :] for key in listed.keys if key.startswith(base)]
            token = listed.token
            if not listed.truncated or token is None:
                break
        return found

    @_deferred
    async def delete_files(self, paths):
        """DeleteObjects, 1,000 keys a request (a plain DELETE for one key)."""
        keys = [self._key(path) for path in paths]
        if len(keys) == 1:
            await self.client.delete(keys[0])
        elif keys:
            await self.client.delete_many(keys)

    @_deferred
    async def delete(self, path):
        key = self._key(path)
        keys = [info.key for info in await self.client.list(key + "/")]
        if keys:
            await self.client.delete_many(keys + [key])
        else:
            await self.client.delete(key)
        # Multipart uploads of writers that were closed, cancelled or cut
        # short under the path: their parts would otherwise be kept (and
        # billed) until a bucket lifecycle rule aborts them.
        for upload_key, upload_id in await self.client.list_multipart(key):
            if upload_key == key or upload_key.startswith(key + "/"):
                await self.client.abort_multipart(upload_key, upload_id)

    @_deferred
    async def move(self, source, destination, size=None, replace=True):
        src, dst = self._key(source), self._key(destination)
        info = await self._plain_head(src)
        if info is None:
            raise PathNotFound(source)
        if not replace and (await self.client.head(dst)) is not None:
            raise DestinationExists(destination)
        if size is not None and info.size != size:
            # Objects are replaced whole, never written in place: a writer
            # that appended meanwhile left an object of another size.
            raise SourceChanged(f"{source} no longer holds {size} bytes")
        try:
            if info.size <= self.copy_limit:
                # And the copy takes the version just checked (or fails).
                await self.client.copy(
                    src, dst, if_match=info.etag if size is not None else None, if_absent=not replace
                )
            else:
                upload_id = await self.client.create_multipart(dst)
                try:
                    parts = await self._copy_parts(dst, upload_id, src, info.size)
                    await self.client.complete_multipart(
                        dst, upload_id, [(n, e) for n, e, _ in parts], if_absent=not replace
                    )
                except BaseException:
                    await self.client.abort_multipart(dst, upload_id)
                    raise
        except S3Error as e:
            if e.code != "PreconditionFailed":
                raise
            if not replace and (await self.client.head(dst)) is not None:
                raise DestinationExists(destination) from None
            raise SourceChanged(f"{source} was replaced while it was being moved") from None
        await self.client.delete(src)

    @_deferred
    async def open_writer(self, path, append=False, hasher=None):
        key = self._key(path)
        writer = _Writer(self, key, hasher)
        if not append:
            return writer
        info = await self.client.head(key)
        if info is None:
            return writer
        writer.version = info.etag or None  # until close() stores something of its own
        if STATE_HEADER in info.metadata:
            # Read the state only when there is something to add: a PUT
            # that finishes an upload often comes with an empty body.
            writer.resume_later(int(info.metadata[STATE_HEADER]))
        elif info.size == 0:
            writer.resume(None, [], b"")  # an empty file (an upload session just started): nothing to read
        elif info.size < MIN_PART_SIZE:
            _, data = await self.client.get_bytes(key)
            writer.resume(None, [], data)
        else:
            # A finished object large enough to be a part: copy it (server side) into a new upload.
            upload_id = await self.client.create_multipart(key)
            parts = await self._copy_parts(key, upload_id, key, info.size)
            writer.resume(upload_id, parts, b"")
        return writer

    @_deferred
    async def open_reader(self, path, offset=0):
        size, stream = await self._open_stream(self._key(path), path, offset)
        return _Reader(stream, size)

    @_deferred
    async def hash_file(self, path, hasher, limit=None):
        if limit == 0:
            if (await self.stat(path)) is None:
                raise PathNotFound(path)
            return hasher
        _, stream = await self._open_stream(self._key(path), path, 0, None if limit is None else limit - 1)
        if stream is None:
            return hasher
        try:
            while block := await stream.read(READ_BLOCK):
                await self._in_pool(hasher.update, block)
        finally:
            stream.close()
        return hasher

    @_deferred
    async def check(self):
        # A listing: what the registry does most, and its errors name the
        # problem (NoSuchBucket, SignatureDoesNotMatch...), where a HEAD's do not.
        await self.client.list(self._prefix, limit=1)

    def redirect_url(self, path):
        try:
            key = self._key(path)
        except ValueError:
            return fail()
        if not self.settings.redirect:
            return succeed(None)
        expires = int(self.settings.redirect_expiry)
        return succeed(self.client.presigned_url(key, expires, endpoint=self.settings.redirect_endpoint or None))


@implementer(IWriter)
class _Writer:
    """
    Buffers bytes up to a part and sends full parts while the next ones fill
    (up to ``parts_in_flight`` at once); ``write`` pushes back while a whole
    part waits for its turn.  Parts are hashed in order, one after the other,
    so the hasher sees every byte once and in sequence.
    """

    def __init__(self, driver: S3Driver, key: str, hasher):
        self._driver = driver
        self._client = driver.client
        self._key = key
        self._hasher = hasher
        self._part_size = driver.part_size
        self._max_in_flight = driver.parts_in_flight
        self.size = 0
        self.version: str | None = None
        self._upload_id: str | None = None
        self._parts: list[tuple[int, str, int]] = []  # sent: (number, etag, size)
        self._next_number = 1
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._seen = 0  # leading buffered bytes the hasher must not see again (a resumed tail)
        self._in_flight = 0  # parts being hashed or sent
        self._in_order = DeferredLock()  # hashing (and creating the upload) goes part by part
        self._state_size: int | None = None  # an upload state at the key, not read yet
        self._loading = False
        self._error: BaseException | None = None
        self._room: list[Deferred] = []  # writes waiting for the buffer to drop below a part
        self._idle: list[Deferred] = []  # finishers waiting for the parts in flight
        self._closed = False

    def resume(self, upload_id: str | None, parts: list, tail: bytes) -> None:
        """Carry on from an earlier writer's multipart upload and unsent ``tail``."""
        self._upload_id = upload_id
        self._parts = list(parts)
        self._next_number = max((p[0] for p in self._parts), default=0) + 1
        if tail:
            self._chunks, self._buffered, self._seen = [tail], len(tail), len(tail)
        self.size = sum(p[2] for p in self._parts) + len(tail)

    def resume_later(self, size: int) -> None:
        """Carry on from the upload state at the key, which says it holds ``size`` bytes."""
        self._state_size = self.size = size

    async def _load_state(self) -> None:
        info, data = await self._client.get_bytes(self._key)
        state, tail = UploadState.decode(data) if STATE_HEADER in info.metadata else (None, b"")
        if state is None or state.size != self._state_size:
            raise RuntimeError(f"the upload at {self._key} changed while this writer was adding to it")
        self._state_size = None
        self._upload_id, self._parts = state.upload_id, list(state.parts)
        self._next_number = max((p[0] for p in self._parts), default=0) + 1
        if tail:  # it goes before anything written meanwhile
            self._chunks.insert(0, tail)
            self._buffered += len(tail)
            self._seen = len(tail)

    # buffering

    def _take(self) -> tuple[list[bytes], int]:
        chunks, seen = self._chunks, self._seen
        self._chunks, self._buffered, self._seen = [], 0, 0
        return chunks, seen

    def _prepare(self, chunks: list[bytes], seen: int) -> Deferred:
        """Join ``chunks`` and feed the hasher the new bytes, in the pool: fires with the bytes."""
        hasher = self._hasher

        def prepare():
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if hasher is not None and len(data) > seen:
                hasher.update(memoryview(data)[seen:])
            return data

        if sum(len(c) for c in chunks) <= INLINE_HASH_LIMIT:
            return succeed(prepare())
        return self._driver._in_pool(prepare)

    def _number(self) -> int:
        number = self._next_number
        if number > MAX_PARTS:
            raise StorageFull(f"an S3 upload has at most {MAX_PARTS} parts of {self._part_size} bytes")
        self._next_number += 1
        return number

    async def _send_part(self, number: int, chunks: list[bytes], seen: int) -> None:
        async with self._in_order:  # taken in the order the parts were cut
            data = await self._prepare(chunks, seen)
            chunks.clear()  # joined into data: not held twice while the part is sent
            if self._upload_id is None:
                self._upload_id = await self._client.create_multipart(self._key)
        digest = await self._driver.payload_hash(data)
        etag = await self._client.upload_part(self._key, self._upload_id, number, data, digest)
        self._parts.append((number, etag, len(data)))

    def _start(self, job) -> None:
        def done(_):
            self._in_flight -= 1
            self._pump()
            self._wake()

        def failed(failure):
            self._in_flight -= 1
            error = failure.value
            if self._error is None:
                self._error = _translate(error) if isinstance(error, S3Error) else error
            self._wake()

        self._in_flight += 1
        Deferred.fromCoroutine(job).addCallbacks(done, failed)

    def _pump(self) -> None:
        if self._error is not None or self._loading:
            return
        if self._state_size is not None:
            if self._chunks and not self._in_flight:
                self._loading = True

                async def load():
                    try:
                        await self._load_state()
                    finally:
                        self._loading = False

                self._start(load())
            return
        while self._buffered >= self._part_size and self._in_flight < self._max_in_flight:
            try:
                number = self._number()
            except StorageFull as e:
                self._error = e
                return
            self._start(self._send_part(number, *self._take()))

    def _wake(self) -> None:
        fire = []
        if self._error is not None or self._buffered < self._part_size:
            fire, self._room = self._room, []
        if self._error is not None or not self._in_flight:
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
        self._chunks.append(bytes(data))
        self._buffered += len(data)
        self.size += len(data)
        self._pump()
        if self._error is not None:
            return fail(self._error)
        if self._buffered < self._part_size:
            return succeed(None)
        waiter = Deferred()  # a whole part waits for its turn
        self._room.append(waiter)
        return waiter

    async def _settle(self) -> None:
        """Wait until no part is being sent (each has been stored, or failed)."""
        while self._in_flight:
            waiter: Deferred[None] = Deferred()
            self._idle.append(waiter)
            await waiter

    async def _drain(self) -> None:
        """Wait until no part is being sent; raise the error of one that failed."""
        await self._settle()
        if self._error is not None:
            raise self._error

    def _sent(self) -> list[tuple[int, str, int]]:
        return sorted(self._parts)

    # finishing

    async def _finish(self, commit: bool) -> None:
        if self._closed:
            raise ValueError("writer is closed")
        try:
            await self._drain()
        finally:
            self._closed = True
        if self._state_size is not None:
            if not commit:
                return  # nothing was written: the state at the key says it all
            await self._load_state()
        tail = await self._prepare(*self._take())
        self.version = None
        if self._upload_id is None:
            etag = await self._client.put(self._key, tail, await self._driver.payload_hash(tail))
        elif commit:
            if tail:
                await self._send_part(self._number(), [tail], len(tail))  # already hashed
            await self._client.complete_multipart(self._key, self._upload_id, [(n, e) for n, e, _ in self._sent()])
            return
        else:
            body = UploadState(self._upload_id, tuple(self._sent()), self.size).encode(tail)
            etag = await self._client.put(
                self._key, body, await self._driver.payload_hash(body), metadata={STATE_HEADER: str(self.size)}
            )
        self.version = etag or None

    @_deferred
    async def commit(self):
        await self._finish(commit=True)

    @_deferred
    async def close(self):
        await self._finish(commit=False)

    @_deferred
    async def cancel(self):
        self._chunks, self._buffered = [], 0
        await self._settle()  # a part that failed does not matter to an upload that is aborted
        self._closed = True
        if self._state_size is not None:
            try:
                await self._load_state()
            except Exception as e:  # noqa: BLE001 cancel removes what it can: without the state, the key below
                log.warn("cancelling the upload at {key}: its state could not be read: {error}", key=self._key, error=e)
        if self._upload_id is not None:
            await self._client.abort_multipart(self._key, self._upload_id)
        await self._client.delete(self._key)


@implementer(IReader)
class _Reader:
    """Reads one ranged GET as it arrives; the connection pauses while the caller is behind."""

    def __init__(self, stream, size: int):
        self._stream = stream
        self.size = size

    def read(self, amount):
        if self._stream is None:
            return succeed(b"")
        return Deferred.fromCoroutine(self._stream.read(amount))

    def close(self):
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        return succeed(None)


DRIVER = DriverFactory(
    name="s3",
    settings_type=S3Settings,
    parse=S3Settings.from_dict,
    sources=s3_sources,
    describe=lambda settings, data_dir: settings.describe(),
    build=lambda settings, data_dir, reactor: S3Driver(settings, reactor=reactor),
)
