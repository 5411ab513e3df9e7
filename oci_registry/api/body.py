"""
Request bodies, read only when the handler asks, after it has authorized
the request.

`twisted.web`'s `Request` buffers a whole body (to a temporary file above
~100 KB) before any resource runs: anyone could make the registry hold
memory before it knows who they are, and every layer would be written
twice.  `StreamingRequest` instead routes every request that carries a body
as soon as its headers arrive and keeps the socket paused (holding at most
the bytes that came with the headers) until the handler asks for the body:

- `body_of(request)` hands a blob upload's chunks to the upload's storage
  writer as they come off the socket, pausing the socket while storage is
  behind (back-pressure);
- `read_small_body(request, limit)` reads a manifest or a form into memory,
  refusing one declared larger than ``limit`` at once (413), and drawing on
  the site's `BodyBudget` for all such bodies held at once (503 past it).

A handler that answers without reading the body (401, 413, ...) answers at
once; the connection is then closed rather than the body read (see
`RegistryChannel.linger`).  In a plain `twisted.web` `Site` (the registry
embedded in another application) both functions read the body twisted.web
has buffered.
"""

from __future__ import annotations

import io
from collections import deque
from typing import Protocol
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web import server

from .. import twisted_compat as compat
from ..bulk import raise_limits, restore_limits
from ..errors import TooLarge, Unavailable
from ..logs import in_request
from .access_log import log_request
from .channel import BodyRefused
from .context import IRequestContext, make_context
from .forwarded import TrustedProxies

log = Logger()

READ_BLOCK = 1 << 20
FORM_LIMIT = 64 << 10  # bytes of a form (the token endpoint's)
BULK_BODY = 256 << 10  # small bodies from this size on are read in larger blocks
MAX_DIGITS = 18
# Chunked bodies: each chunk costs microseconds of the reactor's time to
# decode whatever its size (one client sending 1-byte chunks stalled every
# other request for seconds).  Past the first chunks, a body's chunks must
# average at least this many bytes.
MIN_CHUNK_AVERAGE = 1024
FREE_CHUNKS = 256


class ChunkWriter(Protocol):
    """Where `BodyStream.deliver` writes: a storage writer, or a small body held in memory."""

    def write(self, data: bytes) -> Deferred:
        """Take ``data``; fire when more may be written (the writer's back-pressure)."""
        ...


class BodyBudget:
    """Bytes of small request bodies held in memory at once, across all requests of a process (0: no limit)."""

    def __init__(self, limit: int = 0):
        self.limit = limit
        self.used = 0

    def take(self, amount: int) -> bool:
        if self.limit and self.used + amount > self.limit:
            return False
        self.used += amount
        return True

    def give_back(self, amount: int) -> None:
        self.used -= amount


class ContentBody:
    """The buffered body of a plain `twisted.web` request."""

    def __init__(self, content):
        self._content = content

    def deliver(self, writer) -> Deferred:
        async def deliver():
            total = 0
            content = self._content
            content.seek(0)
            while True:
                block = content.read(READ_BLOCK)
                if not block:
                    return total
                total += len(block)
                await writer.write(block)

        return Deferred.fromCoroutine(deliver())


