"""
Pieces of HTTP the routes share: JSON bodies, byte ranges, pagination links,
and sending a stored blob with back-pressure.
"""

from __future__ import annotations

import json
import os
import re
from urllib.parse import urlencode

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IWriteDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from .. import twisted_compat as compat
from ..bulk import raise_limits, restore_limits
from ..errors import RangeInvalid, RegistryError
from ..storage.interfaces import ISendfileReader

log = Logger()

SEND_BLOCK = 1 << 20
# Bytes per (non-blocking) sendfile(2) call, from the reactor thread.  Sent
# from worker threads that blocked on the socket, 32 KiB calls were best
# (3.1 GB/s to one client, 3.3 GB/s to four, pulling 256 MiB over loopback);
# from the reactor, a call returns as soon as the socket is full whatever its
# size, and 256 KiB calls took 40% less CPU than 32 KiB for one client with
# the same throughput (1.2-1.6 GB/s on a busy 2-core machine, as before the
# change; the reference registry 0.9 GB/s there).
SENDFILE_BLOCK = 256 << 10
# Bytes sent per wake-up of the reactor at most, so that a fast reader does
# not keep the reactor from everyone else (4 MiB: about 2 ms).
SENDFILE_TURN = 4 << 20
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


MAX_PAGE = 10_000  # catalog and tag list entries in one answer, at most (then a Link to the next)


def page_size(n: str | None) -> int:
    """
    The entries a listing answers with for the request's ``n``: `MAX_PAGE`
    when it asks for none or more (the spec lets a registry answer fewer
    than ``n`` with a ``Link`` to the rest), ``PAGINATION_NUMBER_INVALID``
    when it is not a number.
    """
    if n is None or n == "":
        return MAX_PAGE
    if not (n.isascii() and n.isdigit()):
        raise PaginationInvalid(n)
    return min(number(n), MAX_PAGE)


def next_link(path: str, n: str | None, last: str) -> str:
    query = {"n": n, "last": last} if n else {"last": last}
    return f'<{path}?{urlencode(query)}>; rel="next"'


