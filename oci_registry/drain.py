"""
Stopping without cutting anyone off: the graceful drain.

When the registry stops (SIGTERM, SIGINT, twistd's own stop) its listeners
close at once, so new connections are refused and a load balancer moves
them elsewhere, and `/readyz` answers 503.  The requests in flight get up
to ``shutdown_timeout`` seconds to finish; a connection that is idle
meanwhile may still send one more request, which is served and answered
with ``Connection: close`` (so a health check on a kept-alive connection
sees the 503).  Once nothing is in flight, the remaining connections are
closed and the process goes on stopping; whatever is still running when the
time is up is cut, with one line for the drain and an access line, at
warning level, for each request cut.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

log = Logger(namespace="oci_registry.drain")

CLOSE_TIMEOUT = 3.0  # seconds the connections get, once drained, to send what they hold and close


class RequestTracker:
    """
    A site's open connections and the requests being handled on them, so
    that a drain knows what to wait for and what to close.  `RegistrySite`
    keeps one; its channels and requests report to it.
    """

    def __init__(self):
        self.channels: set = set()
        self.requests: set = set()
        self._unanswered: set = set()  # requests whose answer has not started yet
        self.draining = False
        self._idle: list[Deferred] = []
        self._closed: list[Deferred] = []

    def connected(self, channel) -> None:
        self.channels.add(channel)

    def disconnected(self, channel) -> None:
        self.channels.discard(channel)
        if not self.channels:
            closed, self._closed = self._closed, []
            for waiter in closed:
                waiter.callback(None)

    def started(self, request) -> None:
        """A request is being handled: while draining, its connection closes once it is answered."""
        self.requests.add(request)
        stream = getattr(request, "body_stream", None)
        if stream is None or stream.is_received:
            self._unanswered.add(request)
        if self.draining:
            _close_after(request)
        request.notifyFinish().addBoth(self._ended, request)

    def received(self, request) -> None:
        """The request's body (streamed to its handler) is in: the request waits for its answer now."""
        if request in self.requests and not request.startedWriting:
            self._unanswered.add(request)

    def answering(self, request) -> None:
        """The request's answer has started (its status and headers are written)."""
        self._unanswered.discard(request)

    def waiting(self) -> bool:
        """
        Whether a request waits for its answer: background work (a scheduled
        garbage collection) holds back meanwhile.  Requests still sending
        their body (a blob upload) do not count yet, requests streaming
        their answer (a blob download) no longer do.
        """
        return bool(self._unanswered)

    def _ended(self, _, request) -> None:
        self.requests.discard(request)
        self._unanswered.discard(request)
        if not self.requests and self.draining:
            idle, self._idle = self._idle, []
            for waiter in idle:
                waiter.callback(None)

    def drain(self) -> Deferred:
        """Fires once no request is in flight, every connection then told to close after its answer."""
        self.draining = True
        for request in list(self.requests):
            _close_after(request)
        if not self.requests:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._idle.append(waiter)
        return waiter

    def close_all(self) -> Deferred:
        """
        Close every connection once what was written to it is sent; fires
        when they are all closed (the process must not end with a response
        still in its buffers).
        """
        for channel in list(self.channels):
            transport = channel.transport
            if transport is not None:
                transport.loseConnection()
        if not self.channels:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._closed.append(waiter)
        return waiter

    def abort_all(self) -> None:
        for channel in list(self.channels):
            if channel.transport is not None:
                channel.transport.abortConnection()

    def cut(self, reason: str) -> int:
        """Cut the connections of the requests still in flight; how many there were."""
        cut = 0
        for request in list(self.requests):
            channel = request.channel
            if channel is None or channel.transport is None:
                continue
            channel.cut_reason = reason
            channel.transport.abortConnection()
            cut += 1
        return cut


def _close_after(request) -> None:
    channel = request.channel
    if channel is not None:
        channel.persistent = False
    if not request.startedWriting:
        request.setHeader(b"connection", b"close")


class DrainService(Service):
    """
    Drains ``tracker`` (a site's `RequestTracker`) when it stops, for at
    most ``timeout`` seconds, having told ``readiness`` first.  Stop it
    together with the listeners (a `MultiService` stops its children at
    once): they stop accepting while this waits.
    """

    def __init__(self, reactor, tracker: RequestTracker, readiness=None, timeout: float = 30.0):
        self._reactor = reactor
        self._tracker = tracker
        self._readiness = readiness
        self.timeout = timeout

    def stopService(self):
        super().stopService()
        if self._readiness is not None:
            self._readiness.drain()
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        tracker, reactor = self._tracker, self._reactor
        in_flight = len(tracker.requests)
        if in_flight:
            log.info(
                "draining: waiting up to {timeout:g}s for {count} request(s) in flight",
                timeout=self.timeout,
                count=in_flight,
            )
        if await _within(reactor, tracker.drain(), self.timeout):
            if in_flight:
                log.info("drained: every request in flight finished")
        else:
            count = tracker.cut(f"cut at shutdown: still running after shutdown_timeout ({self.timeout:g}s)")
            log.warn(
                "shutdown_timeout ({timeout:g}s) reached: cutting {count} request(s) still in flight",
                timeout=self.timeout,
                count=count,
            )
        # Answers written but not yet sent go out before the process ends; a client that reads none gets cut.
        if not await _within(reactor, tracker.close_all(), CLOSE_TIMEOUT):
            tracker.abort_all()
            await _within(reactor, tracker.close_all(), CLOSE_TIMEOUT)


def _within(reactor, d: Deferred, timeout: float) -> Deferred:
    """Fires with True when ``d`` fires within ``timeout`` seconds, else with False then (``d`` left as it is)."""
    result: Deferred = Deferred()

    def fired(_):
        if timer.active():
            timer.cancel()
        if not result.called:
            result.callback(True)

    def late():
        if not result.called:
            result.callback(False)

    timer = reactor.callLater(timeout, late)
    d.addBoth(fired)
    return result
