"""
Whether this process should be sent requests: its storage answers and takes
writes, and it is not shutting down.

The probe is real: a small file written under ``_health/`` (a folder of its
own, which garbage collection never looks at), read back and deleted, on
whichever storage the registry uses.  It has `PROBE_TIMEOUT` seconds; one
runs at a time, however many health checks ask meanwhile (a storage that
hangs is not then asked again and again), and checks that come while it
runs share its answer.  Changes are logged once each way: when the process
stops being ready (with the cause) and when it is ready again.
"""

from __future__ import annotations

import uuid

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import paths
from .storage.interfaces import StorageFull, StorageUnavailable

log = Logger(namespace="oci_registry.health")

PROBE_TIMEOUT = 3.0  # seconds the storage has to write, read and delete the probe
DRAINING = "shutting down"


class Readiness:
    """The answer `/readyz` gives: None when ready, else a short reason (no paths, names or secrets)."""

    def __init__(self, storage, reactor=None, timeout: float = PROBE_TIMEOUT):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._storage = storage
        self._reactor = reactor
        self.timeout = timeout
        self.draining = False
        self._probe: Deferred | None = None
        self._waiting: list[Deferred] = []
        self._not_ready: str | None = None  # the reason last logged

    def drain(self) -> None:
        """From now on, not ready: the process is shutting down."""
        self.draining = True

    def check(self) -> Deferred:
        """Fire with None (ready) or the reason it is not, within ``timeout`` seconds."""
        waiter: Deferred = Deferred()
        if self.draining:
            waiter.callback(DRAINING)
            return waiter
        self._waiting.append(waiter)
        timer = self._reactor.callLater(self.timeout, self._late, waiter)
        waiter.addBoth(_cancelling(timer))
        if self._probe is None:
            self._probe = Deferred.fromCoroutine(self._run())
            self._probe.addBoth(self._answered)
        return waiter

    def _late(self, waiter: Deferred) -> None:
        if not waiter.called:
            self._waiting.remove(waiter)
            self._judged(f"storage did not answer within {self.timeout:g}s", None)
            waiter.callback(f"storage did not answer within {self.timeout:g}s")

    async def _run(self) -> None:
        path = paths.health_probe(f"probe-{uuid.uuid4().hex}")
        data = uuid.uuid4().hex.encode()
        await self._storage.write_bytes(path, data, durable=False)
        try:
            if await self._storage.read_bytes(path) != data:
                raise _Mismatch()
        finally:
            await self._storage.delete(path)

    def _answered(self, result) -> None:
        self._probe = None
        reason, cause = (None, None) if not isinstance(result, Failure) else _reason(result)
        self._judged(reason, cause)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if not waiter.called:
                waiter.callback(DRAINING if self.draining else reason)

    def _judged(self, reason: str | None, cause: str | None) -> None:
        if reason is None and self._not_ready is not None:
            log.info("ready again: the storage answers the readiness probe")
        elif reason is not None and self._not_ready is None:
            log.warn("not ready: {reason}{cause}", reason=reason, cause=f" ({cause})" if cause else "")
        self._not_ready = reason


class _Mismatch(Exception):
    pass


def _reason(failure: Failure) -> tuple[str, str | None]:
    """What the client is told, and what the log line adds."""
    error = failure.value
    if isinstance(error, StorageUnavailable):
        return "storage unavailable", error.cause
    if isinstance(error, StorageFull):
        return "storage full", str(error)
    if isinstance(error, _Mismatch):
        return "storage returned other bytes than were written", None
    if isinstance(error, OSError) and error.strerror:
        return f"storage not writable: {error.strerror}", str(error)
    return "storage probe failed", failure.getErrorMessage()


def _cancelling(timer):
    def cancel(result):
        if timer.active():
            timer.cancel()
        return result

    return cancel
