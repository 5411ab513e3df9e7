"""
The connections to an upstream, and what an upstream can send over them:
everything here assumes the other end may be slow, lying or hostile.

- `BodyPump` reads a response body with back-pressure and drops the
  connection when the body pauses longer than the idle timeout, arrives
  slower than a minimum rate, outlives a deadline, or grows past a limit.
  `read_body` and `discard_body` use it for the small answers (manifests,
  tokens, tag lists, referrers, error bodies); blob bodies go through it to
  the cache fill.
- `BoundedPool` drops a response whose status line and headers grow past
  `MAX_HEADER_BYTES` (Twisted bounds each header line, not their number).
- `AddressGuard` decides which addresses the proxy connects to: a redirect
  or a token realm that leads to a loopback, link-local or private address
  is refused unless the upstream itself is at one (``private_redirects:
  auto``), or as configured (``allow``, ``deny``).  The check is made on the
  addresses a name resolves to, just before connecting to them, so a name
  that resolves differently a second time gains nothing.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHostnameResolver,
    IPushProducer,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
    IResolutionReceiver,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import BrowserLikePolicyForHTTPS, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory
from zope.interface import implementer

from ..twisted_compat import ClientProtocolHooks, StandardEndpointFactory, connection_pool
from .config import PRIVATE_REDIRECTS

log = Logger()

#: Bytes of status line and headers an upstream response may have.
MAX_HEADER_BYTES = 64 << 10


class UpstreamError(Exception):
    """The upstream did not give what was asked; ``str()`` says why (never with credentials)."""


class UpstreamNotFound(UpstreamError):
    """The upstream answered 404."""


class UpstreamDenied(UpstreamError):
    """The upstream (or its token server) refused the configured credentials."""


class UpstreamUnavailable(UpstreamError):
    """Unreachable, timed out, 5xx, rate limited, or an answer that makes no sense."""


class BodyTooLong(UpstreamUnavailable):
    """A body that announced or sent more bytes than its reader takes."""


# ----------------------------------------------------------------- bodies


class BodyPump(Protocol):
    """
    Hands body chunks to ``sink`` and pauses the connection while the sink
    pushes back (returns an unfired Deferred).  ``done`` fires when the body
    is complete; it fails with `UpstreamUnavailable` and the connection is
    dropped when

    - no byte arrives for ``idle`` seconds while we wait for one;
    - fewer than ``min_rate`` bytes a second arrive over a stretch of ``idle``
      seconds (time the sink holds the connection paused does not count):
      a body that drips just fast enough to dodge the idle timer;
    - the body is still coming ``deadline`` seconds after it began;
    - the sink raises (a size limit, a storage error).
    """

    transport: IPushProducer  # type: ignore[assignment]  # deliverBody gives a producer, not an ITransport

    def __init__(self, sink, done: Deferred, reactor, idle: float, min_rate: int = 0, deadline: float | None = None):
        self._sink = sink
        self._done = done
        self._reactor = reactor
        self._idle = idle
        self._min_rate = min_rate
        self._deadline = deadline
        self._blocked = 0
        self._timer = None
        self._deadline_timer = None
        self._window_start = reactor.seconds()
        self._window_bytes = 0
        self._error: BaseException | None = None

    def connectionMade(self):
        if self._deadline:
            self._deadline_timer = self._reactor.callLater(self._deadline, self._overdue)
        self._restart_window()
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        if self._idle and not self._blocked:
            self._timer = self._reactor.callLater(self._idle, self._stalled)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _restart_window(self) -> None:
        self._window_start = self._reactor.seconds()
        self._window_bytes = 0

    def _stalled(self) -> None:
        self._timer = None
        self._fail(UpstreamUnavailable(f"the upstream sent nothing for {self._idle:g}s"))

    def _overdue(self) -> None:
        self._deadline_timer = None
        self._fail(UpstreamUnavailable(f"the upstream's answer took longer than {self._deadline:g}s"))

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        if self.transport is not None:
            self.transport.stopProducing()

    def abort(self) -> None:
        self._fail(UpstreamUnavailable("cancelled"))

    def _too_slow(self, size: int) -> bool:
        self._window_bytes += size
        elapsed = self._reactor.seconds() - self._window_start
        if not self._min_rate or not self._idle or elapsed < self._idle:
            return False
        if self._window_bytes < self._min_rate * elapsed:
            self._fail(
                UpstreamUnavailable(
                    f"the upstream sent {self._window_bytes} bytes in {elapsed:.1f}s, "
                    f"slower than {self._min_rate} bytes/s"
                )
            )
            return True
        self._restart_window()
        return False

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return
        if not self._blocked and self._too_slow(len(data)):
            return
        try:
            pending = self._sink(data)
        except Exception as e:  # noqa: BLE001 the sink's failure ends this transfer, with its error, not the reactor
            self._fail(e)
            return
        if pending is not None and not pending.called:
            self._blocked += 1
            if self._blocked == 1:
                self._disarm()
                self.transport.pauseProducing()
            pending.addCallbacks(self._unblocked, self._sink_failed)
        else:
            self._arm()

    def _unblocked(self, _=None) -> None:
        self._blocked -= 1
        if not self._blocked and self._error is None:
            self._restart_window()
            self._arm()
            self.transport.resumeProducing()

    def _sink_failed(self, failure) -> None:
        self._blocked -= 1
        self._fail(failure.value)

    def connectionLost(self, reason):
        self._disarm()
        if self._deadline_timer is not None and self._deadline_timer.active():
            self._deadline_timer.cancel()
        self._deadline_timer = None
        if self._error is not None:
            self._done.errback(self._error)
        elif reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(None)
        else:
            self._done.errback(UpstreamUnavailable(f"the upstream connection broke: {reason.getErrorMessage()}"))


def declared_length(response) -> int | None:
    """The body's length as the response framed it (None: unknown, read to the end)."""
    length = response.length
    return None if length is UNKNOWN_LENGTH else length