@implementer(IPushProducer)
class _Pump:
    """
    Tracks whether the client can take more; the sending loop waits on it.
    A client that takes nothing for ``timeout`` seconds is dropped.
    """

    def __init__(self, request, reactor, timeout: float):
        self._request = request
        self._reactor = reactor
        self._timeout = timeout
        self._resume: Deferred | None = None
        self._timer = None
        self.stopped = False

    def pauseProducing(self):
        if self._resume is None:
            self._resume = Deferred()
            self._timer = self._reactor.callLater(self._timeout, self._stalled)

    def resumeProducing(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._resume is not None:
            d, self._resume = self._resume, None
            d.callback(None)

    def stopProducing(self):
        self.stopped = True
        self.resumeProducing()

    def _stalled(self) -> None:
        self._timer = None
        log.info("dropping a client that took no data for {timeout:.0f} s", timeout=self._timeout)
        _abort(self._request)
        self.stopProducing()

    def wait(self):
        return self._resume


@implementer(IPushProducer, IWriteDescriptor)
class _SendfilePump:
    """
    Sends a file to a plain TCP client with ``os.sendfile``: the kernel copies
    page cache to socket, and no byte passes through Python.

    Once the response headers have left the transport's buffer, the reactor
    calls `doWrite` whenever the socket can take more, on a duplicate of the
    socket (registered as a writer of its own; a duplicate, so that the
    transport's descriptor stays registered as it was).  A client that stops
    reading costs a descriptor, no thread: after ``timeout`` seconds with no
    byte taken, its connection is dropped.
    """

    def __init__(self, request, transport, fd: int, offset: int, length: int, reactor, timeout: float):
        self._request = request
        self._transport = transport
        self._fd = fd
        self._offset = offset
        self._length = length
        self._sent = 0
        self._reactor = reactor
        self._timeout = timeout
        self._done: Deferred[None] = Deferred()
        self._socket: int | None = None
        self._last_progress = 0.0
        self._timer = None

    def start(self) -> Deferred:
        self._request.registerProducer(self, True)
        self._maybe_send()
        return self._done

    def _maybe_send(self) -> None:
        if self._socket is not None or self._done.called:
            return
        t = self._transport
        if compat.unsent_bytes(t):
            # The headers are still in the transport's buffer: ask to be
            # resumed when it has been flushed.
            compat.resume_when_flushed(t)
            return
        try:
            self._socket = os.dup(t.fileno())
        except OSError as e:
            self._finish(e)
            return
        self._last_progress = self._reactor.seconds()
        self._timer = self._reactor.callLater(self._timeout, self._check_progress)
        self._reactor.addWriter(self)

    # IWriteDescriptor

    def fileno(self) -> int:
        return self._socket if self._socket is not None else -1

    def logPrefix(self) -> str:
        return "sendfile"

    def doWrite(self):
        turn = 0
        try:
            while self._sent < self._length and turn < SENDFILE_TURN:
                count = min(self._length - self._sent, SENDFILE_BLOCK)
                n = os.sendfile(self._socket, self._fd, self._offset + self._sent, count)
                if n == 0:
                    raise EOFError("the blob is shorter than its recorded size")
                self._sent += n
                turn += n
                if n < count:
                    break  # the socket is full
        except BlockingIOError:
            pass
        except (OSError, EOFError) as e:
            self._finish(e)
            return
        if turn:
            self._last_progress = self._reactor.seconds()
        if self._sent >= self._length:
            self._finish(None)

    def connectionLost(self, reason):
        self._finish(ConnectionError("the client went away"))

    def _check_progress(self) -> None:
        self._timer = None
        idle = self._reactor.seconds() - self._last_progress
        if idle < self._timeout:
            self._timer = self._reactor.callLater(self._timeout - idle, self._check_progress)
            return
        self._finish(TimeoutError(f"the client took nothing for {idle:.0f} s"))

    def _finish(self, error) -> None:
        if self._done.called:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._socket is not None:
            self._reactor.removeWriter(self)
            os.close(self._socket)
            self._socket = None
        self._request.sentLength += self._sent
        if not compat.disconnected(self._request):
            self._request.unregisterProducer()
        if error is None:
            self._done.callback(None)
        else:
            self._done.errback(error)

    # IPushProducer (registered with the request while sending)

    def pauseProducing(self):
        pass  # the reactor only calls doWrite when the socket can take more

    def resumeProducing(self):
        self._maybe_send()

    def stopProducing(self):
        self._finish(ConnectionError("the connection was closed"))


def _sendfile_transport(request):
    """The request's TCP transport when ``os.sendfile`` can write to it directly (not TLS)."""
    transport = getattr(request.channel, "transport", None)
    if compat.can_sendfile(transport) and hasattr(os, "sendfile"):
        return transport
    return None


def _abort(request) -> None:
    transport = getattr(request.channel, "transport", None)
    abort = getattr(transport, "abortConnection", None) or getattr(transport, "loseConnection", None)
    if abort is not None:
        abort()


async def send_reader(request, reader, length: int) -> None:
    """Copy ``length`` bytes from a storage reader to the client."""
    site = getattr(request.channel, "site", None)
    reactor = getattr(site, "reactor", None)
    if reactor is None:
        from twisted.internet import reactor
    timeout = getattr(site, "timeOut", None) or 60.0
    transport = _sendfile_transport(request) if ISendfileReader.providedBy(reader) else None
    if transport is not None:
        fd, offset = reader.sendfile_source()
        request.write(b"")  # the headers, ahead of the file
        try:
            await _SendfilePump(request, transport, fd, offset, length, reactor, timeout).start()
        except (OSError, EOFError, ConnectionError, TimeoutError):
            _abort(request)
        finally:
            await reader.close()
        return
    pump = _Pump(request, reactor, timeout)
    request.registerProducer(pump, True)
    bulk = raise_limits(getattr(request.channel, "transport", None), send=True)
    try:
        remaining = length
        while remaining > 0 and not pump.stopped:
            try:
                block = await reader.read(min(SEND_BLOCK, remaining))
            except Exception as e:  # noqa: BLE001 whatever broke the read, the headers are sent: drop the connection
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
        if not compat.disconnected(request):
            request.unregisterProducer()
