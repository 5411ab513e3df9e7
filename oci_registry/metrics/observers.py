"""
The metrics of what is not a request: the pull-through cache
(`ProxyMetrics`, its `IProxyObserver`), scheduled garbage collection
(`GCMetrics`, told of each run) and what is read every few seconds from
where it is kept (`StatusSync`: the notifier's `INotificationStatus`, the
API's open uploads).
"""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from zope.interface import implementer

from ..proxy.cache import IProxyObserver
from .families import Metrics
from .tally import FLUSH_INTERVAL

SYNC_INTERVAL = 5.0  # seconds between two reads of the notifier's and the API's state


@implementer(IProxyObserver)
class ProxyMetrics:
    def __init__(self, metrics: Metrics):
        self._requests = {kind: metrics.proxy_requests.labels(kind) for kind in ("blob", "manifest")}
        self._hits = {kind: metrics.proxy_hits.labels(kind) for kind in ("blob", "manifest")}
        self._misses = {kind: metrics.proxy_misses.labels(kind) for kind in ("blob", "manifest")}
        self._pulled = {kind: metrics.proxy_pulled_bytes.labels(kind) for kind in ("blob", "manifest")}
        self._errors = {kind: metrics.proxy_upstream_errors.labels(kind) for kind in ("blob", "manifest")}
        self._stale = {kind: metrics.proxy_stale.labels(kind) for kind in ("blob", "manifest")}

    def read(self, kind, hit):
        self._requests[kind].inc()
        (self._hits if hit else self._misses)[kind].inc()

    def pulled(self, kind, size):
        self._pulled[kind].inc(size)

    def upstream_failed(self, kind):
        self._errors[kind].inc()

    def stale(self, kind):
        self._stale[kind].inc()


class GCMetrics:
    """Told of each scheduled garbage collection: `ran` with its report, or `failed`."""

    def __init__(self, metrics: Metrics, clock):
        self._metrics = metrics
        self._clock = clock

    def ran(self, report, seconds: float) -> None:
        metrics = self._metrics
        metrics.gc_runs.labels("ok").inc()
        metrics.gc_duration.observe(seconds)
        metrics.gc_bytes_freed.inc(report.bytes_freed)
        metrics.gc_blobs_deleted.inc(len(report.blobs_removed))
        metrics.uploads_expired.inc(len(report.uploads_removed))
        metrics.gc_last_success.set(self._clock())

    def failed(self, seconds: float) -> None:
        self._metrics.gc_runs.labels("failed").inc()
        self._metrics.gc_duration.observe(seconds)


class _Flushing(MultiService):
    def __init__(self, metrics: Metrics):
        super().__init__()
        self._metrics = metrics

    def stopService(self):
        stopped = super().stopService()
        self._metrics.flush()  # what the last requests counted
        return stopped


class StatusSync:
    """
    Copies into the metrics what the notifier and the API count themselves:
    gauges set, counters advanced by what was counted since the last read.
    """

    def __init__(self, metrics: Metrics, notifier=None, api=None):
        self._metrics = metrics
        self._notifier = notifier
        self._api = api
        self._seen: dict = {}

    def service(self, reactor, interval: float = SYNC_INTERVAL) -> MultiService:
        """Syncs every ``interval`` seconds, flushes the tallies every `FLUSH_INTERVAL` and once more on stop."""
        top = _Flushing(self._metrics)
        top.setName("metrics")
        for every, call in ((interval, self.sync), (FLUSH_INTERVAL, self._metrics.flush)):
            timer = TimerService(every, call)
            timer.clock = reactor
            timer.setServiceParent(top)
        return top

    def _advance(self, counter, key, total: float) -> None:
        before = self._seen.get(key, 0)
        if total > before:
            counter.inc(total - before)
        self._seen[key] = total

    def sync(self) -> None:
        metrics = self._metrics
        if self._api is not None:
            metrics.uploads_in_progress.set(self._api.open_uploads())
        if self._notifier is None:
            return
        for name, status in self._notifier.status().items():
            metrics.notifications_pending.labels(name).set(status.pending)
            metrics.notifications_oldest.labels(name).set(status.oldest_age or 0.0)
            self._advance(metrics.notifications_delivered.labels(name), (name, "delivered"), status.delivered)
            self._advance(metrics.notifications_failed.labels(name), (name, "failed"), status.failed)
            dead, lost = (
                metrics.notifications_dropped.labels(name, "dead_letter"),
                metrics.notifications_dropped.labels(name, "lost"),
            )
            self._advance(dead, (name, "dead"), status.dead_lettered)
            self._advance(lost, (name, "lost"), status.lost)
            latency = metrics.notifications_latency.labels(name)
            # The notifier keeps its own cumulative histogram: advance each bucket by its new events.
            previous = 0
            for index, (_, cumulative) in enumerate(status.latency_buckets):
                in_bucket = cumulative - previous
                previous = cumulative
                self._advance(latency._buckets[index], (name, "bucket", index), in_bucket)
            self._advance(latency._buckets[-1], (name, "bucket", "+Inf"), status.latency_count - previous)
            self._advance(latency._sum, (name, "sum"), status.latency_sum)
