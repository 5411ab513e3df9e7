"""
Filling the cache with one blob: one upstream GET whose bytes go into
storage and, as they arrive, to every client waiting for that blob.

The bytes go into the local registry through `Registry.receive_blob`: an
upload session of the repository (so an interrupted fill is cleaned up by
garbage collection like any abandoned upload), hashed as they pass, capped
at ``max_upload_size``; the blob becomes visible only when the whole body is
in and the registry verified its size and digest, as it does for a push.
Nothing here writes the registry's content.

Clients read through a `_Follower` (an `IReader`):

- a client that joins before the first byte is *live*: chunks are handed to
  it in memory as they arrive, up to `LIVE_LIMIT` bytes ahead of it;
- a client that joins later, or falls more than `LIVE_LIMIT` behind,
  reads from storage instead: the partial upload data while the fill runs
  (where the storage can read a file being written, as the filesystem can;
  otherwise it waits), the published blob after;
- the last byte is held back from every client until the digest is
  verified, so a client never receives a whole, wrong blob: a failed fill
  breaks the connections it feeds.  (A client asking for a part of the blob
  is not given a follower: it waits for the verified blob, see
  `ProxyRegistry.open_blob`.)

The upstream is read only as fast as storage takes the bytes; a slow client
never slows the fill, and memory stays bounded whatever the blob's size.
No more is taken from the upstream than the size it announced, or than
``max_upload_size`` when it announced none (a larger announced size is
refused before the body is read).  Once verified, the blob is recorded as
sent by this upstream (`Registry.sent_by`), which lets other repositories of
the same upstream link it after a HEAD (`ProxyRegistry._blob_source`).
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import DigestInvalid, TooLarge
from ..reference import Digest, Name
from ..storage.interfaces import IReader, PathNotFound
from .claim import Claim, FillClaims, FillElsewhereFailed
from .client import IUpstream, UpstreamUnavailable

log = Logger()

LIVE_LIMIT = 2 << 20  # bytes a live client may fall behind before it reads from storage


class _Signal:
    """A one-shot result many can wait for."""

    def __init__(self):
        self._waiters: list[Deferred] = []
        self.fired = False
        self._value = None
        self._error: BaseException | None = None

    def wait(self) -> Deferred:
        if self.fired:
            return fail(self._error) if self._error is not None else succeed(self._value)
        waiter: Deferred = Deferred()
        self._waiters.append(waiter)
        return waiter

    def fire(self, value=None) -> None:
        if not self.fired:
            self.fired, self._value = True, value
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(value)

    def fail(self, error: BaseException) -> None:
        if not self.fired:
            self.fired, self._error = True, error
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.errback(error)


class BlobFill:
    """One upstream fetch of ``digest`` into storage; see the module docstring."""

    def __init__(
        self,
        registry,
        upstream: IUpstream,
        name: Name,
        remote_name: Name,
        digest: Digest,
        on_done=None,
        claims: FillClaims | None = None,
    ):
        self.registry = registry
        self.storage = registry.storage
        self.upstream = upstream
        self.name = name
        self.remote_name = remote_name
        self.digest = digest
        self.names = {name}  # repositories the blob is linked into when it is in
        self.size: int | None = None  # from Content-Length; known before the body arrives
        self.limit: int | None = None  # bytes taken from the upstream at most: its announced size, or the upload limit
        self.received = 0
        self.data_path: str | None = None
        self.complete = False
        self.error: BaseException | None = None
        self._sized = _Signal()
        self._finished = _Signal()
        self._progress: list[Deferred] = []
        self._live: set[_Follower] = set()
        self._on_done = on_done
        self._claims = claims
        # True while another process holds the claim: clients read what it stores, none is live.
        self.remote = False

    def __repr__(self) -> str:
        return f"<BlobFill {self.digest} {self.received}/{self.size}>"

    @property
    def done(self) -> bool:
        return self.complete or self.error is not None

    def start(self) -> Deferred:
        return Deferred.fromCoroutine(self._run())

    def wait_size(self) -> Deferred:
        """Fires with the blob's size as soon as the upstream said it (at the end, if it did not)."""
        return self._sized.wait()

    def wait_done(self) -> Deferred:
        """Fires when the blob is stored and linked; fails as the fill failed."""
        return self._finished.wait()

    def progress(self) -> Deferred:
        """Fires at the next chunk, or at the end."""
        if self.done:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._progress.append(waiter)
        return waiter

    def _notify(self) -> None:
        waiters, self._progress = self._progress, []
        for waiter in waiters:
            waiter.callback(None)

    def follow(self, offset: int = 0) -> _Follower:
        """A reader of the blob from ``offset``; only once the size is known."""
        if self.size is None:
            raise ValueError("the blob's size is not known yet")
        return _Follower(self, offset, self.size)

    def _chunk(self, incoming, chunk: bytes):
        self.received += len(chunk)
        if self.size is not None and self.received > self.size:
            raise UpstreamUnavailable(f"the upstream sent more than the {self.size} bytes it announced")
        try:
            pending = incoming.write(chunk)  # the registry's limit: TooLarge past max_upload_size
        except TooLarge:
            raise UpstreamUnavailable(
                f"the upstream sent more than max_upload_size ({self.registry.max_upload_size} bytes)"
            ) from None
        for follower in list(self._live):
            follower._feed(chunk)
        self._notify()
        return pending

    async def _published(self) -> bool:
        """Whether the blob is stored, sent by this upstream (as a fill in any process leaves it)."""
        return await self.registry.sent_by(self.digest, self.upstream.url)

    def _seen(self, record) -> None:
        """What the claim of the process fetching the blob says: its size, where its bytes are written."""
        if record.size is not None and self.size is None:
            self.size = record.size
            self._sized.fire(self.size)
        if record.data is not None and self.data_path is None:
            self.data_path = record.data

    async def _claim(self) -> Claim | None:
        """
        This process's claim on the fetch; None when another process stored
        the blob meanwhile (and it is linked here now).
        """
        assert self._claims is not None
        for _ in range(8):
            outcome = await self._claims.acquire(self.upstream.url, self.digest, str(self.remote_name))
            if isinstance(outcome, Claim):
                if not await self._published():
                    self.remote = False
                    return outcome
                await outcome.release()  # stored by a fill whose claim was released just before ours
                fetched_for = None
            else:
                self.remote = True
                try:
                    stored = await self._claims.wait(outcome, self._published, self._seen, self._notify)
                except FillElsewhereFailed as e:
                    raise UpstreamUnavailable(str(e)) from None
                if not stored:
                    continue  # its holder died: take the fetch over
                fetched_for = outcome.record.remote
            if fetched_for != str(self.remote_name):
                # Fetched for another repository: linked here only once the upstream confirms it
                # holds the blob under this name too (as in ProxyRegistry._blob_source).
                await self.upstream.head_blob(self.remote_name, self.digest)
            info = await self._link()
            if info is None:
                continue  # gone again meanwhile
            self.size = info.size
            self.complete = True
            log.info(
                "{digest} ({size} bytes) from {upstream} was cached by another process; linked for {names}",
                digest=str(self.digest),
                size=self.size,
                upstream=self.upstream.url,
                names=", ".join(sorted(map(str, self.names))),
            )
            return None
        raise UpstreamUnavailable(f"the fetch of {self.digest} kept changing hands")

    async def _link(self):
        """Link the stored blob into every repository waiting for it; its `BlobInfo`, or None if it is not stored."""
        info = await self.registry.adopt_blob(self.name, self.digest)
        if info is None:
            return None
        linked: set = {self.name}
        while self.names - linked:  # repositories may join while the links are written
            for name in sorted(self.names - linked, key=str):
                await self.registry.adopt_blob(name, self.digest)
                linked.add(name)
        return info

    async def _run(self) -> None:
        incoming = None
        claim = None
        try:
            if self._claims is not None:
                claim = await self._claim()
                if claim is None:
                    return
            blob = await self.upstream.get_blob(self.remote_name, self.digest)
            self.limit = self.registry.max_upload_size or None
            if blob.length is not None and self.limit is not None and blob.length > self.limit:
                blob.cancel()
                raise UpstreamUnavailable(
                    f"the upstream's blob is {blob.length} bytes, more than max_upload_size ({self.limit} bytes)"
                )
            try:
                incoming = await self.registry.receive_blob(self.name, self.digest)
            except BaseException:
                blob.cancel()
                raise
            self.data_path = incoming.data_path
            if blob.length is not None and self.size is not None and blob.length != self.size:
                blob.cancel()
                raise UpstreamUnavailable(f"the upstream announced {blob.length} bytes, before {self.size}")
            if blob.length is not None:
                self.size = blob.length
                self._sized.fire(self.size)
            if claim is not None:
                # Where moving is a rename, the data being written is a file other
                # processes can read as it grows; on object storage it is not there yet.
                await claim.update(size=self.size, data=incoming.shared_path)
            await blob.deliver(lambda chunk: self._chunk(incoming, chunk))
            if self.size is not None and self.received != self.size:
                raise UpstreamUnavailable(f"the upstream sent {self.received} of {self.size} bytes")
            try:
                await incoming.publish(self.received, source=self.upstream.url)
            except DigestInvalid:
                raise UpstreamUnavailable(
                    f"the upstream sent a blob with digest {incoming.actual} for {self.digest}"
                ) from None
            self.size = self.received
            await self._link()
            self.complete = True
            log.info(
                "cached {digest} ({size} bytes) from {upstream} for {names}",
                digest=str(self.digest),
                size=self.size,
                upstream=self.upstream.url,
                names=", ".join(sorted(map(str, self.names))),
            )
        except Exception as e:  # noqa: BLE001 whatever broke the fill is every waiter's answer, not the reactor's
            self.error = e
            log.warn(
                "fetching {digest} from {upstream} failed: {error}",
                digest=str(self.digest),
                upstream=self.upstream.url,
                error=e,
            )
        finally:
            if claim is not None:
                try:
                    await claim.release()
                except Exception:  # noqa: BLE001 a claim left behind expires; the fill's own outcome stands
                    log.failure("releasing the claim {path}", path=claim.path)
            if incoming is not None:
                try:
                    await incoming.discard()
                except Exception:  # noqa: BLE001 a session left behind is logged; the fill's own outcome stands
                    log.failure("removing the upload session of a fill of {digest}", digest=str(self.digest))
            self._live.clear()
            if self.error is None:
                self._sized.fire(self.size)
                self._finished.fire(self.size)
            else:
                self._sized.fail(self.error)
                self._finished.fail(self.error)
            self._notify()
            if self._on_done is not None:
                self._on_done(self)


