"""
Pieces of HTTP the routes share: JSON bodies, byte ranges, pagination links,
and sending a stored blob with back-pressure.
"""

from __future__ import annotations

import json
import os
import re
import socket
from urllib.parse import urlencode

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from ..errors import RangeInvalid, RegistryError

SEND_BLOCK = 1 << 20
SENDFILE_BLOCK = 16 << 20
SEND_BUFFER = 4 << 20
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


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
        length = int(last)
        if length == 0 or size == 0:
            raise RangeInvalid(f"range {header} of a {size} byte blob", headers={"Content-Range": f"bytes */{size}"})
        return max(size - length, 0), size - 1
    start = int(first)
    end = int(last) if last else size - 1
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
    if not n.isdigit():
        raise PaginationInvalid(n)
    count = int(n)
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


@implementer(IPushProducer)
class _SendfilePump:
    """
    Sends a file to a plain TCP client with ``os.sendfile``: the kernel copies
    page cache to socket, and no byte passes through Python.

    It writes only when the transport's own buffer is empty (the response
    headers go first); when the socket is full it asks the transport to
    report writability, which it does by resuming its producer.
    """

    def __init__(self, request, transport, fd: int, offset: int, length: int):
        self._request = request
        self._transport = transport
        self._fd = fd
        self._offset = offset
        self._remaining = length
        self._done = Deferred()
        self._sending = False

    def start(self) -> Deferred:
        if self._remaining >= SENDFILE_BLOCK:
            # Fewer, larger sends: each wakeup of the reactor moves more bytes.
            try:
                self._transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            except OSError:
                pass
        self._request.registerProducer(self, True)
        self._send()
        return self._done

    def _buffered(self) -> bool:
        t = self._transport
        return bool(len(t.dataBuffer) - t.offset or t._tempDataLen)

    def _wait_for_socket(self) -> None:
        self._transport.producerPaused = True
        self._transport.startWriting()

    def _send(self) -> None:
        if self._sending or self._done.called:
            return
        self._sending = True
        try:
            socket_fd = self._transport.fileno()
            while self._remaining > 0:
                if self._buffered():
                    return self._wait_for_socket()
                try:
                    sent = os.sendfile(socket_fd, self._fd, self._offset, min(self._remaining, SENDFILE_BLOCK))
                except BlockingIOError:
                    return self._wait_for_socket()
                except OSError as e:
                    return self._finish(e)
                if sent == 0:
                    return self._finish(EOFError("the blob is shorter than its recorded size"))
                self._offset += sent
                self._remaining -= sent
                self._request.sentLength += sent
            self._finish(None)
        finally:
            self._sending = False

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
        pass  # the socket's EAGAIN already paces us

    def resumeProducing(self):
        self._send()

    def stopProducing(self):
        self._finish(ConnectionError("the client went away"))


def _sendfile_transport(request):
    """The request's TCP transport when ``os.sendfile`` can write to it directly (not TLS)."""
    transport = getattr(request.channel, "transport", None)
    if isinstance(transport, tcp.Server) and hasattr(transport, "dataBuffer") and hasattr(os, "sendfile"):
        return transport
    return None


async def send_reader(request, reader, length: int) -> None:
    """Copy ``length`` bytes from a storage reader to the client."""
    source = getattr(reader, "sendfile_source", None)
    transport = _sendfile_transport(request) if source is not None else None
    if transport is not None:
        fd, offset = source()
        request.write(b"")  # the headers, ahead of the file
        try:
            await _SendfilePump(request, transport, fd, offset, length).start()
        except (OSError, EOFError, ConnectionError):
            request.channel.transport.abortConnection()
        finally:
            await reader.close()
        return
    pump = _Pump()
    request.registerProducer(pump, True)
    try:
        remaining = length
        while remaining > 0 and not pump.stopped:
            block = await reader.read(min(SEND_BLOCK, remaining))
            if not block:
                break
            remaining -= len(block)
            request.write(block)
            waiting = pump.wait()
            if waiting is not None:
                await waiting
    finally:
        await reader.close()
        if not pump.stopped:
            request.unregisterProducer()
