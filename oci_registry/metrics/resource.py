"""
The metrics listener's site: ``/metrics`` (every process's metrics, in the
text exposition format), ``/healthz`` and ``/readyz``.  It writes no access
lines: Prometheus scrapes it every few seconds.
"""

from __future__ import annotations

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from ..twisted_compat import disconnected
from .process import exposition

log = Logger(namespace="oci_registry.metrics")


class _Exposition(Resource):
    isLeaf = True

    def __init__(self, reactor, metrics):
        super().__init__()
        self._reactor = reactor
        self._metrics = metrics

    def render_GET(self, request):
        self._metrics.flush()  # what this process counted so far (the others flush every second)
        # Reading every process's files is blocking work: off the reactor thread.
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), exposition)
        d.addCallbacks(self._send, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        return server.NOT_DONE_YET

    render_HEAD = render_GET

    def _send(self, result, request) -> None:
        body, content_type = result
        if request.finished or disconnected(request):
            return
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"content-length", str(len(body)).encode())
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def _failed(self, failure, request) -> None:
        log.failure("cannot read the metrics", failure)
        if request.finished or disconnected(request):
            return
        request.setResponseCode(500)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.write(b"cannot read the metrics\n")
        request.finish()


class MetricsSite(server.Site):
    """``/metrics``, and the health checks of ``health`` (a `HealthResource`)."""

    def __init__(self, health, metrics, reactor):
        root = Resource()
        root.putChild(b"metrics", _Exposition(reactor, metrics))
        health.mount(root)
        super().__init__(root, reactor=reactor)

    def log(self, request):
        pass
