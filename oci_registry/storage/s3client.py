"""
A small S3 REST client on Twisted's HTTP client (the `Agent` under treq).

Only what the storage driver needs: objects (head, ranged streaming get,
put, copy, delete, batch delete), listings, and multipart uploads (create,
upload and copy parts, complete, abort, list).  Requests are signed with
SigV4 (`sigv4`), use path-style addressing (``endpoint/bucket/key``: what
SeaweedFS, MinIO, Ceph and AWS all accept), share a pool of persistent
connections, and are retried with backoff on connection errors and on the
5xx/``SlowDown`` answers S3 asks clients to retry; every request the driver
makes is safe to repeat.

A request S3 cannot serve (unreachable, timing out, failing after the
retries, refusing the credentials, or its bucket missing) raises
`StorageUnavailable`; `Availability` logs the outage once.  Retries stop
``RETRY_BUDGET`` seconds after the first attempt, and while an outage is
known each request makes one attempt: a request to an S3 that refuses
connections fails after about 2 s (4 attempts, 0.1, 0.4 and 1.6 s apart),
then in milliseconds until S3 answers again.

Nothing here blocks the reactor: payload hashes of large bodies are computed
by the caller in a thread pool and passed in as ``payload_hash``.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit
from xml.etree import ElementTree

import attr
from twisted.internet import error as net_error
from twisted.internet import tcp
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client as web_client
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from ..bulk import raise_limits, restore_limits
from ..twisted_compat import connection_pool
from . import priority, sigv4
from .availability import Availability
from .interfaces import StorageUnavailable

log = Logger()

MAX_DELETE_BATCH = 1000  # keys per DeleteObjects request
BODY_SLICE = 1 << 20  # bytes of a request body handed to the socket at a time
SLOW_TIMEOUT = 900.0  # copies and completions: S3 answers them only when done
CONNECT_TIMEOUT = 5.0  # seconds to open a connection
RETRY_BUDGET = 10.0  # no retry starts later than this after a request's first attempt
_RETRY_CODES = {
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "RequestTimeTooSkewed",
}
# Answers that mean the bucket cannot be used with this configuration: it
# will not pass by itself (with any 401/403, and redirects to another region).
_MISCONFIGURED_CODES = {
    "NoSuchBucket",
    "InvalidBucketName",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "PermanentRedirect",
}
_FULL_CODES = {"QuotaExceeded", "InsufficientStorage", "EntityTooLarge"}
_RETRY_EXCEPTIONS = (
    net_error.ConnectError,
    net_error.ConnectionLost,
    net_error.ConnectionDone,
    net_error.TimeoutError,
    web_client.ResponseFailed,
    web_client.ResponseNeverReceived,
    web_client.RequestTransmissionFailed,
    web_client.RequestNotSent,
)
CONNECTION_ERRORS = _RETRY_EXCEPTIONS  # the network failing between us and S3


def _cancelled(error: BaseException) -> bool:
    """The caller cancelled the request (a client went away): no failure of S3's."""
    cancels = (CancelledError, net_error.ConnectingCancelledError)
    if isinstance(error, cancels):
        return True
    return any(reason.check(*cancels) for reason in getattr(error, "reasons", None) or ())


class S3Error(Exception):
    """An error answer from the S3 server."""

    def __init__(self, status: int, code: str, message: str = "", resource: str = ""):
        super().__init__(f"S3 {status} {code}: {message} ({resource})")
        self.status = status
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        return (self.status >= 500 and self.status != 501) or self.code in _RETRY_CODES

    @property
    def not_found(self) -> bool:
        """Nothing at the key (a missing bucket is not that: see ``misconfigured``)."""
        return self.code in ("NoSuchKey", "NotFound") or (self.status == 404 and self.code != "NoSuchBucket")

    @property
    def full(self) -> bool:
        return self.status == 507 or self.code in _FULL_CODES

    @property
    def misconfigured(self) -> bool:
        """The bucket is missing or refuses this client: fix the configuration."""
        if self.full:
            return False
        return self.code in _MISCONFIGURED_CODES or self.status in (301, 307, 401, 403)

    @property
    def unavailable(self) -> bool:
        """S3 cannot serve the request (as opposed to refusing this one request, which is a bug)."""
        return self.misconfigured or (self.retryable and not self.full)


