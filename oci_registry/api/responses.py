"""
Pieces of HTTP the routes share: JSON bodies, byte ranges, pagination links,
and sending a stored blob with back-pressure.
"""

from __future__ import annotations

import json
import os
import re
import select
from urllib.parse import urlencode

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from ..bulk import raise_limits, restore_limits
from ..errors import RangeInvalid, RegistryError

log = Logger()

SEND_BLOCK = 1 << 20
# Bytes per sendfile(2) call. Small calls keep data flowing to a reader in
# step with it: pulling 256 MiB over loopback (median of 8, alternating),
# 32 KiB gave 3.1 GB/s to one client and 3.3 GB/s to four, 4 MiB 1.9 and
# 3.6, 64 KiB 1.7 and 2.9; the reference registry 2.6 and 3.1.
SENDFILE_BLOCK = 32 << 10
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
HUGE = 1 << 62  # any number too long to be a size or a count


def number(digits: str) -> int:
    """The value of a string of ASCII digits (already matched); `HUGE` for one longer than 18 digits."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else HUGE


class PaginationInvalid(RegistryError):
    code = "PAGINATION_NUMBER_INVALID"
    status = 400
    message = "invalid number of results requested"


def json_body(request, value, content_type: str = "application/json") -> bytes:
    data = json.dumps(value).encode()
    request.setHeader(b"Content-Type", content_type.encode())
    request.setHeader(b"Content-Length", str(len(data)).encode())
    return data


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """
    ``(start, end)`` (inclusive) for a single-range ``Range`` header, None to
    send the whole blob (no header, or a form we choose to ignore, as RFC 9110
    allows), or `RangeInvalid` (416) when it cannot be satisfied.
    """
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = number(last)
        if length == 0 or size == 0:
            raise RangeInvalid(f"range {header} of a {size} byte blob", headers={"Content-Range": f"bytes */{size}"})
        return max(size - length, 0), size - 1
    start = number(first)
    end = number(last) if last else size - 1
    if start >= size or end < start:
        # (RFC 9110 would let us ignore an inverted range; the reference registry
        # and the OCI conformance suite expect 416.)
        raise RangeInvalid(f"range {header} of a {size} byte blob", headers={"Content-Range": f"bytes */{size}"})
    return start, min(end, size - 1)


def page(items: list[str], n: str | None, last: str | None) -> tuple[list[str], bool]:
    """The slice of sorted ``items`` after ``last``, at most ``n`` long, and whether more follow."""
    if last:
        items = [i for i in items if i > last]
    if n is None or n == "":
        return items, False
    if not (n.isascii() and n.isdigit()):
        raise PaginationInvalid(n)
    count = number(n)
    return items[:count], len(items) > count and count > 0


def next_link(path: str, n: str, last: str) -> str:
    return f'<{path}?{urlencode({"n": n, "last": last})}>; rel="next"'


@implementer(IPushProducer)
class _Pump:
    """Tracks whether the client can take more; the sending loop waits on it."""

    def __init__(self):
        self._resume: Deferred | None = None
        self.stopped = False

    def pauseProducing(self):
        if self._resume is None:
            self._resume = Deferred()

    def resumeProducing(self):
        if self._resume is not None:
            d, self._resume = self._resume, None
            d.callback(None)

    def stopProducing(self):
        self.stopped = True
        self.resumeProducing()

    def wait(self):
        return self._resume


def _blocking_sendfile(socket_fd: int, fd: int, offset: int, length: int, timeout: float) -> int:
    """Send from a worker thread: ``os.sendfile`` in a loop, waiting for the socket when it is full."""
    poller = select.poll()
    poller.register(socket_fd, select.POLLOUT)
    sent = 0
    while sent < length:
        try:
            n = os.sendfile(socket_fd, fd, offset + sent, min(length - sent, SENDFILE_BLOCK))
        except BlockingIOError:
            events = poller.poll(timeout * 1000)
            if not events:
                raise TimeoutError("the client stopped reading") from None
            if events[0][1] & (select.POLLERR | select.POLLHUP):
                raise ConnectionError("the client went away") from None
            continue
        if n == 0:
            raise EOFError("the blob is shorter than its recorded size")
        sent += n
    return sent


@implementer(IPushProducer)
class _SendfilePump:
    """
    Sends a file to a plain TCP client with ``os.sendfile``: the kernel copies
    page cache to socket, and no byte passes through Python.

    Once the response headers have left the transport's buffer, a worker
    thread sends the whole range on its own duplicate of the socket (a
    duplicate, so that the descriptor stays this connection's even if the
    reactor closes its own), waiting for the socket itself when it is full,
    with no trip through the reactor per socket-buffer of data.
    """

    def __init__(self, request, transport, fd: int, offset: int, length: int, reactor, timeout: float):
        self._request = request
        self._transport = transport
        self._fd = fd
        self._offset = offset
        self._length = length
        self._reactor = reactor
        self._timeout = timeout
        self._done = Deferred()
        self._started = False

    def start(self) -> Deferred:
        self._request.registerProducer(self, True)
        self._maybe_send()
        return self._done

    def _maybe_send(self) -> None:
        if self._started or self._done.called:
            return
        t = self._transport
        if len(t.dataBuffer) - t.offset or t._tempDataLen:
            # The headers are still in the transport's buffer: ask to be
            # resumed (see FileDescriptor.doWrite) when it has been flushed.
            t.producerPaused = True
            t.startWriting()
            return
        self._started = True
        socket_fd = os.dup(t.fileno())

        def sent(count):
            self._request.sentLength += count
            self._finish(None)

        def failed(failure):
            self._finish(failure.value)

        d = deferToThreadPool(
            self._reactor,
            self._reactor.getThreadPool(),
            _blocking_sendfile,
            socket_fd,
            self._fd,
            self._offset,
            self._length,
            self._timeout,
        )
        d.addBoth(lambda result: (os.close(socket_fd), result)[1])
        d.addCallbacks(sent, failed)

    def _finish(self, error) -> None:
        if self._done.called:
            return
        if not self._request._disconnected:
            self._request.unregisterProducer()
        if error is None:
            self._done.callback(None)
        else:
            self._done.errback(error)

    def pauseProducing(self):
        pass  # the worker thread waits on the socket itself

    def resumeProducing(self):
        self._maybe_send()

    def stopProducing(self):
        pass  # the worker thread sees the closed socket and ends


def _sendfile_transport(request):
    """The request's TCP transport when ``os.sendfile`` can write to it directly (not TLS)."""
    transport = getattr(request.channel, "transport", None)
    if isinstance(transport, tcp.Server) and hasattr(transport, "dataBuffer") and hasattr(os, "sendfile"):
        return transport
    return None


