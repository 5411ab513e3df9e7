"""
Pieces of HTTP the routes share: JSON bodies, byte ranges, pagination links,
and sending a stored blob with back-pressure.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

from twisted.internet.defer import Deferred
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from ..errors import RangeInvalid, RegistryError

SEND_BLOCK = 1 << 20
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
    if last and end < start:
        return None  # syntactically invalid: ignored, as RFC 9110 14.2 says
    if start >= size:
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


async def send_reader(request, reader, length: int) -> None:
    """Copy ``length`` bytes from a storage reader to the client."""
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