async def read_body(response, limit: int, reactor, timeout: float) -> bytes:
    """
    The whole of a small body: `UpstreamUnavailable` when it announces or
    sends more than ``limit`` bytes, pauses for ``timeout`` seconds, or is
    not complete ``timeout`` seconds after it began.
    """
    announced = declared_length(response)
    if announced is not None and announced > limit:
        drop_body(response)
        raise BodyTooLong(f"the upstream announced {announced} bytes, more than the {limit} expected")
    chunks: list[bytes] = []
    received = 0

    def collect(data: bytes) -> None:
        nonlocal received
        received += len(data)
        if received > limit:
            raise BodyTooLong(f"the upstream sent more than {limit} bytes")
        chunks.append(data)

    done: Deferred = Deferred()
    response.deliverBody(BodyPump(collect, done, reactor, idle=timeout, deadline=timeout))
    await done
    return b"".join(chunks)


#: Bytes of an error (or redirect) body read so that its connection can be reused; a longer one is dropped.
DISCARD_LIMIT = 64 << 10


async def discard_body(response, reactor, timeout: float) -> None:
    """Read and forget a body we do not need, within the same bounds as `read_body`."""
    try:
        await read_body(response, DISCARD_LIMIT, reactor, timeout)
    except UpstreamError:
        pass


class _Dropper(Protocol):
    transport: IPushProducer  # type: ignore[assignment]  # deliverBody gives a producer, not an ITransport

    def connectionMade(self):
        self.transport.stopProducing()

    def connectionLost(self, reason):
        pass


def drop_body(response) -> None:
    """Close the response's connection without reading its body."""
    response.deliverBody(_Dropper())


# ---------------------------------------------------------------- headers


class _BoundedClientProtocol(ClientProtocolHooks):
    """An HTTP/1.1 client connection that drops a response whose headers pass `MAX_HEADER_BYTES`."""

    _header_bytes = 0

    def request(self, request):
        self._header_bytes = 0
        return ClientProtocolHooks.request(self, request)

    def dataReceived(self, data):
        counting = self.reading_headers()
        if counting:
            self._header_bytes += len(data)
        ClientProtocolHooks.dataReceived(self, data)
        if counting and self.reading_headers() and self._header_bytes > MAX_HEADER_BYTES:
            self.give_up(
                Failure(
                    UpstreamUnavailable(f"the upstream's response headers are longer than {MAX_HEADER_BYTES} bytes")
                )
            )


# A connection pool of `_BoundedClientProtocol` connections that do not log "Starting factory" lines.
BoundedPool = connection_pool(_BoundedClientProtocol, noisy=False)


# -------------------------------------------------------------- addresses


