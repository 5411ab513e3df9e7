"""
Storage requests made for background work wait for their turn.

A scheduled garbage collection runs in a serving process: its S3 requests
go to the same S3, and their answers are read on the same reactor, as those
of the requests served.  Between its steps it gives way while a request
waits for its answer (`oci_registry.gc`), but one of its steps may make a
dozen storage requests, each of which then runs beside the request's own.
`background` marks the work it runs, and everything that work starts, so
that the S3 client awaits ``gate()`` before sending each request made for
it: a request served meanwhile shares S3 and the reactor with at most the
one request of the collection that was already under way.

The mark is a context variable: Twisted runs each coroutine (and so each
Deferred made from one) in a copy of the context it was started from, so
the requests served, started from the reactor's own context, never see it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from twisted.internet.defer import Deferred

Gate = Callable[[], Deferred]

_gate: ContextVar[Gate | None] = ContextVar("oci_registry_storage_gate", default=None)


@contextmanager
def background(gate: Gate) -> Iterator[None]:
    """Within this block (and what it starts), each S3 request first awaits ``gate()``."""
    token = _gate.set(gate)
    try:
        yield
    finally:
        _gate.reset(token)


def gate() -> Gate | None:
    """The gate of the background work running here, if any."""
    return _gate.get()
