"""
Failed-login rate limiting, per client address.

After ``limit`` failed logins from one address within ``window`` seconds,
that address gets 429 ``TOOMANYREQUESTS`` (with ``Retry-After``) for every
request that carries credentials, right or wrong, until the oldest of those
failures is ``window`` seconds old.  The password is not even checked
meanwhile, so guessing costs the attacker time and costs the registry
nothing.  Requests without credentials (anonymous pulls) are not limited.

A check counts from the moment it starts: the checks in flight from an
address count with its recent failures, so guesses sent all at once are
refused past the limit, unchecked, instead of all being checked before the
first of them fails.

429 rather than a delayed 401: a delay would hold a connection open per
attempt, which is a resource an attacker chooses how much of to use; an
immediate answer with ``Retry-After`` is cheap and tells an honest client
what happened.  Counts are kept in memory, per process, for at most
``MAX_TRACKED`` addresses (the one that failed least recently is forgotten
first).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque

MAX_TRACKED = 10_000  # addresses whose failures are remembered


class FailedLogins:
    def __init__(self, limit: int = 10, window: float = 60.0, clock=time.monotonic):
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: OrderedDict[str, deque] = OrderedDict()  # least recently failed first
        self._checking: dict[str, int] = {}  # checks in flight, per address

    def _recent(self, client: str, now: float) -> deque | None:
        failures = self._failures.get(client)
        if failures is None:
            return None
        while failures and failures[0] + self.window <= now:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        return failures

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or None when its failures let it try now."""
        if self.limit <= 0:
            return None
        now = self._clock()
        failures = self._recent(client, now)
        if failures is None or len(failures) < self.limit:
            return None
        return max(1, math.ceil(failures[0] + self.window - now))

    def begin(self, client: str) -> int | None:
        """
        Count a check from ``client`` as started and return None; or, when its
        recent failures and the checks it has in flight already reach the
        limit, count nothing and return the seconds to wait.  Every None is
        followed by one `end`.
        """
        if self.limit > 0:
            retry = self.retry_after(client)
            if retry is not None:
                return retry
            failures = self._recent(client, self._clock())
            if (len(failures) if failures else 0) + self._checking.get(client, 0) >= self.limit:
                return 1  # the checks in flight answer within a second or so
        self._checking[client] = self._checking.get(client, 0) + 1
        return None

    def end(self, client: str, failed: bool) -> bool:
        """A check counted by `begin` is over (``failed``: a wrong password); True when that reached the limit."""
        left = self._checking.get(client, 0) - 1
        if left > 0:
            self._checking[client] = left
        else:
            self._checking.pop(client, None)
        return self.failed(client) if failed else False

    def checking(self, client: str) -> int:
        return self._checking.get(client, 0)

    def failed(self, client: str) -> bool:
        """Count a failed login; True when it is the one that reached the limit."""
        if self.limit <= 0:
            return False
        now = self._clock()
        failures = self._recent(client, now)
        if failures is None:
            # Room for one more: forget the address whose last failure is the oldest.
            while len(self._failures) >= MAX_TRACKED:
                self._failures.popitem(last=False)
            failures = self._failures[client] = deque(maxlen=self.limit)
        else:
            self._failures.move_to_end(client)
        reached = len(failures) == self.limit - 1
        failures.append(now)
        return reached

    def configure(self, limit: int, window: float) -> None:
        if (limit, window) != (self.limit, self.window):
            self.limit, self.window = limit, window
            self._failures.clear()