class BodyStream:
    """
    The body of a `StreamingRequest`: held (the socket paused) until
    `deliver` attaches a writer, then passed on chunk by chunk.
    """

    def __init__(self, request: StreamingRequest):
        self._request = request
        self._chunks: deque[bytes] = deque()
        self._writer: ChunkWriter | None = None
        self._writing = False
        self._paused = False
        self._complete = False
        self._failure: Failure | None = None
        self._delivered: Deferred | None = None
        self._total = 0
        self.discarding = False

    # from the request

    def data(self, chunk: bytes) -> None:
        if self.discarding or self._failure is not None:
            return
        self._chunks.append(chunk)
        if self._writer is not None:
            self._flush()
        else:
            self._pause()

    def complete(self) -> None:
        self._complete = True
        self._maybe_done()

    def fail(self, failure: Failure) -> None:
        if self._complete:
            return
        self._failure = failure
        self._chunks.clear()
        self._maybe_done()

    @property
    def is_received(self) -> bool:
        """The whole body has arrived (a failed write does not count: the rest is still coming)."""
        return self._complete

    @property
    def paused(self) -> bool:
        """The socket is paused by this body (not asked for yet, or its writer is behind)."""
        return self._paused

    def hold(self) -> None:
        """Read nothing more until a writer is attached."""
        self._pause()

    # to the handler

    def deliver(self, writer: ChunkWriter, bulk: bool = True) -> Deferred:
        """
        Write every chunk into ``writer``, honouring its back-pressure; fires
        with the byte count.  ``bulk``: a blob is coming (larger socket reads).
        """
        if self._delivered is not None:
            raise RuntimeError("a request body can be delivered only once")
        self._delivered = Deferred()
        self._writer = writer
        self._request.start_reading(bulk)
        self._flush()
        self._maybe_done()
        return self._delivered

    def discard(self) -> None:
        """Drop the body: the handler has answered without it."""
        self.discarding = True
        self._chunks.clear()

    # internals

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            transport = getattr(self._request.channel, "transport", None)
            if transport is not None:
                transport.pauseProducing()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            transport = getattr(self._request.channel, "transport", None)
            if transport is not None:
                transport.resumeProducing()

    def _flush(self) -> None:
        writer = self._writer  # set by deliver, before the first flush
        while writer is not None and self._chunks and not self._writing and self._failure is None:
            chunk = self._chunks.popleft()
            self._total += len(chunk)
            ready = writer.write(chunk)
            if not ready.called:
                self._writing = True
                self._pause()
                ready.addCallbacks(self._written, self._write_failed)
                return
            ready.addErrback(self._write_failed)
        if not self._writing and self._failure is None:
            self._resume()

    def _written(self, _) -> None:
        self._writing = False
        self._flush()
        self._maybe_done()

    def _write_failed(self, failure: Failure) -> None:
        self._writing = False
        if self._failure is None:
            self._failure = failure
        self._chunks.clear()
        self.discarding = True
        self._maybe_done()

    def _maybe_done(self) -> None:
        d = self._delivered
        if d is None or d.called or self._writing:
            return
        if self._failure is not None:
            d.errback(self._failure)
        elif self._complete and not self._chunks:
            d.callback(self._total)


class _SmallBody:
    """A writer gathering a small body in memory, within its limit and the site's budget."""

    def __init__(self, limit: int, budget: BodyBudget | None, reserved: int):
        self.limit = limit
        self.budget = budget
        self.reserved = reserved  # taken from the budget up front (the declared length)
        self.taken = reserved
        self.size = 0
        self._parts: list[bytes] = []

    def write(self, chunk: bytes) -> Deferred:
        self.size += len(chunk)
        if self.size > self.limit:
            return fail(TooLarge(f"the request body may be at most {self.limit} bytes"))
        extra = self.size - self.taken
        if extra > 0 and self.budget is not None:
            if not self.budget.take(extra):
                return fail(_busy())
            self.taken += extra
        self._parts.append(chunk)
        return succeed(None)

    def data(self) -> bytes:
        data = b"".join(self._parts)
        self._parts = [data]
        return data

    def release(self, _=None) -> None:
        if self.budget is not None and self.taken:
            self.budget.give_back(self.taken)
        self.taken = 0
        self._parts = []


def _busy() -> Unavailable:
    return Unavailable(
        "too many request bodies are being received at once; try again shortly", headers={"Retry-After": "5"}
    )


def declared_length(request) -> int | None:
    """The request's ``Content-Length``, or None (none, or chunked)."""
    value = request.getHeader(b"content-length")
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode("latin-1")
    value = value.strip()
    if not value.isdigit() or len(value.lstrip(b"0")) > MAX_DIGITS:
        return None
    return int(value)


