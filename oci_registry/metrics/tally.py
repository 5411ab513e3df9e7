"""
Counting on the request path without touching the shared files: a
`Tally` keeps what this process counted in plain numbers (on the reactor
thread, so without a lock) and adds it to prometheus_client's values, which
every process's scrape reads, in one go every `FLUSH_INTERVAL` and before
this process answers a scrape.  A request then costs a few additions instead
of a locked write to a memory-mapped file per value; what a worker killed
outright counted since its last flush (under a second) is never reported.
"""

from __future__ import annotations

from bisect import bisect_left

FLUSH_INTERVAL = 1.0  # seconds between two flushes of every tally to the shared values


class CounterTally:
    __slots__ = ("child", "pending")

    def __init__(self, child):
        self.child = child
        self.pending = 0.0

    def inc(self, amount: float = 1) -> None:
        self.pending += amount

    def flush(self) -> None:
        if self.pending:
            pending, self.pending = self.pending, 0.0
            self.child.inc(pending)


class GaugeTally:
    __slots__ = ("child", "value", "written")

    def __init__(self, child):
        self.child = child
        self.value = 0.0
        self.written = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def flush(self) -> None:
        if self.value != self.written:
            self.written = self.value
            self.child.set(self.value)


class HistogramTally:
    """A histogram child's buckets and sum, counted here (as `Histogram.observe` places a value) and added on flush."""

    __slots__ = ("child", "bounds", "counts", "sum", "dirty")

    def __init__(self, child):
        self.child = child
        self.bounds = list(child._upper_bounds)  # the last is +Inf
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.dirty = False

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount
        self.dirty = True

    def flush(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        buckets = self.child._buckets
        counts = self.counts
        for index, count in enumerate(counts):
            if count:
                buckets[index].inc(count)
                counts[index] = 0
        total, self.sum = self.sum, 0.0
        self.child._sum.inc(total)


class Tallies:
    """Every tally of this process, made once per label set (`tally`) and flushed together (`flush`)."""

    def __init__(self):
        self._made: dict = {}
        self._all: list = []

    def tally(self, kind, metric, labels: tuple):
        key = (id(metric), labels)
        found = self._made.get(key)
        if found is None:
            found = self._made[key] = kind(metric.labels(*labels) if labels else metric)
            self._all.append(found)
        return found

    def flush(self) -> None:
        for tally in self._all:
            tally.flush()
