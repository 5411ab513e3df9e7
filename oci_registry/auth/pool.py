"""
The thread pool that password checks run in.

bcrypt is slow on purpose, so checks run off the reactor thread; they run in
a small pool of their own, not in the reactor's shared one, so that logins
never wait behind transfers or anything else, and transfers never wait behind
a flood of logins.  The pool takes at most ``threads + max_waiting`` checks
at a time: past that, a new check is refused at once (503 ``UNAVAILABLE``
with ``Retry-After``) instead of queueing unbounded work and memory.  A
check is counted until its thread is done with it, even when whoever asked
for it has stopped waiting.

The pool starts with the service (`LoginPoolService`) or, for an
application that embeds the registry without it, at the first check; it
stops with the service or when the reactor shuts down.
"""

from __future__ import annotations

import os

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from ..errors import Unavailable

log = Logger()

DEFAULT_THREADS = max(2, min(4, os.cpu_count() or 1))
DEFAULT_MAX_WAITING = 64


class LoginPool:
    def __init__(self, reactor=None, threads: int = DEFAULT_THREADS, max_waiting: int = DEFAULT_MAX_WAITING):
        self._reactor = reactor
        self.threads = threads
        self.max_waiting = max_waiting
        self.in_flight = 0  # checks taken and not yet done (running or waiting for a thread)
        self._pool: ThreadPool | None = None
        self._trigger = None
        self._refusing = False

    @property
    def running(self) -> bool:
        return self._pool is not None

    def start(self) -> None:
        self._start()

    def _start(self) -> ThreadPool:
        if self._pool is not None:
            return self._pool
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        pool = self._pool = ThreadPool(self.threads, self.threads, name="ociregistry-login")
        pool.start()
        self._trigger = self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)
        return pool

    def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self._trigger is not None:
            try:
                self._reactor.removeSystemEventTrigger(self._trigger)
            except (ValueError, KeyError):  # it is running now: the reactor is shutting down
                pass
            self._trigger = None
        pool.stop()

    def run(self, f, *args) -> Deferred:
        """Fire with ``f(*args)``, run in the pool; Unavailable (503) when the pool has no room."""
        if self.in_flight >= self.threads + self.max_waiting:
            if not self._refusing:
                self._refusing = True
                log.warn(
                    "{count} password checks are waiting: refusing new logins until some are done",
                    count=self.in_flight,
                )
            raise Unavailable(
                "too many logins are being checked; try again shortly",
                message="too many logins at once",
                headers={"Retry-After": "1"},
            )
        self._refusing = False
        pool = self._start()
        self.in_flight += 1
        done: Deferred = Deferred()
        reactor = self._reactor

        def finished(success, result):  # in the pool's thread
            reactor.callFromThread(self._finished, done, success, result)

        pool.callInThreadWithCallback(finished, f, *args)
        return done

    def _finished(self, done: Deferred, success: bool, result) -> None:
        self.in_flight -= 1
        if success:
            done.callback(result)
        else:
            done.errback(result)


class LoginPoolService(Service):
    """Runs a `LoginPool` while the service runs."""

    name = "login-pool"  # type: ignore[assignment]  # Twisted declares Service.name by its default, None

    def __init__(self, pool: LoginPool):
        self.pool = pool

    def startService(self):
        super().startService()
        self.pool.start()

    def stopService(self):
        super().stopService()
        self.pool.stop()
