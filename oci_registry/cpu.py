"""
CPU-bound work kept off the reactor thread.

Parsing and validating a large document (a manifest with tens of thousands
of layers takes a quarter of a second) would stall every other connection
if done on the reactor thread.  `CPUPool` runs such work in a thread pool
of its own, not the reactor's shared one (which password checks and
storage use), so that a burst of large documents neither waits behind nor
delays those; and `yield_now` lets a long loop on the reactor thread give
other connections a turn.

While such work runs, Python's cyclic garbage collector is paused: parsing
allocates and drops hundreds of thousands of objects that reference counting
frees, and each full collection they set off scans every object of the
process with the GIL held (50-150 ms pauses of the reactor with four
25,000-layer manifests at once, about 10 ms without).
"""

from __future__ import annotations

import gc

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

THREADS = 1


class CPUPool:
    def __init__(self, reactor=None, threads: int = THREADS):
        self._reactor = reactor
        self._threads = threads
        self._pool: ThreadPool | None = None

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def run(self, function, *args) -> Deferred:
        """``function(*args)`` in the pool (started on first use, stopped when the reactor stops)."""
        if self._pool is None:
            self._pool = ThreadPool(0, self._threads, name="ociregistry-cpu")
            self._pool.start()
            self.reactor.addSystemEventTrigger("during", "shutdown", self._stop)
        return deferToThreadPool(self.reactor, self._pool, _without_collection, function, args)

    def yield_now(self) -> Deferred:
        """Fires on a later turn of the reactor, after what is ready to run meanwhile."""
        return deferLater(self.reactor, 0, lambda: None)

    def _stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()


def _without_collection(function, args):
    enabled = gc.isenabled()
    gc.disable()
    try:
        return function(*args)
    finally:
        if enabled:
            gc.enable()