def _abort(request) -> None:
    transport = getattr(request.channel, "transport", None)
    abort = getattr(transport, "abortConnection", None) or getattr(transport, "loseConnection", None)
    if abort is not None:
        abort()


async def send_reader(request, reader, length: int) -> None:
    """Copy ``length`` bytes from a storage reader to the client."""
    source = getattr(reader, "sendfile_source", None)
    transport = _sendfile_transport(request) if source is not None else None
    if transport is not None:
        fd, offset = source()
        request.write(b"")  # the headers, ahead of the file
        try:
            reactor = getattr(getattr(request.channel, "site", None), "reactor", None)
            if reactor is None:
                from twisted.internet import reactor
            timeout = getattr(getattr(request.channel, "site", None), "timeout", None) or 60.0
            await _SendfilePump(request, transport, fd, offset, length, reactor, timeout).start()
        except (OSError, EOFError, ConnectionError, TimeoutError):
            request.channel.transport.abortConnection()
        finally:
            await reader.close()
        return
    pump = _Pump()
    request.registerProducer(pump, True)
    bulk = raise_limits(getattr(request.channel, "transport", None), send=True)
    try:
        remaining = length
        while remaining > 0 and not pump.stopped:
            try:
                block = await reader.read(min(SEND_BLOCK, remaining))
            except Exception as e:
                log.warn(
                    "a response body broke off after {sent} of {length} bytes: {error}",
                    sent=length - remaining,
                    length=length,
                    error=e,
                )
                block = None
            if not block:
                # The promised Content-Length cannot be met (a storage error, a
                # pull-through fetch that failed): drop the connection so that the
                # client sees a broken transfer, never a short or padded body.
                _abort(request)
                break
            remaining -= len(block)
            request.write(block)
            waiting = pump.wait()
            if waiting is not None:
                await waiting
    finally:
        restore_limits(bulk)
        await reader.close()
        if not pump.stopped:
            request.unregisterProducer()