class StreamingRequest(server.Request):
    """
    A `Request` routed from its headers, whose body is read when (and if)
    its handler asks; it carries a `RequestContext` (request id, origin)
    from the moment it is routed, and is handled in a logging context of
    its own (`oci_registry.logs.in_request`).
    """

    body_stream: BodyStream | None = None
    args: dict[bytes, list[bytes]]  # type: ignore[assignment]  # Twisted declares Request.args by its default, None
    _watchdog = None
    _body_bytes = 0
    _bulk = None
    _saved_timeout = None
    _reading = False
    _closing = False
    _chunked = False
    _chunks = 0

    @property
    def body_bytes(self) -> int:
        """Request body bytes received so far."""
        return self._body_bytes

    def process(self):
        site = self.channel.site
        context = make_context(self, getattr(site, "trusted_proxies", None) or TrustedProxies())
        self.setComponent(IRequestContext, context)
        self.setHeader(b"x-request-id", context.request_id.encode("ascii"))
        tracker = getattr(site, "tracker", None)
        if tracker is not None:
            tracker.started(self)
        metrics = getattr(site, "request_metrics", None)
        if metrics is not None:
            metrics.started(self)
        return in_request(context.request_id, super().process)

    def gotLength(self, length):
        if length == 0:
            return super().gotLength(length)
        self._chunked = length is None
        channel = self.channel
        self.content = io.BytesIO()
        self.body_stream = BodyStream(self)
        self.body_stream.hold()
        # Nothing is read while the handler decides: the idle timeout waits too.
        self._saved_timeout = channel.setTimeout(None)
        compat.start_request(self, *compat.request_line(channel))

    def start_reading(self, bulk: bool) -> None:
        """The handler asks for the body: restore the idle timeout, send "100 Continue" if expected, read on."""
        channel = self.channel
        if self._reading or channel is None or self.body_stream is None or self.body_stream.is_received:
            return
        self._reading = True
        if self._saved_timeout:
            channel.setTimeout(self._saved_timeout)
        expect = self.requestHeaders.getRawHeaders(b"expect")
        if expect and expect[0].lower() == b"100-continue" and self.clientproto == b"HTTP/1.1":
            compat.send_100_continue(channel)
        if bulk:
            self._bulk = raise_limits(channel.transport, read=True)  # a blob is coming
        self._start_watchdog()

    def _start_watchdog(self) -> None:
        """Drop a client whose body trickles in slower than the site's minimum rate."""
        site = getattr(self.channel, "site", None)
        rate = getattr(site, "min_body_rate", 0)
        window = getattr(site, "body_rate_window", 0)
        if site is None or not rate or not window:
            return
        from twisted.internet.task import LoopingCall

        seen = [0]

        def check():
            received = self._body_bytes - seen[0]
            seen[0] = self._body_bytes
            # A paused socket (storage behind) is our doing, not the client's.
            if self.body_stream is not None and self.body_stream.paused:
                return
            if received < rate * window:
                log.warn(
                    "dropping {client}: request body arrives at {rate:.0f} B/s",
                    client=self.getClientAddress(),
                    rate=received / window,
                )
                self._stop_watchdog()
                self.channel.transport.abortConnection()

        self._watchdog = LoopingCall(check)
        self._watchdog.clock = site.reactor
        self._watchdog.start(window, now=False)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None

    def handleContentChunk(self, data):
        self._body_bytes += len(data)
        if self._chunked:
            self._chunks += 1
            if self._chunks > FREE_CHUNKS and self._body_bytes < self._chunks * MIN_CHUNK_AVERAGE:
                raise BodyRefused(
                    f"the body's chunks average {self._body_bytes // self._chunks} bytes;"
                    f" at least {MIN_CHUNK_AVERAGE} are required"
                )
        if self.body_stream is not None:
            self.body_stream.data(data)
        else:
            self.content.write(data)

    def requestReceived(self, command, path, version):
        if self.body_stream is None:
            return super().requestReceived(command, path, version)
        self._stop_watchdog()
        restore_limits(self._bulk)
        self._bulk = None
        if self._saved_timeout:
            compat.restore_idle_timeout_after_request(self.channel, self._saved_timeout)
        self.body_stream.complete()
        tracker = getattr(getattr(getattr(self, "channel", None), "site", None), "tracker", None)
        if tracker is not None:
            tracker.received(self)

    def write(self, data):
        if not self.startedWriting:
            self._close_if_body_unread()
            tracker = getattr(getattr(getattr(self, "channel", None), "site", None), "tracker", None)
            if tracker is not None:
                tracker.answering(self)  # a scheduled GC stops giving way to it (`RequestTracker.waiting`)
        return super().write(data)

    def finish(self):
        self._close_if_body_unread()
        return super().finish()

    def _close_if_body_unread(self) -> None:
        # Answering without the (whole) body: close rather than read the rest.
        stream = self.body_stream
        if stream is None or stream.is_received or compat.disconnected(self) or self._closing:
            return
        self._closing = True
        stream.discard()
        close = getattr(self.channel, "close_after_response", None)
        if close is not None:
            close()
            if not self.startedWriting:
                self.setHeader(b"connection", b"close")

    def connectionLost(self, reason):
        if not self.finished and self.getComponent(IRequestContext) is not None:
            cut = getattr(self.channel, "cut_reason", None)
            metrics = getattr(self.site, "request_metrics", None)
            if metrics is not None:
                metrics.ended(self, answered=False)
            if cut or getattr(self.site, "access_log", True):
                log_request(
                    self,
                    error=cut or "the connection closed before the response was complete",
                    level=LogLevel.warn if cut else None,
                )
        self._stop_watchdog()
        restore_limits(self._bulk)
        self._bulk = None
        if self.body_stream is not None:
            self.body_stream.fail(reason)
        return super().connectionLost(reason)


