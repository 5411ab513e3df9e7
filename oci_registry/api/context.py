"""
What the site knows about a request before any route runs: its request id,
its `Origin` (client, scheme, host, through trusted proxies) and when it
started.  `RegistrySite` attaches it to each request as a component
(``IRequestContext``); `context_of` reads it, or works it out for a request
served by a plain `twisted.web` `Site` (an embedding application's).

A request id comes from the client's ``X-Request-ID`` when that is a short
token of printable characters (a proxy or a client tracing its own calls),
else it is made here; it is sent back in ``X-Request-ID`` and every log line
of the request carries it.
"""

from __future__ import annotations

import os
import re
import time

import attr
from twisted.logger import LogLevel
from zope.interface import Interface

from .forwarded import Origin, TrustedProxies

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID = 128
# Token characters (RFC 9110 tchar) plus the few a UUID or a trace id use.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9!#$%&'*+.^_`|~:/=@-]{1," + str(MAX_REQUEST_ID).encode() + rb"}")


class IRequestContext(Interface):
    """The `RequestContext` component of a request."""


@attr.s(auto_attribs=True, frozen=True)
class RequestContext:
    request_id: str
    origin: Origin
    started: float  # time.monotonic() when the request's headers were in
    log_level: LogLevel = LogLevel.info  # of its access line (debug for health checks)
    user: str | None = None  # who it authenticated as, for its access line (see `noted_user`)


def new_request_id() -> str:
    return os.urandom(16).hex()  # 128 random bits, as 32 hex digits


def request_id_from(value: bytes | None) -> str:
    """The client's request id if it is one we can log and send back as it is, else a new one."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value.decode("ascii")
    return new_request_id()


def make_context(request, trusted: TrustedProxies) -> RequestContext:
    return RequestContext(
        request_id=request_id_from(request.getHeader(REQUEST_ID_HEADER)),
        origin=trusted.origin(request),
        started=time.monotonic(),
    )


def context_of(request) -> RequestContext:
    """The request's context; one worked out now (and kept) for a request that came without one."""
    context = request.getComponent(IRequestContext) if hasattr(request, "getComponent") else None
    if context is None:
        context = make_context(request, TrustedProxies())
        if hasattr(request, "setComponent"):
            request.setComponent(IRequestContext, context)
    return context


def noted_user(request, name: str | None) -> None:
    """
    Note who the request authenticated as, for its access line only: the
    principal itself goes on to the registry explicitly (`Caller`), and
    nothing decides anything from this.
    """
    if name is not None:
        request.setComponent(IRequestContext, attr.evolve(context_of(request), user=name))


def client_of(request) -> str:
    """The client's address, as the rate limits and the logs key it."""
    return context_of(request).origin.client