class FillFailed(UpstreamUnavailable):
    """The fill a client was reading failed; its connection is dropped."""


@implementer(IReader)
class _Follower:
    """A client's reader of a blob being filled: from memory while live, from storage otherwise."""

    def __init__(self, fill: BlobFill, offset: int, size: int):
        self._fill = fill
        self.size = size
        self._pos = offset
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._reader: IReader | None = None
        self._reading_published = False
        self._live = offset == fill.received and not fill.done and not fill.remote
        if self._live:
            fill._live.add(self)

    def _feed(self, chunk: bytes) -> None:
        self._queue.append(chunk)
        self._queued += len(chunk)
        if self._queued > LIVE_LIMIT:
            # The client is slower than the upstream: it catches up from storage, not memory.
            self._fill._live.discard(self)
            self._live = False
            self._queue.clear()
            self._queued = 0

    def read(self, amount: int) -> Deferred:
        return Deferred.fromCoroutine(self._read(amount))

    def _allowed(self, amount: int) -> int:
        # Until the digest is verified, the last byte stays here.
        end = self.size if self._fill.complete else self.size - 1
        return min(amount, end - self._pos)

    async def _read(self, amount: int) -> bytes:
        fill = self._fill
        while True:
            if fill.error is not None:
                raise FillFailed(str(fill.error))
            if self._pos >= self.size:
                return b""
            allowed = self._allowed(amount)
            if allowed <= 0:
                await fill.progress()
                continue
            if self._queue:
                return self._take(allowed)
            if self._live and not fill.done:
                await fill.progress()
                continue
            data = await self._read_stored(allowed)
            if data:
                self._pos += len(data)
                return data
            if fill.complete:
                raise FillFailed(f"the stored blob {fill.digest} ends at {self._pos} of {self.size} bytes")
            await fill.progress()

    def _take(self, allowed: int) -> bytes:
        parts, taken = [], 0
        while self._queue and taken < allowed:
            chunk = self._queue[0]
            need = allowed - taken
            if len(chunk) <= need:
                parts.append(self._queue.popleft())
                taken += len(chunk)
            else:
                parts.append(chunk[:need])
                self._queue[0] = chunk[need:]
                taken += need
        self._queued -= taken
        self._pos += taken
        return b"".join(parts)

    async def _read_stored(self, amount: int) -> bytes:
        fill = self._fill
        if fill.complete and not self._reading_published:
            await self._close_reader()
            self._reader = await fill.registry.open_blob(fill.name, fill.digest, self._pos)
            self._reading_published = True
        elif self._reader is None:
            if fill.data_path is None:
                return b""
            try:
                self._reader = await fill.storage.open_reader(fill.data_path, self._pos)
            except PathNotFound:
                return b""  # not readable while it is written: wait for the published blob
        return await self._reader.read(amount)

    async def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()

    def close(self) -> Deferred:
        self._fill._live.discard(self)
        self._queue.clear()
        return Deferred.fromCoroutine(self._close_reader())
