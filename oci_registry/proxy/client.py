"""
The upstream client: the Distribution API of another registry, spoken with
treq on the registry's own reactor.

It answers the upstream's auth challenges (see `oci_registry.proxy.auth`),
follows redirects as `redirect_target` allows (Docker Hub and GHCR send blob
GETs to presigned object store URLs; credentials are never sent to another
origin), waits out a 429's ``Retry-After`` when it is short, and streams
blob bodies with back-pressure.  Every body is read within a deadline and a
size bound (`oci_registry.proxy.transport`).  Failures are reported as
`UpstreamNotFound` (404), `UpstreamDenied` (the upstream refused our
credentials) and `UpstreamUnavailable` (unreachable, timed out, 5xx, rate
limited, too big): the cache policy decides what each means for a client.
"""

from __future__ import annotations

import json
import math
import re
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode, urljoin, urlsplit

import attr
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.web.client import Agent, ResponseFailed
from zope.interface import Attribute, Interface, implementer

from ..errors import DigestInvalid
from ..manifest import MAX_MANIFEST_SIZE
from ..reference import Digest
from .auth import Challenge, TokenCache, basic_authorization, parse_challenges, repository_scope
from .config import UpstreamConfig
from .transport import (
    AddressGuard,
    BodyPump,
    BodyTooLong,
    BoundedPool,
    GuardedEndpoints,
    UpstreamDenied,
    UpstreamError,
    UpstreamNotFound,
    UpstreamUnavailable,
    declared_length,
    discard_body,
    read_body,
)

log = Logger()

USER_AGENT = "ociregistry-proxy/0.1"
MAX_REDIRECTS = 5  # hops followed for one request (Docker Hub and GHCR need one)
MAX_RATE_LIMIT_RETRIES = 3
MAX_TAG_PAGES = 100
TOKEN_BODY = 1 << 20  # a token server's answer
TAG_LIST_BYTES = 4 << 20  # all the pages of one tag list together
REDIRECTS = (301, 302, 303, 307, 308)

__all__ = [
    "IUpstream",
    "IUpstreamBlob",
    "UpstreamClient",
    "UpstreamDenied",
    "UpstreamError",
    "UpstreamManifest",
    "UpstreamNotFound",
    "UpstreamUnavailable",
]


@attr.s(auto_attribs=True, frozen=True, slots=True)
class UpstreamManifest:
    digest: Digest | None  # from Docker-Content-Digest; None when the upstream did not say
    media_type: str | None
    size: int
    data: bytes | None  # None for a HEAD


class IUpstream(Interface):
    """One upstream registry.  Names are the upstream's own; every method returns a Deferred."""

    url = Attribute("The upstream's base URL, scheme://host[:port].")

    def get_manifest(name, reference, accept):
        """Fire with an `UpstreamManifest` with its bytes; ``accept`` is a sequence of media types."""

    def head_manifest(name, reference, accept):
        """Fire with an `UpstreamManifest` without bytes."""

    def head_blob(name, digest):
        """Fire with the blob's size (None if the upstream does not say)."""

    def get_blob(name, digest):
        """Fire with an `IUpstreamBlob` once the response headers are in."""

    def list_tags(name):
        """Fire with every tag of the repository, following pagination."""

    def referrers(name, digest):
        """Fire with the descriptors of the referrers API's answer."""


class IUpstreamBlob(Interface):
    length = Attribute("The blob's size from Content-Length, or None.")

    def deliver(sink):
        """
        Call ``sink(chunk)`` for each chunk of the body; when ``sink`` returns
        an unfired Deferred, stop reading from the upstream until it fires.
        Fires when the body is complete; fails with `UpstreamUnavailable` when
        the connection breaks or stalls.
        """

    def cancel():
        """Drop the connection without reading the body."""


def _deferred(method):
    """Public coroutine methods return Deferreds, as the interfaces promise."""

    def wrapper(*args, **kwargs):
        return Deferred.fromCoroutine(method(*args, **kwargs))

    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


def _where(url: str) -> str:
    """A URL for a message: without its query (presigned URLs carry signatures there), and not too long."""
    return url.split("?", 1)[0][:200]


def _origin(url: str) -> tuple:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _headers(response, name: str) -> list[str]:
    """A header's values as sent (bytes decoded as latin-1: an upstream's bytes need not be UTF-8)."""
    return [v.decode("latin-1") for v in response.headers.getRawHeaders(name.encode("ascii"), [])]


