"""
Failed-login rate limiting, per client address.

After ``limit`` failed logins from one address within ``window`` seconds,
that address gets 429 ``TOOMANYREQUESTS`` (with ``Retry-After``) for every
request that carries credentials, right or wrong, until the oldest of those
failures is ``window`` seconds old.  The password is not even checked
meanwhile, so guessing costs the attacker time and costs the registry
nothing.  Requests without credentials (anonymous pulls) are not limited.

429 rather than a delayed 401: a delay would hold a connection open per
attempt, which is a resource an attacker chooses how much of to use; an
immediate answer with ``Retry-After`` is cheap and tells an honest client
what happened.  Counts are kept in memory, per process.
"""

from __future__ import annotations

import math
import time
from collections import deque

MAX_TRACKED = 10_000  # addresses kept before old entries are swept


class FailedLogins:
    def __init__(self, limit: int = 10, window: float = 60.0, clock=time.monotonic):
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque] = {}

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or None when it may try now."""
        if self.limit <= 0:
            return None
        failures = self._failures.get(client)
        if failures is None or len(failures) < self.limit:
            return None
        wait = failures[0] + self.window - self._clock()
        if wait <= 0:
            return None
        return max(1, math.ceil(wait))

    def failed(self, client: str) -> None:
        if self.limit <= 0:
            return
        now = self._clock()
        if len(self._failures) >= MAX_TRACKED and client not in self._failures:
            self._sweep(now)
        failures = self._failures.setdefault(client, deque(maxlen=self.limit))
        failures.append(now)

    def _sweep(self, now: float) -> None:
        for client in [c for c, f in self._failures.items() if not f or f[-1] + self.window <= now]:
            del self._failures[client]
        while len(self._failures) >= MAX_TRACKED:  # all recent: forget the oldest entries
            del self._failures[next(iter(self._failures))]

    def configure(self, limit: int, window: float) -> None:
        if (limit, window) != (self.limit, self.window):
            self.limit, self.window = limit, window
            self._failures.clear()
