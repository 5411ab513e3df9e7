"""
The upstream client: the Distribution API of another registry, spoken with
treq on the registry's own reactor.

It answers the upstream's auth challenges (see `oci_registry.proxy.auth`),
follows redirects (Docker Hub and GHCR send blob GETs to presigned object
store URLs; credentials are never sent to another origin), waits out a 429's
``Retry-After`` when it is short, and streams blob bodies with back-pressure.
Failures are reported as `UpstreamNotFound` (404), `UpstreamDenied` (the
upstream refused our credentials) and `UpstreamUnavailable` (unreachable,
timed out, 5xx, rate limited): the cache policy decides what each means for
a client.
"""

from __future__ import annotations

import json
import re
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode, urljoin, urlsplit

import attr
import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import Attribute, Interface, implementer

from ..manifest import MAX_MANIFEST_SIZE
from ..reference import Digest
from .auth import Challenge, TokenCache, basic_authorization, parse_challenges, repository_scope
from .config import UpstreamConfig

log = Logger()

USER_AGENT = "ociregistry-proxy/0.1"
MAX_REDIRECTS = 10
MAX_RATE_LIMIT_RETRIES = 3
MAX_TAG_PAGES = 100
SMALL_BODY = 1 << 20  # token responses, tag lists, error bodies


class UpstreamError(Exception):
    """The upstream did not give what was asked; ``str()`` says why (never with credentials)."""


class UpstreamNotFound(UpstreamError):
    """The upstream answered 404."""


class UpstreamDenied(UpstreamError):
    """The upstream (or its token server) refused the configured credentials."""


class UpstreamUnavailable(UpstreamError):
    """Unreachable, timed out, 5xx, rate limited, or an answer that makes no sense."""


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


