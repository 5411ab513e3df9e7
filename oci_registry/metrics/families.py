"""
Every metric the registry exports, made once per process (`Metrics`).  The
label children the request path uses are made once and kept
(`Metrics.child`), so that counting a request allocates nothing.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from .. import __version__
from ..notifications.delivery import LATENCY_BUCKETS
from .tally import CounterTally, GaugeTally, HistogramTally, Tallies

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
SIZE_BUCKETS = tuple(float(4**n) for n in range(4, 17))  # 256 B .. 4 GiB
STORAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GC_BUCKETS = (0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
MAX_CHILDREN = 10000  # label sets counted in tallies; more (repositories, with repository_label) go straight through


class Metrics:
    """
    The registry's metrics in this process, unregistered (a scrape reads
    every process's files: `oci_registry.metrics.process.exposition`).
    """

    def __init__(self, repository_label: bool = False):
        self.repository_label = repository_label
        self.tallies = Tallies()
        request_labels = ["handler", "method", "code"] + (["repository"] if repository_label else [])
        self.requests = Counter(
            "registry_http_requests_total",
            "HTTP requests answered, by route, method and status code",
            request_labels,
            registry=None,
        )
        self.request_duration = Histogram(
            "registry_http_request_duration_seconds",
            "Time from a request's headers to the end of its response",
            ["handler", "method"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.request_size = Histogram(
            "registry_http_request_size_bytes", "Request body bytes", ["handler"], buckets=SIZE_BUCKETS, registry=None
        )
        self.response_size = Histogram(
            "registry_http_response_size_bytes",
            "Response body bytes",
            ["handler"],
            buckets=SIZE_BUCKETS,
            registry=None,
        )
        self.in_flight = Gauge(
            "registry_http_in_flight_requests",
            "Requests being handled",
            ["handler"],
            multiprocess_mode="livesum",
            registry=None,
        )
        self.blob_bytes_received = Counter(
            "ociregistry_blob_bytes_received", "Blob bytes received in uploads", registry=None
        )
        self.blob_bytes_sent = Counter("ociregistry_blob_bytes_sent", "Blob bytes sent to clients", registry=None)
        self.auth_failures = Counter(
            "ociregistry_auth_failures",
            "Requests refused (401) although they carried credentials: wrong password, bad or expired token",
            registry=None,
        )
        self.rate_limited = Counter(
            "ociregistry_rate_limited_requests",
            "Requests refused with 429 (failed-login limit, open uploads per client)",
            registry=None,
        )
        self.storage_action = Histogram(
            "registry_storage_action_seconds",
            "Time of each storage driver call",
            ["driver", "action"],
            buckets=STORAGE_BUCKETS,
            registry=None,
        )
        self.storage_errors = Counter(
            "ociregistry_storage_errors",
            "Storage driver calls that failed, by kind (unavailable, full, other); a missing file is not one",
            ["driver", "action", "kind"],
            registry=None,
        )
        self.proxy_requests = Counter(
            "registry_proxy_requests", "Pull-through cache reads, by type (blob, manifest)", ["type"], registry=None
        )
        self.proxy_hits = Counter(
            "registry_proxy_hits", "Pull-through reads served from the cache", ["type"], registry=None
        )
        self.proxy_misses = Counter(
            "registry_proxy_misses", "Pull-through reads that went to the upstream", ["type"], registry=None
        )
        self.proxy_pulled_bytes = Counter(
            "registry_proxy_pulled_bytes", "Bytes fetched from upstream registries", ["type"], registry=None
        )
        self.proxy_upstream_errors = Counter(
            "ociregistry_proxy_upstream_errors",
            "Upstream requests that failed (unreachable, 5xx, refused, invalid answer)",
            ["type"],
            registry=None,
        )
        self.proxy_stale = Counter(
            "ociregistry_proxy_stale_served",
            "Cached tags served because the upstream could not be asked",
            ["type"],
            registry=None,
        )
        self.uploads_in_progress = Gauge(
            "ociregistry_uploads_in_progress",
            "Upload sessions open (started, not finished or cancelled)",
            multiprocess_mode="livesum",
            registry=None,
        )
        self.uploads_expired = Counter(
            "ociregistry_upload_sessions_expired", "Idle upload sessions removed by garbage collection", registry=None
        )
        self.gc_runs = Counter(
            "ociregistry_gc_runs", "Scheduled garbage collections, by result (ok, failed)", ["result"], registry=None
        )
        self.gc_duration = Histogram(
            "ociregistry_gc_duration_seconds",
            "Time of each scheduled garbage collection",
            buckets=GC_BUCKETS,
            registry=None,
        )
        self.gc_bytes_freed = Counter(
            "ociregistry_gc_bytes_freed", "Bytes of blobs and uploads garbage collection removed", registry=None
        )
        self.gc_blobs_deleted = Counter(
            "ociregistry_gc_blobs_deleted", "Blobs garbage collection removed", registry=None
        )
        self.gc_last_success = Gauge(
            "ociregistry_gc_last_success_timestamp_seconds",
            "When the last scheduled garbage collection finished (seconds since the epoch)",
            multiprocess_mode="max",
            registry=None,
        )
        self.notifications_pending = Gauge(
            "ociregistry_notifications_pending",
            "Events recorded and not delivered yet, per endpoint",
            ["endpoint"],
            multiprocess_mode="livesum",
            registry=None,
        )
        self.notifications_oldest = Gauge(
            "ociregistry_notifications_oldest_pending_seconds",
            "Age of the oldest event waiting for an endpoint",
            ["endpoint"],
            multiprocess_mode="livemax",
            registry=None,
        )
        self.notifications_delivered = Counter(
            "ociregistry_notifications_delivered", "Events an endpoint took (2xx)", ["endpoint"], registry=None
        )
        self.notifications_failed = Counter(
            "ociregistry_notifications_failed", "Delivery requests that failed (retried)", ["endpoint"], registry=None
        )
        self.notifications_dropped = Counter(
            "ociregistry_notifications_dropped",
            "Events given up on: dead_letter (retries exhausted), lost (could not be recorded)",
            ["endpoint", "reason"],
            registry=None,
        )
        self.notifications_latency = Histogram(
            "ociregistry_notifications_delivery_seconds",
            "Seconds from an operation to its event's delivery",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.build_info = Gauge(
            "ociregistry_build_info",
            "Always 1: the version running",
            ["version"],
            multiprocess_mode="max",
            registry=None,
        )
        self.build_info.labels(__version__).set(1)

    def counter(self, metric, *labels) -> CounterTally:
        """This process's tally of ``metric`` (a counter) with ``labels``: kept, flushed with the others."""
        return self._tally(CounterTally, metric, labels)

    def gauge(self, metric, *labels) -> GaugeTally:
        return self._tally(GaugeTally, metric, labels)

    def histogram(self, metric, *labels) -> HistogramTally:
        return self._tally(HistogramTally, metric, labels)

    def _tally(self, kind, metric, labels):
        if len(self.tallies._made) >= MAX_CHILDREN and (id(metric), labels) not in self.tallies._made:
            return metric.labels(*labels) if labels else metric  # too many label sets to keep: written at once
        return self.tallies.tally(kind, metric, labels)

    def flush(self) -> None:
        """Add what was counted here since the last flush to the values every scrape reads."""
        self.tallies.flush()
