"""
Whether a storage answers, as its driver sees it, and the log lines that
say so: one when it starts failing (with the cause), one when it answers
again (with how long it failed and how many operations did), and nothing
per request in between, however many requests get 503 meanwhile.  An
outage ends once the storage answers with no failure for ``SETTLE``
seconds, so that one failing in part (some files unreadable, some requests
refused) is one outage, not a line per request.
"""

from __future__ import annotations

import time

from twisted.logger import Logger

from .interfaces import StorageUnavailable

log = Logger(namespace="oci_registry.storage")

RETRY_LOG_INTERVAL = 1.0  # seconds between two "retrying" lines
SETTLE = 3.0  # seconds without a failure before an answer ends an outage


class Availability:
    """One storage's state for this process; ``what`` names it in log lines (never with secrets)."""

    def __init__(self, what: str, clock=time.monotonic):
        self.what = what
        self._clock = clock
        self.down_since: float | None = None
        self._last_failure = 0.0
        self._failures = 0
        self._last_retry_line: float | None = None
        self._retries_unsaid = 0

    @property
    def down(self) -> bool:
        """True from a failure until the outage ends."""
        return self.down_since is not None

    def failed(self, error: StorageUnavailable) -> StorageUnavailable:
        """Note a failed operation; the first of an outage is logged.  Returns ``error``, for ``raise``."""
        self._failures += 1
        self._last_failure = self._clock()
        if self.down_since is None:
            self.down_since = self._last_failure
            log.error(
                "storage unavailable: {what}: {cause}; requests get 503 until it answers again",
                what=self.what,
                cause=error.cause,
            )
        return error

    def answered(self) -> None:
        """Note that the storage answered an operation (as it should, or with a plain "not found")."""
        if self.down_since is None or self._clock() - self._last_failure < SETTLE:
            return
        log.info(
            "storage available again: {what} (after {seconds:.1f}s; {failures} operations failed)",
            what=self.what,
            seconds=self._clock() - self.down_since,
            failures=self._failures,
        )
        self.down_since = None
        self._failures = 0

    def retrying(self, resource: str, delay: float, reason: str) -> None:
        """A request is tried again: said at most once a second, and not at all during an outage."""
        if self.down:
            return
        now = self._clock()
        if self._last_retry_line is not None and now - self._last_retry_line < RETRY_LOG_INTERVAL:
            self._retries_unsaid += 1
            return
        others = f" ({self._retries_unsaid} other retries not logged)" if self._retries_unsaid else ""
        log.warn(
            "retrying {resource} in {delay}s after {reason}{others}",
            resource=resource,
            delay=delay,
            reason=reason,
            others=others,
        )
        self._last_retry_line, self._retries_unsaid = now, 0
