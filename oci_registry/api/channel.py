"""
Connections: what the registry accepts before any request is routed.

`RegistryChannel` reads requests off one connection.  Requests it cannot
read (headers too large, a malformed line or length) get a 400 with the
spec's JSON body.  A response sent before its request's body was read (an
error found from the headers) closes the connection: the rest of the body is
never read, only drained for a moment so that the client sees the answer
rather than a reset.
"""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http

from ..errors import RegistryError

log = Logger()

#: How long a connection closed with part of a request unread keeps draining it.
LINGER = 2.0
#: Digits a Content-Length may have: 10**18 bytes is an exabyte.
MAX_LENGTH_DIGITS = 18


class BodyRefused(RegistryError):
    """A request body the channel will not read on (framed to cost far more than it carries, malformed...)."""

    code = "UNSUPPORTED"
    status = 400
    message = "malformed request body"


def error_response(status: int, reason: str, code: str, message: str, headers: dict | None = None) -> bytes:
    """A whole HTTP/1.1 response carrying the spec's JSON error body, closing the connection."""
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Docker-Distribution-Api-Version: registry/2.0",
    ] + [f"{key}: {value}" for key, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RegistryChannel(http.HTTPChannel):
    """
    An `HTTPChannel` with JSON errors for requests it cannot read, a lingering close after answering a request
    whose body was not read, and a quick refusal of a TLS handshake: clients
    such as skopeo and docker try HTTPS first against an insecure registry and
    fall back to plain HTTP only when the handshake fails; without an answer
    they wait for their handshake timeout (10 s) on every connection.
    """

    _first = True
    _content_length = None
    _linger_call = None
    lingering = False
    silenced = False
    drain_on_close = False

    def allHeadersReceived(self):
        request = self.requests[-1]
        request.parseCookies()
        self.persistent = self.checkPersistence(request, self._version)
        request.gotLength(self.length)
        # A request routed from its headers sends "100 Continue" when its
        # handler reads the body, and never if it answers without it.
        if getattr(request, "body_stream", None) is not None:
            return
        expect = request.requestHeaders.getRawHeaders(b"Expect")
        if expect and expect[0].lower() == b"100-continue" and self._version == b"HTTP/1.1":
            self._send100Continue()

    def allContentReceived(self):
        if self.lingering or not self.requests:
            return
        super().allContentReceived()

    def resumeProducing(self):
        # The transport drained its write buffer; keep the socket paused if a
        # request body is held (not asked for yet, or storage is behind).
        stream = getattr(self.requests[-1], "body_stream", None) if self.requests else None
        if stream is not None and stream.paused:
            self._waitingForTransport = False
            if self._requestProducer is not None:
                self._requestProducer.resumeProducing()
            return
        super().resumeProducing()

    # ------------------------------------------------------- refusing input

    def _maybeChooseTransferDecoder(self, header, data):
        # RFC 9110 8.6: a repeated Content-Length with the same value is one
        # value (Go's server accepts it too, and some clients send it twice).
        if header == b"Content-Length":
            if self._transferDecoder is not None and data == self._content_length:
                return True
            if data.isdigit() and len(data.lstrip(b"0")) > MAX_LENGTH_DIGITS:
                self.refuse(413, "Payload Too Large", "SIZE_INVALID", "the declared Content-Length is too large")
                self.length = None
                return False
            self._content_length = data
        elif header == b"Transfer-Encoding" and self._transferDecoder is None:
            self._content_length = None
        return super()._maybeChooseTransferDecoder(header, data)

    def lineLengthExceeded(self, line):
        self.refuse(
            400, "Bad Request", "UNSUPPORTED", f"the request line and headers exceed {self.totalHeadersSize} bytes"
        )

    def lineReceived(self, line):
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.refuse(
                400, "Bad Request", "UNSUPPORTED", f"the request line and headers exceed {self.totalHeadersSize} bytes"
            )
            return
        return super().lineReceived(line)

    def _respondToBadRequestAndDisconnect(self):
        self.refuse(400, "Bad Request", "UNSUPPORTED", "malformed request")

    def rawDataReceived(self, data):
        try:
            return super().rawDataReceived(data)
        except BodyRefused as e:
            self.refuse(400, "Bad Request", "UNSUPPORTED", str(e))

    def refuse(self, status: int, reason: str, code: str, message: str, headers: dict | None = None) -> None:
        """
        Answer with a JSON error from here, not from a route, and close.  A
        request being handled meanwhile loses its body and its response.
        """
        if self.lingering or self.transport is None:
            return
        self.transport.write(error_response(status, reason, code, message, headers))
        self.silenced = True
        self.persistent = False
        for request in self.requests:
            stream = getattr(request, "body_stream", None)
            if stream is not None:
                stream.fail(Failure(BodyRefused(message)))
        self.linger()

    # A request refused from here writes nothing more.

    def writeHeaders(self, version, code, reason, headers):
        if not self.silenced:
            super().writeHeaders(version, code, reason, headers)

    def write(self, data):
        if not self.silenced:
            super().write(data)

    def writeSequence(self, iovec):
        if not self.silenced:
            super().writeSequence(iovec)

    def linger(self) -> None:
        """
        Close after what was written has been sent, reading and dropping
        whatever the client still sends for at most `LINGER` seconds, so that
        it can read the answer instead of a reset; then drop the connection.
        """
        if self.lingering or self.transport is None:
            return
        self.lingering = True
        self.setTimeout(None)
        self.dataReceived = self.lineReceived = self.rawDataReceived = _discard
        self._networkProducer.unregisterProducer()
        transport = self.transport
        self._linger_call = self.callLater(LINGER, transport.abortConnection)
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None:
            transport.loseConnection()
            return
        transport.resumeProducing()
        half_close()

    def loseConnection(self):
        if self.lingering:
            return None
        if self.drain_on_close:
            self.linger()
            return None
        return super().loseConnection()

    def close_after_response(self) -> None:
        """The current request's body will not be read: close once its response is out (see `linger`)."""
        self.persistent = False
        self.drain_on_close = True

    def connectionLost(self, reason):
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._linger_call = None
        super().connectionLost(reason)

    def dataReceived(self, data):
        if self._first:
            self._first = False
            if data[:2] == b"\x16\x03":
                self.transport.write(
                    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
                )
                self.transport.loseConnection()
                return
        return super().dataReceived(data)


def _discard(*args):
    return None
