"""
`Sender`: one endpoint's HTTP client.  A delivery is one POST, answered 2xx
within the endpoint's ``timeout`` (connecting, sending, the status and the
whole answer, which is read, up to 64 KiB, and dropped); anything else is a
`DeliveryFailed` that says why in one line.  Connections are kept alive
between deliveries, up to the endpoint's concurrency.  Redirects are not
followed: an endpoint's URL is configured, and a redirect is a failure to
fix there.
"""

from __future__ import annotations

import time

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.web.client import Agent, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from ..proxy.transport import BoundedPool, discard_body
from .config import EndpointConfig
from .formats import SIGNATURE_HEADER, encode, signature
from .notice import Notice

USER_AGENT = "ociregistry-notifications"


class DeliveryFailed(Exception):
    """The endpoint did not take the events; ``str()`` says why (never with the secret or headers)."""


@implementer(IBodyProducer)
class _Body:
    """A body already in memory, written at once."""

    def __init__(self, data: bytes):
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self):
        pass  # written whole already: nothing left to pause

    def resumeProducing(self):
        pass  # written whole already

    def stopProducing(self):
        pass  # written whole already


class Sender:
    """POSTs notices to one endpoint, in its format, signed when it has a secret."""

    def __init__(self, endpoint: EndpointConfig, reactor, source: str | None = None, clock=time.time):
        self.endpoint = endpoint
        self._reactor = reactor
        self._source = source
        self._clock = clock
        self._pool = BoundedPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = endpoint.concurrency
        self._pool.cachedConnectionTimeout = 60
        self._agent = Agent(reactor, connectTimeout=endpoint.timeout, pool=self._pool)
        self._url = endpoint.url.encode("ascii")
        self._fixed = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in endpoint.headers]
        self._content_type_set = any(name.lower() == "content-type" for name, _ in endpoint.headers)

    def body(self, notices: list[Notice]) -> tuple[str, bytes]:
        return encode(self.endpoint.format, notices, self._source, self.endpoint.include_references)

    async def send(self, notices: list[Notice]) -> None:
        """Deliver ``notices`` in one request; `DeliveryFailed` unless the endpoint answered 2xx in time."""
        content_type, body = self.body(notices)
        headers = Headers({b"User-Agent": [USER_AGENT.encode()]})
        if not self._content_type_set:
            headers.addRawHeader(b"Content-Type", content_type.encode())
        for name, value in self._fixed:
            headers.addRawHeader(name, value)
        if self.endpoint.secret is not None:
            headers.addRawHeader(SIGNATURE_HEADER.encode(), signature(self.endpoint.secret, body, int(self._clock())))
        exchange = Deferred.fromCoroutine(self._exchange(headers, body))

        def timed_out(result, timeout):
            raise DeliveryFailed(f"no answer within {timeout:g}s")

        exchange.addTimeout(self.endpoint.timeout, self._reactor, onTimeoutCancel=timed_out)
        await exchange

    async def _exchange(self, headers: Headers, body: bytes) -> None:
        try:
            response = await self._agent.request(b"POST", self._url, headers, _Body(body))
        except ResponseFailed as e:
            reasons = "; ".join(r.getErrorMessage() for r in e.reasons) or "the connection broke"
            raise DeliveryFailed(reasons) from None
        except CancelledError:
            raise  # the timeout: see send
        except Exception as e:  # noqa: BLE001 whatever connecting failed with (refused, DNS, TLS) is one line
            raise DeliveryFailed(str(e) or type(e).__name__) from None
        await discard_body(response, self._reactor, self.endpoint.timeout)  # bounded; a bad one is dropped
        if not 200 <= response.code < 300:
            raise DeliveryFailed(f"answered {response.code} {response.phrase.decode('latin-1', 'replace')}")

    def close(self) -> Deferred:
        return self._pool.closeCachedConnections()
