"""
The auth settings in force, and password logins against them.

`AuthState` holds the access policy, the htpasswd users and the failed-login
counts.  It reads the ``auth`` section and the htpasswd file again when
either file changes (looked at, at most once a second, when a request needs
them) or when `reload` is called (on SIGHUP).  A section or file that has
become unusable is logged and the settings in force stay.  Rules, groups,
admins, the htpasswd path and the rate limits change this way; the mode,
realm and token settings need a restart.

`PasswordLogin` checks a user name and password: rate limited per client
address, constant-time, off the reactor thread in a pool of its own
(`LoginPool`: bcrypt is slow on purpose),
with a short-lived cache of successful checks keyed by an HMAC of the
credentials under a per-process random key (so the cache holds no password,
and a client sending Basic credentials on every request costs one bcrypt
check a minute, not one per request).  Passwords never reach a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..api.context import client_of
from ..errors import TooManyRequests
from .config import AuthConfig
from .htpasswd import DEFAULT_DUMMY_COST, HtpasswdFile, verify_hash, verify_unknown
from .pool import LoginPool
from .ratelimit import FailedLogins
from .rules import ANONYMOUS_IDENTITY, Identity

log = Logger()

CACHE_SECONDS = 60.0
CACHE_SIZE = 4096


def client_address(request) -> str:
    """The key of the failed-login limit: the client's address, believed through trusted proxies only."""
    return client_of(request)


def printable(name: str) -> str:
    """A name from a request, for a log line: at most 100 characters, and quoted if it holds control characters."""
    name = name[:100]
    return name if name.isprintable() else repr(name)


def _stamp(path: str | None):
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class AuthState:
    def __init__(self, config: AuthConfig, check_interval: float = 1.0, clock=time.monotonic):
        self.config = config
        self.check_interval = check_interval
        self._clock = clock
        self.policy = config.policy()
        self.users = self._users(config.htpasswd)
        self.limiter = FailedLogins(config.max_failed_logins, config.failed_login_window, clock=clock)
        self._source_stamp = _stamp(config.source)
        self._checked = clock()

    def _users(self, path: str | None) -> HtpasswdFile | None:
        return HtpasswdFile(path, self.check_interval, self._clock) if path else None

    def identity(self, user: str | None) -> Identity:
        return self.policy.identity(user) if user is not None else ANONYMOUS_IDENTITY

    def maybe_reload(self) -> None:
        """Read the auth section and the htpasswd file again if they changed."""
        now = self._clock()
        if now - self._checked >= self.check_interval:
            self._checked = now
            if _stamp(self.config.source) != self._source_stamp:
                self._reread()
        if self.users is not None:
            self.users.maybe_reload()

    def reload(self) -> None:
        """Read everything again now (SIGHUP)."""
        log.info("reloading auth settings")
        self._checked = self._clock()
        self._reread()
        if self.users is not None:
            self.users.load()

    def _reread(self) -> None:
        self._source_stamp = _stamp(self.config.source)
        try:
            new = self.config.reread()
        except (ValueError, OSError) as e:
            log.error(
                "auth settings in {source} not applied ({error}); the previous ones stay in force",
                source=self.config.source,
                error=str(e),
            )
            return
        if (new.mode, new.realm, new.token) != (self.config.mode, self.config.realm, self.config.token):
            log.warn(
                "auth mode, realm and token settings changed in {source}: they take effect after a restart",
                source=self.config.source,
            )
        if new.htpasswd != self.config.htpasswd:
            try:
                self.users = self._users(new.htpasswd)
            except ValueError as e:
                log.error("{error}; keeping the previous users", error=str(e))
                return
        self.policy = new.policy()
        self.limiter.configure(new.max_failed_logins, new.failed_login_window)
        self.config = new
        log.info(
            "auth settings read again from {source}: {rules} access rules, {groups} groups, {admins} admins",
            source=new.source,
            rules=len(new.access),
            groups=len(new.groups),
            admins=len(new.admins),
        )


class PasswordLogin:
    """Checks user names and passwords for the Basic scheme and the token endpoint."""

    def __init__(self, state: AuthState, pool: LoginPool | None = None, clock=time.monotonic, run_blocking=None):
        """Checks run in ``pool`` (a `LoginPool` of their own), or through ``run_blocking(f, *args)`` if given."""
        self.state = state
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._cache: dict[bytes, tuple[float, int]] = {}
        self._checking: dict[bytes, list[Deferred]] = {}  # credentials being checked -> who waits for the answer
        if run_blocking is None:
            pool = pool if pool is not None else LoginPool()
            run_blocking = pool.run
        self.pool = pool
        self._run_blocking = run_blocking

    def refuse_if_limited(self, request) -> str:
        """The client's address; 429 when it has failed to log in too often lately."""
        client = client_address(request)
        retry = self.state.limiter.retry_after(client)
        if retry is not None:
            raise _too_many(retry)
        return client

    async def login(self, request, user: str, password: str) -> Identity | None:
        """The user's `Identity` if the password is right; None (and one more failure counted) if not."""
        client = self.refuse_if_limited(request)
        self.state.maybe_reload()
        users = self.state.users
        secret = password.encode("utf-8")
        key = hmac.new(self._key, user.encode("utf-8") + b"\0" + secret, hashlib.sha256).digest()
        generation = users.generation if users is not None else -1
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self._clock() and cached[1] == generation:
            return self.state.identity(user)
        answer: Deferred = Deferred()
        waiters = self._checking.get(key)
        if waiters is not None:
            # The same credentials are being checked (a client's parallel requests): share that check.
            waiters.append(answer)
        else:
            self._start_check(client, key, user, secret, answer)
        if not await answer:
            # Here rather than where the check ends: in the request's own log context, once per request.
            log.info("failed login as {user} from {client}", user=printable(user), client=client)
            return None
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = (self._clock() + CACHE_SECONDS, generation)
        return self.state.identity(user)

    def _start_check(self, client: str, key: bytes, user: str, secret: bytes, answer: Deferred) -> None:
        """
        Check a password in a thread, counted towards the client's limit from
        now until the thread is done (even when every waiter has hung up).
        """
        limiter = self.state.limiter
        retry = limiter.begin(client)
        if retry is not None:
            raise _too_many(retry)
        self._checking[key] = [answer]
        users = self.state.users
        stored = users.lookup(user) if users is not None else None
        try:
            if stored is None:
                cost = users.dummy_cost if users is not None else DEFAULT_DUMMY_COST
                job = self._run_blocking(verify_unknown, secret, cost)
            else:
                job = self._run_blocking(verify_hash, stored, secret)
        except BaseException:
            del self._checking[key]
            limiter.end(client, failed=False)
            raise
        job.addBoth(self._checked, client, key, user)

    def _checked(self, result, client: str, key: bytes, user: str) -> None:
        limiter = self.state.limiter
        waiters = self._checking.pop(key)
        failed = result is False
        if limiter.end(client, failed=failed):
            log.warn(
                "too many failed logins from {client} ({limit} within {window:.0f}s): its credentials are "
                "refused for now",
                client=client,
                limit=limiter.limit,
                window=limiter.window,
            )
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)


def _too_many(retry: int) -> TooManyRequests:
    return TooManyRequests(
        "too many failed logins from this address; try again later", headers={"Retry-After": str(retry)}
    )
