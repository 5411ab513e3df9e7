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
from .families import Metrics

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

    def started(self, request) -> None:
        handler, repository = route_of(request.path)
        method = request.method.decode("latin-1")
        request._metrics_route = (handler, method if method in METHODS else "OTHER", repository)
        self.metrics.gauge(self.metrics.in_flight, handler).inc()

    def ended(self, request, answered: bool = True) -> None:
        route = getattr(request, "_metrics_route", None)
        if route is None:
            return
        request._metrics_route = None  # counted once, whichever of finish and connectionLost comes
        handler, method, repository = route
        metrics = self.metrics
        metrics.gauge(metrics.in_flight, handler).dec()
        code = request.code if answered or request.startedWriting else None
        status = NO_STATUS if code is None else self._code(code)
        if metrics.repository_label:
            metrics.counter(metrics.requests, handler, method, status, repository or "").inc()
        else:
            metrics.counter(metrics.requests, handler, method, status).inc()
        elapsed = time.monotonic() - context_of(request).started
        metrics.histogram(metrics.request_duration, handler, method).observe(elapsed)
        received, sent = body_bytes_of(request), request.sentLength
        metrics.histogram(metrics.request_size, handler).observe(received)
        metrics.histogram(metrics.response_size, handler).observe(sent)
        if handler == BLOB and method == "GET":
            metrics.counter(metrics.blob_bytes_sent).inc(sent)
        elif handler in (BLOB_UPLOAD, BLOB_UPLOAD_CHUNK) and received:
            metrics.counter(metrics.blob_bytes_received).inc(received)
        if code == 401 and request.getHeader(b"authorization") is not None:
            metrics.counter(metrics.auth_failures).inc()
        elif code == 429:
            metrics.counter(metrics.rate_limited).inc()

    def _code(self, code: int) -> str:
        text = self._codes.get(code)
        if text is None:
            text = self._codes[code] = str(code) if 100 <= code <= 599 else "other"
        return text