@attr.s(auto_attribs=True, frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float
    etag: str = ""
    metadata: dict = attr.ib(factory=dict)  # x-amz-meta-* headers, lower-case names without the prefix


@attr.s(auto_attribs=True, frozen=True, slots=True)
class ListedPage:
    """One ListObjectsV2 answer: keys and (with a delimiter) common prefixes, each in the server's order."""

    keys: list
    prefixes: list
    truncated: bool
    token: str | None  # to ask for what follows, when truncated


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A request body already in memory, written in slices as the socket takes
    them.  Written in one go, a part would sit in the transport's buffer
    beside the request headers, and the transport joins what it holds into
    one string before sending: a second copy of every part in flight.
    """

    def __init__(self, data: bytes):
        self._data = memoryview(data)
        self.length = len(data)
        self._offset = 0
        self._paused = False
        self._consumer = None
        self._done: Deferred | None = None

    def startProducing(self, consumer):
        self._consumer, self._done = consumer, Deferred()
        self._produce()
        return self._done

    def _produce(self):
        while not self._paused and self._done is not None and not self._done.called:
            if self._offset >= self.length:
                self._data = memoryview(b"")
                self._done.callback(None)
                return
            piece = self._data[self._offset : self._offset + BODY_SLICE]
            self._offset += len(piece)
            self._consumer.write(piece.tobytes())  # may pause us

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        if self._paused:
            self._paused = False
            self._produce()

    def stopProducing(self):
        self._done = None  # never fired now, as IBodyProducer asks
        self._data = memoryview(b"")


def _xml(body: bytes) -> ElementTree.Element:
    root = ElementTree.fromstring(body)
    for element in root.iter():
        if "}" in element.tag:
            element.tag = element.tag.split("}", 1)[1]
    return root


def _text(element, name: str, default: str = "") -> str:
    found = element.find(name)
    return (found.text or default) if found is not None else default


def _error_from(status: int, body: bytes, resource: str) -> S3Error:
    code, message = str(status), ""
    if body:
        try:
            root = _xml(body)
            code, message = _text(root, "Code", code), _text(root, "Message")
        except ElementTree.ParseError:
            message = body[:200].decode("utf-8", "replace")
    elif status == 404:
        code = "NoSuchKey"
    return S3Error(status, code, message, resource)


def _header(headers: Headers, name: str) -> str | None:
    values = headers.getRawHeaders(name.encode())
    return values[0].decode("latin-1") if values else None


def _info_from_headers(key: str, headers: Headers) -> ObjectInfo:
    metadata = {}
    for name, values in headers.getAllRawHeaders():
        lowered = name.decode("latin-1").lower()
        if lowered.startswith("x-amz-meta-"):
            metadata[lowered[len("x-amz-meta-") :]] = values[0].decode("latin-1")
    size = _header(headers, "content-range")
    if size and "/" in size:  # a ranged GET: bytes a-b/total
        total = int(size.rsplit("/", 1)[1])
    else:
        total = int(_header(headers, "content-length") or 0)
    modified = _header(headers, "last-modified")
    mtime = parsedate_to_datetime(modified).timestamp() if modified else 0.0
    return ObjectInfo(key, total, mtime, (_header(headers, "etag") or "").strip('"'), metadata)


class BodyStream(Protocol):
    """
    A response body read on demand, with back-pressure: the connection is
    paused while more than ``high_water`` bytes wait to be read.  A read
    that waits ``idle_timeout`` seconds for data fails (and drops the
    connection) rather than hang on a stalled server.
    """

    transport: IPushProducer  # type: ignore[assignment]  # deliverBody gives a producer, not an ITransport

    def __init__(self, high_water: int = 4 << 20, reactor=None, idle_timeout: float | None = None):
        self._reactor = reactor
        self._idle_timeout = idle_timeout
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._high_water = high_water
        self._paused = False
        self._done = False
        self._failure: Failure | None = None
        self._waiter: Deferred | None = None
        self._bulk: tcp.Connection | None = None

    def connectionMade(self) -> None:
        self._bulk = raise_limits(self.transport, read=True)

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > self._high_water and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        self._wake()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        restore_limits(self._bulk)  # the connection goes back to the pool
        self._bulk = None
        self._done = True
        if self._failure is None and not reason.check(web_client.ResponseDone, web_client.PotentialDataLoss):
            self._failure = reason
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    async def read(self, amount: int) -> bytes:
        """Up to ``amount`` bytes; ``b""`` at the end of the body."""
        while not self._chunks:
            if self._done:
                if self._failure is not None:
                    self._failure.raiseException()
                return b""
            self._waiter = Deferred()
            timer = None
            if self._reactor is not None and self._idle_timeout:
                timer = self._reactor.callLater(self._idle_timeout, self._stalled)
            try:
                await self._waiter
            finally:
                if timer is not None and timer.active():
                    timer.cancel()
        pieces, size = [], 0
        while self._chunks and size < amount:
            chunk = self._chunks.popleft()
            if size + len(chunk) > amount:
                cut = amount - size
                self._chunks.appendleft(chunk[cut:])
                chunk = chunk[:cut]
            pieces.append(chunk)
            size += len(chunk)
        self._buffered -= size
        if self._paused and self._buffered < self._high_water // 2:
            self._paused = False
            self.transport.resumeProducing()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _stalled(self) -> None:
        self._failure = Failure(net_error.TimeoutError(f"no data from S3 for {self._idle_timeout}s"))
        self.close()
        self._wake()

    def close(self) -> None:
        """Stop reading: the rest of the body is dropped with its connection."""
        self._chunks.clear()
        if not self._done and self.transport is not None:
            self._done = True
            self.transport.stopProducing()


def _split_endpoint(endpoint: str) -> tuple[str, str, str]:
    """``(scheme, Host header value, path prefix)`` of an endpoint URL."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"S3 endpoint must be an http(s) URL, not {endpoint!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # IPv6 literal
    if parts.port not in (None, 443 if parts.scheme == "https" else 80):
        host = f"{host}:{parts.port}"
    return parts.scheme, host, parts.path.rstrip("/")


class _Collect(Protocol):
    """A whole (small) response body, into ``done``."""

    def __init__(self, done: Deferred):
        self._done = done
        self._chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(web_client.ResponseDone, web_client.PotentialDataLoss):
            self._done.callback(b"".join(self._chunks))
        else:
            self._done.errback(reason)


# No "Starting factory" line per connection: one per request while S3 is down.
_Pool = connection_pool(noisy=False)


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """
    The endpoint to connect to S3 with, made once per scheme, host and port:
    an `Agent` makes a `HostnameEndpoint` (and IDNA-encodes the host) for
    every request otherwise, also for the requests a pooled connection
    carries, about a tenth of a request's CPU time on the reactor.
    """

    def __init__(self, reactor, connect_timeout: float):
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._https = web_client.BrowserLikePolicyForHTTPS()
        self._made: dict = {}

    def endpointForURI(self, uri):
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._made.get(key)
        if endpoint is None:
            endpoint = HostnameEndpoint(
                self._reactor, uri.host.decode("ascii"), uri.port, timeout=self._connect_timeout
            )
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(self._https.creatorForNetloc(uri.host, uri.port), endpoint)
            self._made[key] = endpoint
        return endpoint


class S3Client:
    """Requests to one bucket of one S3 endpoint."""

    def __init__(
        self,
        reactor,
        endpoint: str,
        bucket: str,
        credentials: sigv4.Credentials,
        region: str = "us-east-1",
        connections: int = 32,
        timeout: float = 60.0,
        attempts: int = 4,
        availability: Availability | None = None,
    ):
        self._reactor = reactor
        self._scheme, self._host, self._base_path = _split_endpoint(endpoint)
        self.bucket = bucket
        self.region = region
        self.credentials = credentials
        self.timeout = timeout
        self.attempts = attempts
        self.availability = availability or Availability(f"s3://{bucket} at {self.endpoint}")
        self._pool = _Pool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = connections
        self._endpoints = _Endpoints(reactor, min(timeout, CONNECT_TIMEOUT))
        self._agent = web_client.Agent.usingEndpointFactory(reactor, self._endpoints, pool=self._pool)

    def __repr__(self) -> str:
        return f"<S3Client {self.endpoint}/{self.bucket}>"

    @property
    def endpoint(self) -> str:
        return f"{self._scheme}://{self._host}{self._base_path}"

    def close(self) -> Deferred:
        return self._pool.closeCachedConnections()

    # ---------------------------------------------------------------- requests

    def _path(self, key: str | None) -> str:
        path = f"{self._base_path}/{self.bucket}"
        return path if key is None else f"{path}/{key}"

    def url(self, key: str | None, query_string: str = "") -> str:
        url = f"{self._scheme}://{self._host}{sigv4.uri_encode(self._path(key))}"
        return f"{url}?{query_string}" if query_string else url

    async def _send(self, method, key, query, headers, body, payload_hash, stream, timeout):
        signed = sigv4.sign_headers(
            self.credentials, self.region, method, self._host, self._path(key), list(query), headers, payload_hash
        )
        url = self.url(key, sigv4.canonical_query(list(query)) if query else "")
        request = self._agent.request(
            method.encode(),
            url.encode("ascii"),
            Headers({k.encode(): [str(v).encode("latin-1")] for k, v in signed.items()}),
            _BytesProducer(body) if body or method in ("PUT", "POST") else None,
        )
        reading: list[_Collect] = []
        expired = []

        def expire():
            expired.append(True)
            if reading:  # the answer came, its body is late: drop the connection
                reading[0].transport.stopProducing()
            else:
                request.cancel()

        timer = self._reactor.callLater(timeout, expire)
        try:
            response = await request
            if stream and response.code in (200, 206):
                return response, None
            if method == "HEAD":
                return response, b""
            done = Deferred()
            reading.append(_Collect(done))
            response.deliverBody(reading[0])
            return response, await done
        except Exception as e:
            if expired:
                raise net_error.TimeoutError(f"no complete answer within {timeout}s") from None
            if _cancelled(e):
                raise CancelledError() from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def request(
        self,
        method: str,
        key: str | None = None,
        query: tuple = (),
        headers: dict | None = None,
        body: bytes = b"",
        payload_hash: str | None = None,
        ok: tuple = (200,),
        stream: bool = False,
        error_in_body: bool = False,
        timeout: float | None = None,
    ):
        """
        Send a signed request; fire with ``(response, body)`` (``body`` is
        None when ``stream`` is true: read it with `BodyStream`).  Any status
        not in ``ok`` raises `S3Error`, and S3 failing `StorageUnavailable`.
        ``error_in_body``: a 200 answer may still carry an ``<Error>``
        (CopyObject, UploadPartCopy and CompleteMultipartUpload do that).
        ``timeout`` (default: the client's) bounds the whole exchange except
        a streamed body.  Made for background work (`priority.background`),
        it waits for the work's gate first.
        """
        gate = priority.gate()
        if gate is not None:  # made for background work: after the requests served (see `priority`)
            await gate()
        if payload_hash is None:
            payload_hash = hashlib.sha256(body).hexdigest() if body else sigv4.EMPTY_SHA256
        headers = dict(headers or {})
        resource = f"{method} {self._path(key)}"
        attempts = 1 if self.availability.down else self.attempts  # an outage known: fail fast
        started = self._reactor.seconds()
        error: Exception
        for attempt in range(1, attempts + 1):
            try:
                response, content = await self._send(
                    method, key, query, headers, body, payload_hash, stream, timeout or self.timeout
                )
            except _RETRY_EXCEPTIONS as e:
                error, reason, retry = e, type(e).__name__, True
            else:
                failure = None
                if response.code not in ok or (response.code == 404 and b"NoSuchBucket" in (content or b"")):
                    failure = _error_from(response.code, content or b"", resource)
                elif error_in_body and content and _xml(content).tag == "Error":
                    failure = _error_from(500, content, resource)
                if failure is None:
                    self.availability.answered()
                    return response, content
                if not failure.unavailable:
                    if content:  # S3 said what it did not like: it works (a HEAD's bare 404 tells nothing)
                        self.availability.answered()
                    raise failure
                error, reason, retry = failure, failure.code, failure.retryable
            delay = 0.1 * 4 ** (attempt - 1)
            if not retry or attempt == attempts or self._reactor.seconds() - started + delay > RETRY_BUDGET:
                raise self.unavailable(error) from error
            self.availability.retrying(resource, delay, reason)
            await deferLater(self._reactor, delay, lambda: None)
        raise AssertionError("unreachable")

    def unavailable(self, error: BaseException) -> StorageUnavailable:
        """The `StorageUnavailable` for an S3 answer or a network failure, noted in ``availability``."""
        where = f"S3 at {self.endpoint}"
        if isinstance(error, S3Error):
            detail = error.code if error.code != str(error.status) else f"HTTP {error.status}"  # a HEAD says no more
            detail += f" ({error.message})" if error.message else ""
            if error.code == "NoSuchBucket" or (error.status == 404 and not error.not_found):
                cause = f"bucket {self.bucket!r} does not exist at {where}"
            elif error.status in (401, 403) or error.code in _MISCONFIGURED_CODES:
                cause = f"{where} refuses access to bucket {self.bucket!r}: {detail}"
            else:
                cause = (
                    f"{where} answered {detail}"
                    if detail.startswith("HTTP")
                    else f"{where} answered {error.status} {detail}"
                )
            result = StorageUnavailable(cause, misconfigured=error.misconfigured)
        elif isinstance(error, net_error.TimeoutError):
            result = StorageUnavailable(f"{where} did not answer: {error}")
        else:
            reasons = getattr(error, "reasons", None)  # ResponseFailed and the like wrap the real one
            reason = reasons[0].value if reasons else error
            result = StorageUnavailable(f"cannot reach {where}: {type(reason).__name__}: {reason}")
        return self.availability.failed(result)

    # ----------------------------------------------------------------- objects

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            response, _ = await self.request("HEAD", key)
        except S3Error as e:
            if e.not_found:
                return None
            raise
        return _info_from_headers(key, response.headers)

    async def get(self, key: str, start: int = 0, end: int | None = None, high_water: int = 4 << 20):
        """
        Fire with ``(info, stream)`` for the bytes from ``start`` to ``end``
        (inclusive; None: the end).  ``info.size`` is the whole object's
        size.  Raises `S3Error` (``not_found``; ``InvalidRange`` when
        ``start`` is at or past the end).
        """
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        response, _ = await self.request("GET", key, headers=headers, ok=(200, 206), stream=True)
        stream = BodyStream(high_water, self._reactor, self.timeout)
        response.deliverBody(stream)
        return _info_from_headers(key, response.headers), stream

    async def get_bytes(self, key: str) -> tuple[ObjectInfo, bytes]:
        response, content = await self.request("GET", key)
        return _info_from_headers(key, response.headers), content

    async def put(
        self,
        key: str,
        data: bytes,
        payload_hash: str | None = None,
        metadata: dict | None = None,
        if_absent: bool = False,
    ) -> str:
        """
        Store an object; with ``if_absent``, only while nothing is at ``key``
        (``If-None-Match: *``: AWS S3, MinIO and SeaweedFS check it; a server
        that does not replaces the object).  A condition that fails is an
        `S3Error` ``PreconditionFailed``.
        """
        headers = {f"x-amz-meta-{k}": v for k, v in (metadata or {}).items()}
        if if_absent:
            headers["If-None-Match"] = "*"
        response, _ = await self.request("PUT", key, headers=headers, body=data, payload_hash=payload_hash)
        return (_header(response.headers, "etag") or "").strip('"')

    async def copy(self, source: str, key: str, if_match: str | None = None, if_absent: bool = False) -> str:
        """
        Server-side copy of an object of at most 5 GiB (metadata is not
        copied); with ``if_match``, only of the source version with that ETag;
        with ``if_absent``, only while nothing is at ``key`` (``If-None-Match:
        *``; servers without conditional writes ignore it).  A condition that
        fails is an `S3Error` ``PreconditionFailed``.  Fires with the copy's
        ETag ("" when the answer has none).
        """
        headers = {
            "x-amz-copy-source": sigv4.uri_encode(self._path(source)),
            "x-amz-metadata-directive": "REPLACE",
        }
        if if_match:
            headers["x-amz-copy-source-if-match"] = f'"{if_match}"'
        if if_absent:
            headers["If-None-Match"] = "*"
        _, content = await self.request("PUT", key, headers=headers, error_in_body=True, timeout=SLOW_TIMEOUT)
        return _text(_xml(content), "ETag").strip('"') if content else ""

    async def delete(self, key: str) -> None:
        await self.request("DELETE", key, ok=(200, 204, 404))

    async def delete_many(self, keys: list[str]) -> None:
        for i in range(0, len(keys), MAX_DELETE_BATCH):
            batch = keys[i : i + MAX_DELETE_BATCH]
            root = ElementTree.Element("Delete")
            ElementTree.SubElement(root, "Quiet").text = "true"
            for key in batch:
                ElementTree.SubElement(ElementTree.SubElement(root, "Object"), "Key").text = key
            body = ElementTree.tostring(root, encoding="utf-8")
            # S3 requires a body checksum on DeleteObjects.
            headers = {"Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode()}
            _, content = await self.request("POST", None, query=(("delete", ""),), headers=headers, body=body)
            answer = _xml(content) if content else None
            errors = answer.findall("Error") if answer is not None else []
            if errors:
                first = errors[0]
                error = S3Error(500, _text(first, "Code"), _text(first, "Message"), _text(first, "Key"))
                if error.misconfigured:
                    raise self.unavailable(error) from error
                raise error

    async def list(self, prefix: str, limit: int | None = None) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (at most ``limit``), in key order."""
        found: list[ObjectInfo] = []
        token = None
        while True:
            query = [("list-type", "2"), ("prefix", prefix)]
            if limit is not None:
                query.append(("max-keys", str(min(1000, limit - len(found)))))
            if token:
                query.append(("continuation-token", token))
            _, content = await self.request("GET", None, query=tuple(query))
            root = _xml(content)
            for item in root.findall("Contents"):
                modified = _text(item, "LastModified")
                found.append(
                    ObjectInfo(
                        _text(item, "Key"),
                        int(_text(item, "Size", "0")),
                        datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp() if modified else 0.0,
                        _text(item, "ETag").strip('"'),
                    )
                )
            token = _text(root, "NextContinuationToken")
            if _text(root, "IsTruncated") != "true" or not token or (limit is not None and len(found) >= limit):
                return found

    async def list_once(
        self,
        prefix: str,
        delimiter: str | None = None,
        start_after: str | None = None,
        max_keys: int = 1000,
        token: str | None = None,
    ) -> ListedPage:
        """One ListObjectsV2 request: at most ``max_keys`` keys and common prefixes after ``start_after``."""
        query = [("list-type", "2"), ("prefix", prefix), ("max-keys", str(max(1, min(1000, max_keys))))]
        if delimiter:
            query.append(("delimiter", delimiter))
        if token:
            query.append(("continuation-token", token))
        elif start_after:
            query.append(("start-after", start_after))
        _, content = await self.request("GET", None, query=tuple(query))
        root = _xml(content)
        keys = [_text(item, "Key") for item in root.findall("Contents")]
        prefixes = [_text(item, "Prefix") for item in root.findall("CommonPrefixes")]
        truncated = _text(root, "IsTruncated") == "true"
        return ListedPage(keys, prefixes, truncated, _text(root, "NextContinuationToken") or None)

    # --------------------------------------------------------------- multipart

    async def create_multipart(self, key: str) -> str:
        _, content = await self.request("POST", key, query=(("uploads", ""),))
        return _text(_xml(content), "UploadId")

    async def upload_part(
        self, key: str, upload_id: str, number: int, data: bytes, payload_hash: str | None = None
    ) -> str:
        response, _ = await self.request(
            "PUT",
            key,
            query=(("partNumber", str(number)), ("uploadId", upload_id)),
            body=data,
            payload_hash=payload_hash,
        )
        return (_header(response.headers, "etag") or "").strip('"')

    async def upload_part_copy(self, key: str, upload_id: str, number: int, source: str, start: int, end: int) -> str:
        headers = {
            "x-amz-copy-source": sigv4.uri_encode(self._path(source)),
            "x-amz-copy-source-range": f"bytes={start}-{end}",
        }
        _, content = await self.request(
            "PUT",
            key,
            query=(("partNumber", str(number)), ("uploadId", upload_id)),
            headers=headers,
            error_in_body=True,
            timeout=SLOW_TIMEOUT,
        )
        return _text(_xml(content), "ETag").strip('"')

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]], if_absent: bool = False
    ) -> None:
        """Complete the upload; with ``if_absent``, only while nothing is at ``key`` (as for `copy`)."""
        root = ElementTree.Element("CompleteMultipartUpload")
        for number, etag in parts:
            part = ElementTree.SubElement(root, "Part")
            ElementTree.SubElement(part, "PartNumber").text = str(number)
            ElementTree.SubElement(part, "ETag").text = f'"{etag}"'
        body = ElementTree.tostring(root, encoding="utf-8")
        await self.request(
            "POST",
            key,
            query=(("uploadId", upload_id),),
            headers={"If-None-Match": "*"} if if_absent else {},
            body=body,
            error_in_body=True,
            timeout=SLOW_TIMEOUT,
        )

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self.request("DELETE", key, query=(("uploadId", upload_id),), ok=(200, 204, 404))

    async def list_multipart(self, prefix: str) -> builtins.list[tuple[str, str]]:  # list: a method here
        """``(key, upload id)`` of every multipart upload in progress under ``prefix``."""
        found = []
        key_marker = upload_marker = ""
        while True:
            query = [("uploads", ""), ("prefix", prefix)]
            if key_marker:
                query += [("key-marker", key_marker), ("upload-id-marker", upload_marker)]
            _, content = await self.request("GET", None, query=tuple(query))
            root = _xml(content)
            for upload in root.findall("Upload"):
                found.append((_text(upload, "Key"), _text(upload, "UploadId")))
            key_marker, upload_marker = _text(root, "NextKeyMarker"), _text(root, "NextUploadIdMarker")
            if _text(root, "IsTruncated") != "true" or not key_marker:
                return found

    # ------------------------------------------------------------------ others

    async def create_bucket(self) -> None:
        """Create the bucket; fine if this account already owns it."""
        body = b""
        if self.region != "us-east-1":
            body = (
                b'<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                b"<LocationConstraint>" + self.region.encode() + b"</LocationConstraint></CreateBucketConfiguration>"
            )
        try:
            await self.request("PUT", None, body=body)
        except S3Error as e:
            if e.code != "BucketAlreadyOwnedByYou":
                raise

    def presigned_url(self, key: str, expires: int, method: str = "GET", endpoint: str | None = None) -> str:
        """A URL anyone may fetch for ``expires`` seconds; ``endpoint``: the one clients reach S3 at."""
        if endpoint:
            scheme, host, base = _split_endpoint(endpoint)
        else:
            scheme, host, base = self._scheme, self._host, self._base_path
        path = f"{base}/{self.bucket}/{key}"
        query = sigv4.presign(self.credentials, self.region, method, host, path, expires)
        return f"{scheme}://{host}{sigv4.uri_encode(path)}?{query}"
