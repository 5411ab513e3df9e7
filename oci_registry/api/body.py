"""
Request bodies, streamed.

`twisted.web`'s `Request` buffers a whole body (to a temporary file above
~100 KB) before any resource runs, which would write every layer twice.
`StreamingRequest` instead starts routing a blob upload (``POST``, ``PATCH``
or ``PUT`` under ``/v2/<name>/blobs/uploads/``) as soon as its headers
arrive, and hands each body chunk to the upload's storage writer as it comes
off the socket, pausing the socket while storage is behind (back-pressure).

Handlers see a `Body` either way: `body_of(request)` gives the live stream
for a `StreamingRequest`, or reads the buffered ``request.content`` of a
plain `Request` (the registry embedded in another application's `Site`).
"""

from __future__ import annotations

import re
import tempfile
from collections import deque

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server

from ..bulk import raise_limits, restore_limits

log = Logger()

UPLOAD_PATH = re.compile(rb"^/v2/.+/blobs/uploads/[^/?]*(\?.*)?$")
STREAMED_METHODS = (b"POST", b"PATCH", b"PUT")
READ_BLOCK = 1 << 20
HIGH_WATER = 4 << 20  # bytes held before the socket is paused


class BodyTooLarge(Exception):
    """A buffered (non-upload) request body went over the site's limit."""


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
    """The body of a `StreamingRequest`, delivered chunk by chunk to a writer."""

    def __init__(self, request: StreamingRequest):
        self._request = request
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._writer = None
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
        self._buffered += len(chunk)
        if self._writer is not None:
            self._flush()
        elif self._buffered > HIGH_WATER:
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

    # to the handler

    def deliver(self, writer) -> Deferred:
        if self._delivered is not None:
            raise RuntimeError("a request body can be delivered only once")
        self._delivered = Deferred()
        self._writer = writer
        self._flush()
        self._maybe_done()
        return self._delivered

    def discard(self) -> None:
        """Drop the rest of the body: the handler has answered without it."""
        self.discarding = True
        self._chunks.clear()
        self._buffered = 0
        self._resume()

    # internals

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self._request.channel.transport.pauseProducing()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            transport = getattr(self._request.channel, "transport", None)
            if transport is not None:
                transport.resumeProducing()

    def _flush(self) -> None:
        while self._chunks and not self._writing and self._failure is None:
            chunk = self._chunks.popleft()
            self._buffered -= len(chunk)
            self._total += len(chunk)
            ready = self._writer.write(chunk)
            if not ready.called:
                self._writing = True
                self._pause()
                ready.addCallbacks(self._written, self._write_failed)
                return
            ready.addErrback(self._write_failed)
        if not self._writing:
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
        self._resume()
        self._maybe_done()

    def _maybe_done(self) -> None:
        d = self._delivered
        if d is None or d.called or self._writing:
            return
        if self._failure is not None:
            d.errback(self._failure)
        elif self._complete and not self._chunks:
            d.callback(self._total)


class _LimitedContent:
    """A buffer for small bodies (manifests) that refuses to grow past a limit."""

    def __init__(self, limit: int):
        self.limit = limit
        self.overflow = False
        self._file = tempfile.SpooledTemporaryFile(max_size=1 << 20)

    def write(self, data: bytes) -> None:
        if self.overflow:
            return
        if self._file.tell() + len(data) > self.limit:
            self.overflow = True
            self._file.truncate(0)
            return
        self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)


class StreamingRequest(server.Request):
    """A `Request` that streams blob upload bodies instead of buffering them."""

    body_stream: BodyStream | None = None
    _finish_deferred = False
    _watchdog = None
    _body_bytes = 0
    _bulk = None

    def gotLength(self, length):
        if length != 0:
            self._start_watchdog()
        channel = self.channel
        command = getattr(channel, "_command", None)
        path = getattr(channel, "_path", None)
        if command in STREAMED_METHODS and path is not None and UPLOAD_PATH.match(path):
            self.body_stream = BodyStream(self)
            self.content = _LimitedContent(0)
            self._bulk = raise_limits(channel.transport, read=True)  # a blob is coming
            self._start(command, path, channel._version)
            return
        limit = getattr(getattr(channel, "site", None), "max_body_size", None)
        if limit is None:
            return super().gotLength(length)
        self.content = _LimitedContent(limit)
        if length is not None and length > limit:
            self.content.overflow = True

    def _start(self, command: bytes, path: bytes, version: bytes) -> None:
        # What Request.requestReceived does, minus reading a finished body.
        self.method, self.uri = command, path
        self.clientproto = version
        self.args = {}
        base, _, query = path.partition(b"?")
        self.path = base
        if query:
            from urllib.parse import parse_qs

            self.args = parse_qs(query, keep_blank_values=True)
        self.process()

    def _start_watchdog(self) -> None:
        """Drop a client whose body trickles in slower than the site's minimum rate."""
        site = getattr(self.channel, "site", None)
        rate = getattr(site, "min_body_rate", 0)
        window = getattr(site, "body_rate_window", 0)
        if not rate or not window:
            return
        from twisted.internet.task import LoopingCall

        seen = [0]

        def check():
            received = self._body_bytes - seen[0]
            seen[0] = self._body_bytes
            # A paused socket (storage behind) is our doing, not the client's.
            if self.body_stream is not None and self.body_stream._paused:
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
        if self.body_stream is not None:
            self.body_stream.data(data)
        else:
            self.content.write(data)

    def requestReceived(self, command, path, version):
        self._stop_watchdog()
        restore_limits(self._bulk)
        self._bulk = None
        if self.body_stream is None:
            return super().requestReceived(command, path, version)
        self.body_stream.complete()
        if self._finish_deferred:
            self._finish_deferred = False
            server.Request.finish(self)

    def finish(self):
        # Answering before the body is in (an error found early) must wait
        # for the rest of the body, or it would be parsed as the next request.
        stream = self.body_stream
        if stream is not None and not stream.is_received and not self._disconnected:
            stream.discard()
            self._finish_deferred = True
            return None
        return super().finish()

    def connectionLost(self, reason):
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


def read_small_body(request) -> bytes:
    """The whole (buffered) body of a small request, such as a manifest PUT."""
    content = request.content
    if getattr(content, "overflow", False):
        raise BodyTooLarge()
    content.seek(0)
    return content.read()


class RegistryChannel(http.HTTPChannel):
    """
    An `HTTPChannel` that refuses a TLS handshake at once.  Clients such as
    skopeo and docker try HTTPS first against an insecure registry and fall
    back to plain HTTP only when the handshake fails; without this answer they
    wait for their handshake timeout (10 s) on every connection.
    """

    _first = True
    _content_length = None

    def _maybeChooseTransferDecoder(self, header, data):
        # RFC 9110 8.6: a repeated Content-Length with the same value is one
        # value (Go's server accepts it too, and some clients send it twice).
        if header == b"Content-Length":
            if self._transferDecoder is not None and data == self._content_length:
                return True
            self._content_length = data
        elif header == b"Transfer-Encoding" and self._transferDecoder is None:
            self._content_length = None
        return super()._maybeChooseTransferDecoder(header, data)

    def dataReceived(self, data):
        if self._first:
            self._first = False
            if data[:2] == b"\x16\x03":
                self.transport.write(
                    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
                )
                self.transport.loseConnection()
                return
        return super().dataReceived(data)