def _header(response, name: str) -> str | None:
    values = _headers(response, name)
    return values[0] if values else None


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` (delta seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]+", value):
        return float(value)  # 10**5000 is inf: longer than any wait, not an error
    if len(value) > 64:
        return None
    try:
        return max(parsedate_to_datetime(value).timestamp() - now, 0.0)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def _header_length(response) -> int | None:
    """Content-Length as sent (for a HEAD, Twisted's ``response.length`` is 0: there is no body)."""
    value = (_header(response, "Content-Length") or "").strip()
    return int(value) if re.fullmatch(r"[0-9]{1,20}", value) else None


def redirect_target(current: str, location: str) -> str:
    """
    Where a redirect from ``current`` leads, or `UpstreamUnavailable` when it
    may not be followed: to anything but http(s), or from https to plain
    http (the bytes would cross the network unprotected after the upstream
    promised otherwise).  Which addresses may be connected to is decided
    when connecting (`oci_registry.proxy.transport.AddressGuard`).
    """
    try:
        target = urljoin(current, location.strip())
        parts = urlsplit(target)
        hostname = parts.hostname
    except ValueError:
        raise UpstreamUnavailable("the upstream redirected to an unreadable Location") from None
    where = target.split("?", 1)[0][:200]
    if parts.scheme not in ("http", "https") or not hostname:
        raise UpstreamUnavailable(f"not following a redirect to {where}: only http(s) URLs are followed")
    if urlsplit(current).scheme == "https" and parts.scheme == "http":
        raise UpstreamUnavailable(f"not following a redirect from https to plain http ({where})")
    return target


@implementer(IUpstreamBlob)
class _UpstreamBlob:
    def __init__(self, response, reactor, idle_timeout: float, min_rate: int):
        self._response = response
        self._reactor = reactor
        self._idle_timeout = idle_timeout
        self._min_rate = min_rate
        self._pump: BodyPump | None = None
        self.length = declared_length(response)

    def deliver(self, sink) -> Deferred:
        done: Deferred = Deferred()
        self._start(sink, done)
        return done

    def cancel(self) -> None:
        pump = self._pump if self._pump is not None else self._start(lambda data: None, Deferred())
        pump.abort()

    def _start(self, sink, done: Deferred) -> BodyPump:
        pump = self._pump = BodyPump(sink, done, self._reactor, self._idle_timeout, self._min_rate)
        self._response.deliverBody(pump)
        return pump


@implementer(IUpstream)
class UpstreamClient:
    """The `IUpstream` for a configured upstream, over treq."""

    def __init__(
        self,
        config: UpstreamConfig,
        reactor=None,
        http=None,
        tokens: TokenCache | None = None,
        max_manifest_size: int = MAX_MANIFEST_SIZE,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.url = config.url
        self.max_manifest_size = max_manifest_size
        self._reactor = reactor
        self._pool = None
        self.guard = AddressGuard(urlsplit(config.url).hostname or "", config.private_redirects)
        if http is None:
            self._pool = BoundedPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = 8
            endpoints = GuardedEndpoints(reactor, self.guard, config.timeout or None)
            http = HTTPClient(Agent.usingEndpointFactory(reactor, endpoints, pool=self._pool))
        self._http = http
        self._tokens = tokens if tokens is not None else TokenCache()
        self._challenge: Challenge | None = None  # learnt from the last 401
        self._origin = _origin(config.url)

    def __repr__(self) -> str:
        return f"<UpstreamClient {self.url}>"

    def close(self) -> Deferred | None:
        return self._pool.closeCachedConnections() if self._pool is not None else None

    # ---------------------------------------------------------- plumbing

    async def _send(self, method: str, url: str, headers: dict):
        try:
            return await self._http.request(
                method,
                url,
                headers=headers,
                allow_redirects=False,
                unbuffered=True,
                timeout=self.config.timeout or None,
            )
        except ResponseFailed as e:
            reasons = "; ".join(self._reason(r.value) for r in e.reasons)
            raise UpstreamUnavailable(f"{method} {_where(url)}: {reasons}") from None
        except Exception as e:  # noqa: BLE001 refused, DNS, TLS, a timeout...: each is an upstream the client cannot use
            raise UpstreamUnavailable(f"{method} {_where(url)}: {self._reason(e, named=True)}") from None

    def _reason(self, error: BaseException, named: bool = False) -> str:
        if isinstance(error, CancelledError):  # treq's timeout cancels the request
            return f"no response within {self.config.timeout:g}s" if self.config.timeout else "cancelled"
        return f"{error.__class__.__name__}: {error}" if named else str(error)

    async def _read_body(self, response, limit: int) -> bytes:
        return await read_body(response, limit, self._reactor, self.config.timeout)

    async def _discard(self, response) -> None:
        await discard_body(response, self._reactor, self.config.timeout)

    def _credentials(self) -> tuple[str, str] | None:
        if self.config.username is None or self.config.password is None:
            return None
        return self.config.username, self.config.password

    async def _authorization(self, scope: str) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            credentials = self._credentials()
            return basic_authorization(*credentials) if credentials else None
        key = (challenge.realm, challenge.service, scope)
        token = await self._tokens.fetch(key, lambda: self._fetch_token(challenge, scope))
        return f"Bearer {token}"

    async def _fetch_token(self, challenge: Challenge, scope: str) -> tuple[str, float | None]:
        realm = challenge.realm
        if not realm or urlsplit(realm).scheme not in ("http", "https"):
            raise UpstreamDenied(f"the upstream's token realm {realm!r} is not an http(s) URL")
        query = []
        if challenge.service:
            query.append(("service", challenge.service))
        query.append(("scope", scope))
        headers = {"User-Agent": [USER_AGENT], "Accept": ["application/json"]}
        credentials = self._credentials()
        if credentials and urlsplit(realm).scheme == "http" and urlsplit(self.url).scheme == "https":
            raise UpstreamDenied(
                f"{self.url} sends us to the plain-http token realm {realm}: the credentials are not sent there"
            )
        if credentials:
            query.append(("account", credentials[0]))
            headers["Authorization"] = [basic_authorization(*credentials)]
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        response = await self._send("GET", url, headers)
        if response.code in (401, 403):
            await self._discard(response)
            who = "the credentials" if credentials else "anonymous access"
            raise UpstreamDenied(f"the token server {realm} refused {who} ({response.code})")
        if response.code != 200:
            await self._discard(response)
            raise UpstreamUnavailable(f"the token server {realm} answered {response.code}")
        try:
            answer = json.loads(await self._read_body(response, TOKEN_BODY))
            token = answer.get("token") or answer.get("access_token")
            expires_in = answer.get("expires_in")
            expires_in = float(expires_in) if isinstance(expires_in, int | float) else None
            if expires_in is not None and not math.isfinite(expires_in):
                expires_in = None
        except (ValueError, AttributeError, TypeError, RecursionError):
            token = None
        if not isinstance(token, str) or not token:
            raise UpstreamUnavailable(f"the token server {realm} sent no token")
        log.debug(
            "token for {scope} from {realm}, valid {expires_in}s", scope=scope, realm=realm, expires_in=expires_in
        )
        return token, expires_in

    def _learn(self, response, sent: str | None, scope: str) -> bool:
        """Take a 401's challenge; True when a retry with new credentials may succeed."""
        challenges = parse_challenges(_headers(response, "WWW-Authenticate"))
        usable = [c for c in challenges if c.scheme == "bearer" and c.realm]
        usable += [c for c in challenges if c.scheme == "basic" and self._credentials()]
        if not usable:
            return False
        # The scope a challenge names is the one we ask for anyway (repository:NAME:pull);
        # keep the realm and service, which are the same for every repository.
        first = usable[0]
        challenge = Challenge(first.scheme, {k: v for k, v in first.params.items() if k != "scope"})
        if sent is not None:
            if challenge.scheme == "basic":
                return False  # the credentials themselves were refused
            self._tokens.forget((challenge.realm, challenge.service, scope))
        self._challenge = challenge
        return True

    async def _request(self, method: str, path: str, scope: str, headers: dict | None = None):
        """
        A request to the upstream with credentials as its last challenge asked,
        answering a new challenge once, following redirects and waiting out
        short rate limits.  Returns the final response whatever its status.
        """
        url = self.url + path
        base_headers = {"User-Agent": [USER_AGENT], **(headers or {})}
        retried_auth = False
        rate_limited = 0
        for _hop in range(MAX_REDIRECTS + 1):
            while True:
                request_headers = dict(base_headers)
                sent = None
                if _origin(url) == self._origin:
                    sent = await self._authorization(scope)
                    if sent:
                        request_headers["Authorization"] = [sent]
                response = await self._send(method, url, request_headers)
                if response.code == 401 and _origin(url) == self._origin and not retried_auth:
                    retried_auth = True
                    learnt = self._learn(response, sent, scope)
                    await self._discard(response)
                    if learnt:
                        continue
                    raise UpstreamDenied(f"{self.url} wants credentials it did not accept")
                if response.code == 429:
                    wait = _retry_after(_header(response, "Retry-After"), self._reactor.seconds())
                    await self._discard(response)
                    if wait is None:
                        wait = 1.0
                    if wait > self.config.max_retry_wait or rate_limited >= MAX_RATE_LIMIT_RETRIES:
                        raise UpstreamUnavailable(f"{self.url} is rate limiting us (Retry-After {wait:g}s)")
                    rate_limited += 1
                    log.info(
                        "upstream {url} rate limited {path}; retrying in {wait}s", url=self.url, path=path, wait=wait
                    )
                    await _sleep(self._reactor, wait)
                    continue
                break
            location = _header(response, "Location")
            if response.code in REDIRECTS and location:
                await self._discard(response)
                url = redirect_target(url, location)
                continue
            return response
        raise UpstreamUnavailable(f"{self.url}: more than {MAX_REDIRECTS} redirects for {path}")

    async def _checked(self, method: str, path: str, scope: str, headers: dict | None = None):
        """`_request`, with anything but 2xx turned into an `UpstreamError`."""
        response = await self._request(method, path, scope, headers)
        if 200 <= response.code < 300:
            return response
        if method != "HEAD":
            await self._discard(response)
        where = f"{self.url}{path}"
        if response.code == 404:
            raise UpstreamNotFound(f"{where}: 404")
        if response.code in (401, 403):
            raise UpstreamDenied(f"{where}: {response.code}")
        raise UpstreamUnavailable(f"{where}: {response.code}")

    # ------------------------------------------------------------- IUpstream

    async def _manifest(self, method: str, name, reference, accept) -> UpstreamManifest:
        headers = {"Accept": [", ".join(accept)]} if accept else {}
        path = f"/v2/{name}/manifests/{reference}"
        response = await self._checked(method, path, repository_scope(str(name)), headers)
        raw_digest = _header(response, "Docker-Content-Digest")
        try:
            digest = Digest.parse(raw_digest) if raw_digest else None
        except DigestInvalid:
            digest = None
        media_type = _header(response, "Content-Type")
        media_type = media_type.split(";", 1)[0].strip() if media_type else None
        if method == "HEAD":
            return UpstreamManifest(digest, media_type, _header_length(response) or 0, None)
        data = await self._read_body(response, self.max_manifest_size)
        return UpstreamManifest(digest, media_type, len(data), data)

    @_deferred
    async def get_manifest(self, name, reference, accept=()) -> UpstreamManifest:
        return await self._manifest("GET", name, reference, accept)

    @_deferred
    async def head_manifest(self, name, reference, accept=()) -> UpstreamManifest:
        return await self._manifest("HEAD", name, reference, accept)

    @_deferred
    async def head_blob(self, name, digest) -> int | None:
        response = await self._checked("HEAD", f"/v2/{name}/blobs/{digest}", repository_scope(str(name)))
        return _header_length(response)

    @_deferred
    async def get_blob(self, name, digest) -> _UpstreamBlob:
        response = await self._checked("GET", f"/v2/{name}/blobs/{digest}", repository_scope(str(name)))
        return _UpstreamBlob(response, self._reactor, self.config.timeout, self.config.min_body_rate)

    @_deferred
    async def list_tags(self, name) -> list[str]:
        tags: list[str] = []
        path = f"/v2/{name}/tags/list"
        budget = TAG_LIST_BYTES
        for _ in range(MAX_TAG_PAGES):
            response = await self._checked("GET", path, repository_scope(str(name)))
            link = _header(response, "Link")
            try:
                data = await self._read_body(response, budget)
            except BodyTooLong:
                raise UpstreamUnavailable(
                    f"{self.url}: the tag list of {name} is longer than {TAG_LIST_BYTES} bytes"
                ) from None
            budget -= len(data)
            try:
                page = json.loads(data)
                tags += [t for t in page.get("tags") or [] if isinstance(t, str)]
            except (ValueError, AttributeError, TypeError, RecursionError):
                raise UpstreamUnavailable(f"{self.url}{path}: not a tag list") from None
            following = re.match(r"\s*<([^>]+)>\s*;\s*rel=\"?next\"?", link or "")
            if not following:
                break
            parts = urlsplit(urljoin(self.url + path, following.group(1)))
            path = parts.path + (f"?{parts.query}" if parts.query else "")
        return sorted(set(tags))

    @_deferred
    async def referrers(self, name, digest) -> list[dict]:
        from ..manifest import OCI_INDEX

        path = f"/v2/{name}/referrers/{digest}"
        response = await self._checked("GET", path, repository_scope(str(name)), {"Accept": [OCI_INDEX]})
        try:
            index = json.loads(await self._read_body(response, self.max_manifest_size))
            return [m for m in index.get("manifests") or [] if isinstance(m, dict)]
        except (ValueError, AttributeError, TypeError, RecursionError):
            raise UpstreamUnavailable(f"{self.url}{path}: not an index") from None


def _sleep(reactor, seconds: float) -> Deferred:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)
