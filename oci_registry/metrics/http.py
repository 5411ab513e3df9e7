"""
Request metrics, taken by the site where it writes the access line:
`RequestMetrics.started` when a request's headers are in, `ended` once it
was answered (or cut off).  The ``handler`` label is the route's name, as
CNCF Distribution names them (`route_of`): never the path itself.
"""

from __future__ import annotations

import re
import time

from ..api.access_log import body_bytes_of
from ..api.context import context_of
from .families import MAX_CHILDREN, Metrics

BASE, BLOB, BLOB_UPLOAD, BLOB_UPLOAD_CHUNK, MANIFEST, TAGS, CATALOG, REFERRERS = (
    "base",
    "blob",
    "blob_upload",
    "blob_upload_chunk",
    "manifest",
    "tags",
    "catalog",
    "referrers",
)
TOKEN, HEALTH, OTHER = "token", "health", "other"
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"})
NO_STATUS = "none"  # the code label of a request cut off before its status was sent

_ROUTE = re.compile(
    rb"/v2/(?P<name>.+?)/(?:(?P<upload>blobs/uploads/)(?P<id>[^/]*)|(?P<kind>blobs|manifests|referrers)/[^/]+"
    rb"|(?P<tags>tags/list))/?"
)
_KINDS = {b"blobs": BLOB, b"manifests": MANIFEST, b"referrers": REFERRERS}
_FIXED = {
    b"/v2": BASE,
    b"/v2/": BASE,
    b"/v2/_catalog": CATALOG,
    b"/token": TOKEN,
    b"/healthz": HEALTH,
    b"/readyz": HEALTH,
}


def route_of(path: bytes) -> tuple[str, str | None]:
    """``(handler, repository)`` of a request path (repository None when the route has none)."""
    fixed = _FIXED.get(path)
    if fixed is not None:
        return fixed, None
    match = _ROUTE.fullmatch(path)
    if match is None:
        return OTHER, None
    name = match.group("name").decode("latin-1")
    if match.group("upload"):
        return (BLOB_UPLOAD_CHUNK if match.group("id") else BLOB_UPLOAD), name
    if match.group("tags"):
        return TAGS, name
    return _KINDS[match.group("kind")], name


class RequestMetrics:
    """What the site tells about each request, counted in ``metrics``."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._codes: dict = {}
        self._in_flight: dict = {}  # handler -> its tally
        self._routes: dict = {}  # (handler, method, code[, repository]) -> the tallies of such a request

    def started(self, request) -> None:
        handler, repository = route_of(request.path)
        method = request.method.decode("latin-1")
        in_flight = self._in_flight.get(handler)
        if in_flight is None:
            in_flight = self._in_flight[handler] = self.metrics.gauge(self.metrics.in_flight, handler)
        in_flight.inc()
        request._metrics_route = (handler, method if method in METHODS else "OTHER", repository, in_flight)

    def ended(self, request, answered: bool = True) -> None:
        route = getattr(request, "_metrics_route", None)
        if route is None:
            return
        request._metrics_route = None  # counted once, whichever of finish and connectionLost comes
        handler, method, repository, in_flight = route
        in_flight.dec()
        code = request.code if answered or request.startedWriting else None
        status = NO_STATUS if code is None else self._code(code)
        key = (handler, method, status, repository) if self.metrics.repository_label else (handler, method, status)
        tallies = self._routes.get(key)
        if tallies is None:
            tallies = self._tallies(key)
        requests, duration, request_size, response_size, bytes_counter = tallies
        requests.inc()
        duration.observe(time.monotonic() - context_of(request).started)
        received, sent = body_bytes_of(request), request.sentLength
        request_size.observe(received)
        response_size.observe(sent)
        if bytes_counter is not None:
            bytes_counter.inc(sent if handler == BLOB else received)
        if code == 401:
            if request.getHeader(b"authorization") is not None:
                self.metrics.counter(self.metrics.auth_failures).inc()
        elif code == 429:
            self.metrics.counter(self.metrics.rate_limited).inc()

    def _tallies(self, key: tuple) -> tuple:
        metrics = self.metrics
        handler, method, status = key[:3]
        labels = (handler, method, status, key[3] or "") if metrics.repository_label else key
        bytes_counter = None
        if handler == BLOB and method == "GET":
            bytes_counter = metrics.counter(metrics.blob_bytes_sent)
        elif handler in (BLOB_UPLOAD, BLOB_UPLOAD_CHUNK):
            bytes_counter = metrics.counter(metrics.blob_bytes_received)
        tallies = (
            metrics.counter(metrics.requests, *labels),
            metrics.histogram(metrics.request_duration, handler, method),
            metrics.histogram(metrics.request_size, handler),
            metrics.histogram(metrics.response_size, handler),
            bytes_counter,
        )
        if len(self._routes) < MAX_CHILDREN:
            self._routes[key] = tallies
        return tallies

    def _code(self, code: int) -> str:
        text = self._codes.get(code)
        if text is None:
            text = self._codes[code] = str(code) if 100 <= code <= 599 else "other"
        return text