def body_of(request) -> BodyStream | ContentBody:
    """The request's body as something a storage writer can be fed from."""
    stream = getattr(request, "body_stream", None)
    if stream is not None:
        return stream
    return ContentBody(request.content)


async def read_small_body(request, limit: int) -> bytes:
    """
    The whole body of a small request (a manifest, a form), at most
    ``limit`` bytes (else 413, at once when the declared length says so).
    """
    stream = getattr(request, "body_stream", None)
    if stream is None:  # no body, or one a plain Site has buffered
        content = request.content
        content.seek(0, io.SEEK_END)
        if content.tell() > limit:
            raise TooLarge(f"the request body may be at most {limit} bytes")
        content.seek(0)
        return content.read()
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise TooLarge(f"the request body may be at most {limit} bytes")
    if compat.disconnected(request) or request.finished:
        raise ConnectionLost()
    budget = getattr(getattr(request.channel, "site", None), "body_budget", None)
    reserved = declared or 0
    if budget is not None and not budget.take(reserved):
        raise _busy()
    body = _SmallBody(limit, budget, reserved)
    request.notifyFinish().addBoth(body.release)
    await stream.deliver(body, bulk=reserved >= BULK_BODY)
    return body.data()


async def read_form(request, limit: int = FORM_LIMIT) -> None:
    """
    Add the fields of a form (``application/x-www-form-urlencoded``) POSTed
    as the body to ``request.args``, as twisted.web does itself when it has
    buffered the body.
    """
    if getattr(request, "body_stream", None) is None:
        return
    content_type = (request.getHeader(b"content-type") or b"").split(b";", 1)[0].strip().lower()
    if content_type != b"application/x-www-form-urlencoded":
        return
    data = await read_small_body(request, limit)
    request.args.update(parse_qs(data, keep_blank_values=True))