def is_public(host: str) -> bool:
    """Whether an IP address is a global one (not loopback, link-local, private, shared, reserved...)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global


class AddressGuard:
    """
    Which addresses connections of one upstream may go to.  The upstream's
    own host name is always connected to (it is what was configured), and
    the class of its addresses is noted; any other host (a redirect target,
    a token realm) must resolve to public addresses, unless ``mode`` is
    ``allow``, or ``auto`` and the upstream itself was found at a
    non-public address.
    """

    def __init__(self, upstream_host: str, mode: str = "auto"):
        if mode not in PRIVATE_REDIRECTS:
            raise ValueError(f"private_redirects must be one of {', '.join(PRIVATE_REDIRECTS)}")
        self.upstream_host = upstream_host.lower().strip("[]")
        self.mode = mode
        self.upstream_private = False  # the upstream's name last resolved to a non-public address

    def own(self, host: str) -> bool:
        return host.lower().strip("[]") == self.upstream_host

    def admits(self, host: str, address: str) -> bool:
        if self.own(host) or self.mode == "allow" or is_public(address):
            return True
        return self.mode == "auto" and self.upstream_private

    def resolved(self, host: str, addresses: list[str]) -> None:
        if self.own(host):
            self.upstream_private = any(not is_public(a) for a in addresses)


@implementer(IResolutionReceiver)
class _GuardedReceiver:
    def __init__(self, receiver, host: str, guard: AddressGuard):
        self._receiver = receiver
        self._host = host
        self._guard = guard
        self._seen: list[str] = []
        self._refused: list[str] = []

    def resolutionBegan(self, resolution):
        self._receiver.resolutionBegan(resolution)

    def addressResolved(self, address):
        host = getattr(address, "host", None)
        if host is None:
            return
        self._seen.append(host)
        if self._guard.admits(self._host, host):
            self._receiver.addressResolved(address)
        else:
            self._refused.append(host)

    def resolutionComplete(self):
        self._guard.resolved(self._host, self._seen)
        if self._refused and len(self._refused) == len(self._seen):
            log.warn(
                "not connecting to {host} ({addresses}) for upstream {upstream}: a non-public address, "
                "and private_redirects is {mode}",
                host=self._host,
                addresses=", ".join(self._refused),
                upstream=self._guard.upstream_host,
                mode=self._guard.mode
                + (" (the upstream is at a public address)" if self._guard.mode == "auto" else ""),
            )
        self._receiver.resolutionComplete()


@implementer(IHostnameResolver)
class _GuardedResolver:
    def __init__(self, resolver, guard: AddressGuard):
        self._resolver = resolver
        self._guard = guard

    def resolveHostName(self, resolutionReceiver, hostName, portNumber=0, addressTypes=None, transportSemantics="TCP"):
        return self._resolver.resolveHostName(
            _GuardedReceiver(resolutionReceiver, hostName, self._guard),
            hostName,
            portNumber,
            addressTypes,
            transportSemantics,
        )


@implementer(IReactorPluggableNameResolver, IReactorTCP, IReactorTime)
class _GuardedReactor:
    """The reactor as `HostnameEndpoint` sees it: the real one, with a guarded name resolver."""

    def __init__(self, reactor, resolver):
        self._reactor = reactor
        self.nameResolver = resolver

    def installNameResolver(self, resolver):
        raise NotImplementedError("the guarded resolver is fixed")

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        return self._reactor.connectTCP(host, port, factory, timeout, bindAddress)

    def listenTCP(self, port, factory, backlog=50, interface=""):
        return self._reactor.listenTCP(port, factory, backlog, interface)

    def callLater(self, delay, callable, *args, **kw):
        return self._reactor.callLater(delay, callable, *args, **kw)

    def seconds(self):
        return self._reactor.seconds()

    def getDelayedCalls(self):
        return self._reactor.getDelayedCalls()


@implementer(IAgentEndpointFactory)
class GuardedEndpoints:
    """Plain TCP for http, TLS for https (as Twisted's `Agent` does), to the addresses `AddressGuard` admits."""

    def __init__(self, reactor, guard: AddressGuard, connect_timeout: float | None):
        resolver = getattr(reactor, "nameResolver", None)
        if resolver is not None:
            reactor = _GuardedReactor(reactor, _GuardedResolver(resolver, guard))
        self._endpoints = StandardEndpointFactory(reactor, BrowserLikePolicyForHTTPS(), connect_timeout, None)

    def endpointForURI(self, uri):
        return self._endpoints.endpointForURI(uri)
