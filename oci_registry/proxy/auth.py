"""
Authenticating to an upstream registry, as a Docker client does.

A registry that wants credentials answers 401 with a challenge:

- ``WWW-Authenticate: Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"``
  asks the client to fetch a token from ``realm`` (anonymously, or with
  Basic credentials) for ``service`` and ``scope``, then to send it as
  ``Authorization: Bearer TOKEN``.  Tokens are cached per scope until they
  expire (``expires_in``, 60 seconds when absent, as the token spec says).
- ``WWW-Authenticate: Basic realm="..."`` asks for the credentials themselves
  on every request.
"""

from __future__ import annotations

import base64
import re
import time

import attr
from twisted.internet.defer import Deferred

_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')

#: A token is renewed this many seconds before the upstream says it expires.
EXPIRY_MARGIN = 5.0
DEFAULT_TOKEN_LIFETIME = 60.0
#: A token is kept at most this long, whatever its ``expires_in`` says.
MAX_TOKEN_LIFETIME = 3600.0
#: Tokens kept at once (one per repository pulled recently); the oldest go first beyond it.
MAX_TOKENS = 4096


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Challenge:
    scheme: str  # "bearer" or "basic", lower case
    params: dict = attr.ib(factory=dict, hash=False)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> tuple[str, ...]:
        scope = self.params.get("scope")
        return tuple(scope.split(" ")) if scope else ()


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9_-]*)(?:\s+|$)")
_SEPARATORS = re.compile(r"[\s,]*")
#: Challenges and parameters read from one response; an upstream may send more, they are ignored.
MAX_CHALLENGES = 16
MAX_PARAMS = 32


def parse_challenges(values: list[str]) -> list[Challenge]:
    """Every challenge in the ``WWW-Authenticate`` header values, in order (at most `MAX_CHALLENGES`)."""
    found: list[Challenge] = []
    for value in values:
        text = value.strip()
        pos = 0
        while pos < len(text) and len(found) < MAX_CHALLENGES:
            match = _SCHEME.match(text, pos)
            if match is None:
                break
            scheme, pos = match.group(1).lower(), match.end()
            params: dict[str, str] = {}
            while pos < len(text) and len(params) < MAX_PARAMS:
                param = _PARAM.match(text, pos)
                if param is None:
                    break
                key, quoted, bare = param.groups()
                params[key.lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
                pos = param.end()
            found.append(Challenge(scheme, params))
            separators = _SEPARATORS.match(text, pos)  # it matches the empty string too
            pos = separators.end() if separators is not None else pos
    return found


def basic_authorization(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def repository_scope(name: str, actions: str = "pull") -> str:
    return f"repository:{name}:{actions}"


@attr.s(auto_attribs=True, slots=True)
class _Token:
    value: str
    expires: float


class TokenCache:
    """
    Bearer tokens by (realm, service, scope), kept until shortly before they
    expire (an hour at most), `MAX_TOKENS` at most.  Concurrent requests for
    the same missing token share one fetch; a fetch that fails (the client
    bounds how long one may take) fails all of them, and the next request
    starts afresh.
    """

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._tokens: dict[tuple, _Token] = {}
        self._fetching: dict[tuple, list[Deferred]] = {}

    def get(self, key: tuple) -> str | None:
        token = self._tokens.get(key)
        if token is None:
            return None
        if self._clock() >= token.expires:
            del self._tokens[key]
            return None
        return token.value

    def put(self, key: tuple, value: str, expires_in: float | None) -> None:
        lifetime = DEFAULT_TOKEN_LIFETIME if not expires_in or not expires_in > 0 else float(expires_in)
        lifetime = min(lifetime, MAX_TOKEN_LIFETIME)
        self._tokens.pop(key, None)
        if len(self._tokens) >= MAX_TOKENS:
            now = self._clock()
            for old in [k for k, t in self._tokens.items() if now >= t.expires]:
                del self._tokens[old]
            while len(self._tokens) >= MAX_TOKENS:
                del self._tokens[next(iter(self._tokens))]  # the oldest
        self._tokens[key] = _Token(value, self._clock() + max(lifetime - min(EXPIRY_MARGIN, lifetime / 10), 0))

    def forget(self, key: tuple) -> None:
        self._tokens.pop(key, None)

    async def fetch(self, key: tuple, fetcher) -> str:
        """The cached token for ``key``, or the one ``fetcher()`` (fired with ``(token, expires_in)``) gets."""
        cached = self.get(key)
        if cached is not None:
            return cached
        waiters = self._fetching.get(key)
        if waiters is not None:
            waiter: Deferred = Deferred()
            waiters.append(waiter)
            return await waiter
        self._fetching[key] = waiters = []
        try:
            value, expires_in = await fetcher()
        except BaseException as e:
            for waiter in self._fetching.pop(key, []):
                waiter.errback(e)
            raise
        self.put(key, value, expires_in)
        for waiter in self._fetching.pop(key, []):
            waiter.callback(value)
        return value
