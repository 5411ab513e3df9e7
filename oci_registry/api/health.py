"""
``/healthz`` and ``/readyz``, for load balancers and orchestrators.

- ``GET /healthz``: 200 ``{"status": "ok"}`` whenever the process answers
  at all (its reactor turns): restart it when this fails.
- ``GET /readyz``: 200 ``{"status": "ready"}`` when the storage takes a
  write, a read and a delete (`oci_registry.health.Readiness`) and the
  process is not shutting down; else 503 ``{"status": "unavailable" or
  "draining", "reason": ...}``: send it no new requests meanwhile.

Neither asks for credentials nor is logged at info level (a probe every
few seconds would bury the access log): their access lines are debug.
`HealthResource` can be put into any resource tree (``mount``), and
`HealthRoute` serves both in front of the registry's own resource.
"""

from __future__ import annotations

import json

import attr
from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..health import DRAINING, Readiness
from .context import IRequestContext, context_of

log = Logger(namespace="oci_registry.health")

HEALTHZ = b"healthz"
READYZ = b"readyz"


def _quiet(request) -> None:
    """This request's access line is logged at debug level."""
    context = context_of(request)
    request.setComponent(IRequestContext, attr.evolve(context, log_level=LogLevel.debug))


def _answer(request, status: int, body: dict) -> bytes:
    data = json.dumps(body).encode() + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", str(len(data)).encode())
    return b"" if request.method == b"HEAD" else data


def _method_allowed(request) -> bytes | None:
    if request.method in (b"GET", b"HEAD"):
        return None
    request.setHeader(b"allow", b"GET, HEAD")
    error = {"code": "UNSUPPORTED", "message": f"{request.method.decode('latin-1')} is not allowed here"}
    return _answer(request, 405, {"errors": [error]})


class _Healthz(Resource):
    isLeaf = True

    def render(self, request):
        _quiet(request)
        refused = _method_allowed(request)
        if refused is not None:
            return refused
        return _answer(request, 200, {"status": "ok"})


class _Readyz(Resource):
    isLeaf = True

    def __init__(self, readiness: Readiness):
        super().__init__()
        self._readiness = readiness

    def render(self, request):
        _quiet(request)
        refused = _method_allowed(request)
        if refused is not None:
            return refused
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d: Deferred = self._readiness.check()
        d.addCallback(self._checked, request, gone)
        d.addErrback(lambda failure: log.failure("readiness check failed", failure))
        return NOT_DONE_YET

    def _checked(self, reason: str | None, request, gone: list[bool]) -> None:
        if gone or request.finished:
            return
        if reason is None:
            body = _answer(request, 200, {"status": "ready"})
        else:
            status = "draining" if reason == DRAINING else "unavailable"
            body = _answer(request, 503, {"status": status, "reason": reason})
        request.write(body)
        request.finish()


class HealthResource(Resource):
    """``healthz`` and ``readyz`` as children, to put under any resource: see `mount`."""

    def __init__(self, readiness: Readiness):
        super().__init__()
        self.readiness = readiness
        self.putChild(HEALTHZ, _Healthz())
        self.putChild(READYZ, _Readyz(readiness))

    def mount(self, root: Resource) -> None:
        """Serve ``/healthz`` and ``/readyz`` below ``root`` (a `Site`'s root, say the metrics one)."""
        for name in (HEALTHZ, READYZ):
            root.putChild(name, self.children[name])


class HealthRoute(Resource):
    """Serves ``/healthz`` and ``/readyz`` from a `HealthResource`, before auth, and everything else from ``inner``."""

    isLeaf = True

    def __init__(self, inner, health: HealthResource):
        super().__init__()
        self._inner = inner
        self._health = health

    def render(self, request):
        name = request.path.rstrip(b"/")
        if name in (b"/" + HEALTHZ, b"/" + READYZ):
            return self._health.children[name[1:]].render(request)
        return self._inner.render(request)