def _origin(url: str) -> tuple:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _header(response, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    if not values:
        return None
    value = values[0]
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` (delta seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(parsedate_to_datetime(value).timestamp() - now, 0.0)
    except (TypeError, ValueError, OverflowError):
        return None


def _declared_length(response) -> int | None:
    """Content-Length as sent (for a HEAD, Twisted's ``response.length`` is 0: there is no body)."""
    value = _header(response, "Content-Length")
    return int(value) if value and value.strip().isdigit() else None


class _TooLarge(Exception):
    pass


async def _read_body(response, limit: int) -> bytes:
    """The whole (small) body; `UpstreamUnavailable` past ``limit`` bytes."""
    chunks: list[bytes] = []
    received = 0

    def collect(data: bytes) -> None:
        nonlocal received
        received += len(data)
        if received > limit:
            raise _TooLarge()
        chunks.append(data)

    try:
        await treq.collect(response, collect)
    except _TooLarge:
        raise UpstreamUnavailable(f"the upstream sent more than {limit} bytes") from None
    except PotentialDataLoss:
        pass  # no Content-Length: the body ended with the connection
    except Exception as e:
        raise UpstreamUnavailable(f"reading the upstream's answer failed: {e}") from None
    return b"".join(chunks)


async def _discard(response) -> None:
    try:
        await _read_body(response, SMALL_BODY)
    except UpstreamError:
        pass


@implementer(IUpstreamBlob)
class _UpstreamBlob:
    def __init__(self, response, reactor, idle_timeout: float):
        self._response = response
        self._reactor = reactor
        self._idle_timeout = idle_timeout
        self._pump: _BodyPump | None = None
        self.length = None if response.length is UNKNOWN_LENGTH else response.length

    def deliver(self, sink) -> Deferred:
        done: Deferred = Deferred()
        self._pump = _BodyPump(sink, done, self._reactor, self._idle_timeout)
        self._response.deliverBody(self._pump)
        return done

    def cancel(self) -> None:
        if self._pump is None:
            self.deliver(lambda data: None)
        self._pump.abort()


class _BodyPump(Protocol):
    """
    Hands body chunks to a sink and pauses the upstream connection while the
    sink pushes back (``treq.collect`` has no back-pressure).  The connection
    is dropped when no byte arrives for ``idle_timeout`` seconds while we wait
    for one.
    """

    def __init__(self, sink, done: Deferred, reactor, idle_timeout: float):
        self._sink = sink
        self._done = done
        self._reactor = reactor
        self._idle_timeout = idle_timeout
        self._blocked = 0
        self._timer = None
        self._error: BaseException | None = None

    def connectionMade(self):
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        if self._idle_timeout and not self._blocked:
            self._timer = self._reactor.callLater(self._idle_timeout, self._stalled)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _stalled(self) -> None:
        self._timer = None
        self._fail(UpstreamUnavailable(f"the upstream sent nothing for {self._idle_timeout:g}s"))

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        if self.transport is not None:
            self.transport.stopProducing()

    def abort(self) -> None:
        self._fail(UpstreamUnavailable("cancelled"))

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return
        try:
            pending = self._sink(data)
        except Exception as e:
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
            self._arm()
            self.transport.resumeProducing()

    def _sink_failed(self, failure) -> None:
        self._blocked -= 1
        self._fail(failure.value)

    def connectionLost(self, reason):
        self._disarm()
        if self._error is not None:
            self._done.errback(self._error)
        elif reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(None)
        else:
            self._done.errback(UpstreamUnavailable(f"the upstream connection broke: {reason.getErrorMessage()}"))


class _QuietPool(HTTPConnectionPool):
    """A connection pool whose connections do not log "Starting factory" lines."""

    class _factory(HTTPConnectionPool._factory):
        noisy = False


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
        if http is None:
            self._pool = _QuietPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = 8
            http = HTTPClient(Agent(reactor, pool=self._pool, connectTimeout=config.timeout or None))
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
        except Exception as e:
            where = url.split("?", 1)[0]
            raise UpstreamUnavailable(f"{method} {where}: {e.__class__.__name__}: {e}") from None

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
            await _discard(response)
            who = "the credentials" if credentials else "anonymous access"
            raise UpstreamDenied(f"the token server {realm} refused {who} ({response.code})")
        if response.code != 200:
            await _discard(response)
            raise UpstreamUnavailable(f"the token server {realm} answered {response.code}")
        try:
            answer = json.loads(await _read_body(response, SMALL_BODY))
            token = answer.get("token") or answer.get("access_token")
            expires_in = answer.get("expires_in")
            expires_in = float(expires_in) if isinstance(expires_in, int | float) else None
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise UpstreamUnavailable(f"the token server {realm} sent no token")
        log.debug(
            "token for {scope} from {realm}, valid {expires_in}s", scope=scope, realm=realm, expires_in=expires_in
        )
        return token, expires_in

    def _learn(self, response, sent: str | None, scope: str) -> bool:
        """Take a 401's challenge; True when a retry with new credentials may succeed."""
        challenges = parse_challenges(
            [
                v.decode("latin-1") if isinstance(v, bytes) else v
                for v in response.headers.getRawHeaders("WWW-Authenticate", [])
            ]
        )
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
                    await _discard(response)
                    if learnt:
                        continue
                    raise UpstreamDenied(f"{self.url} wants credentials it did not accept")
                if response.code == 429:
                    wait = _retry_after(_header(response, "Retry-After"), self._reactor.seconds())
                    await _discard(response)
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
            if response.code in (301, 302, 303, 307, 308) and location:
                await _discard(response)
                url = urljoin(url, location)
                continue
            return response
        raise UpstreamUnavailable(f"{self.url}: more than {MAX_REDIRECTS} redirects for {path}")

    async def _checked(self, method: str, path: str, scope: str, headers: dict | None = None):
        """`_request`, with anything but 2xx turned into an `UpstreamError`."""
        response = await self._request(method, path, scope, headers)
        if 200 <= response.code < 300:
            return response
        if method != "HEAD":
            await _discard(response)
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
        except Exception:
            digest = None
        media_type = _header(response, "Content-Type")
        media_type = media_type.split(";", 1)[0].strip() if media_type else None
        if method == "HEAD":
            return UpstreamManifest(digest, media_type, _declared_length(response) or 0, None)
        data = await _read_body(response, self.max_manifest_size)
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
        return _declared_length(response)

    @_deferred
    async def get_blob(self, name, digest) -> _UpstreamBlob:
        response = await self._checked("GET", f"/v2/{name}/blobs/{digest}", repository_scope(str(name)))
        return _UpstreamBlob(response, self._reactor, self.config.timeout)

    @_deferred
    async def list_tags(self, name) -> list[str]:
        tags: list[str] = []
        path = f"/v2/{name}/tags/list"
        for _ in range(MAX_TAG_PAGES):
            response = await self._checked("GET", path, repository_scope(str(name)))
            link = _header(response, "Link")
            try:
                page = json.loads(await _read_body(response, 16 * SMALL_BODY))
                tags += [t for t in page.get("tags") or [] if isinstance(t, str)]
            except (ValueError, AttributeError):
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
            index = json.loads(await _read_body(response, self.max_manifest_size))
            return [m for m in index.get("manifests") or [] if isinstance(m, dict)]
        except (ValueError, AttributeError):
            raise UpstreamUnavailable(f"{self.url}{path}: not an index") from None


def _sleep(reactor, seconds: float) -> Deferred:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)
