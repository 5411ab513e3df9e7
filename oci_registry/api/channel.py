"""
Connections: what the registry accepts before any request is routed.

- `RegistryChannel` reads requests off one connection.  A request's line and
  headers must arrive within the site's ``timeout`` of the connection opening
  (or of the previous response), however the bytes trickle in; requests it
  cannot read (headers too large, a malformed line or length) get a 400 with
  the spec's JSON body.  A response sent before its request's body was read
  (an error found from the headers) closes the connection: the rest of the
  body is never read, only drained for a moment so that the client sees the
  answer rather than a reset.
- `ConnectionLimits` caps open connections, in total and per client address,
  and says so in one log line per episode.
"""

from __future__ import annotations

import json
from typing import Protocol as TypingProtocol
from typing import cast

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import twisted_compat as compat
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


class _ServerTransport(TypingProtocol):
    """What a channel's transport (TCP, TLS) does besides ITransport: ITCPTransport's abort, IPushProducer's resume."""

    def abortConnection(self) -> None: ...

    def loseConnection(self) -> None: ...

    def resumeProducing(self) -> None: ...


class RegistryChannel(compat.HTTPChannelHooks):
    """
    An `HTTPChannel` with a deadline for each request's headers, JSON errors
    for requests it cannot read, a lingering close after answering a request
    whose body was not read, and a quick refusal of a TLS handshake: clients
    such as skopeo and docker try HTTPS first against an insecure registry and
    fall back to plain HTTP only when the handshake fails; without an answer
    they wait for their handshake timeout (10 s) on every connection.
    """

    _first = True
    _content_length = None
    _header_deadline = None
    _awaiting_headers = False
    _linger_call = None
    lingering = False
    silenced = False
    drain_on_close = False
    limits: ConnectionLimits | None = None
    client = None
    cut_reason: str | None = None  # set when the registry itself cuts the connection (at shutdown)

    def connectionMade(self):
        super().connectionMade()
        self._start_header_deadline()

    # ------------------------------------------------------------ deadlines

    def _start_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._awaiting_headers = True
        if self.timeOut and not self.lingering:
            self._header_deadline = self.callLater(self.timeOut, self._headers_too_slow)

    def _cancel_header_deadline(self) -> None:
        self._awaiting_headers = False
        if self._header_deadline is not None:
            if self._header_deadline.active():
                self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        # No log line: under a slowloris attack that would be one per connection.
        self._header_deadline = None
        transport = self.transport
        if transport is None or not self._awaiting_headers:
            return
        if compat.write_pending(transport):
            cast(_ServerTransport, transport).abortConnection()  # a client that does not read its responses either
        else:
            self.loseConnection()

    def allHeadersReceived(self):
        self._cancel_header_deadline()
        request = self.requests[-1]
        compat.headers_received(self, request)
        # A request routed from its headers sends "100 Continue" when its
        # handler reads the body, and never if it answers without it.
        if getattr(request, "body_stream", None) is not None:
            return
        expect = request.requestHeaders.getRawHeaders(b"Expect")
        if expect and expect[0].lower() == b"100-continue" and compat.request_line(self)[2] == b"HTTP/1.1":
            compat.send_100_continue(self)

    def allContentReceived(self):
        if self.lingering or not self.requests:
            return
        super().allContentReceived()

    def requestDone(self, request):
        # The next request's deadline runs from here, before any of it that
        # was pipelined behind this one is parsed.
        if self.persistent and not self.lingering:
            self._start_header_deadline()
        super().requestDone(request)

    def resumeProducing(self):
        # The transport drained its write buffer; keep the socket paused if a
        # request body is held (not asked for yet, or storage is behind).
        stream = getattr(self.requests[-1], "body_stream", None) if self.requests else None
        if stream is not None and stream.paused:
            compat.resume_request_producer(self)
            return
        super().resumeProducing()

    # ------------------------------------------------------- refusing input

    def choose_transfer_decoder(self, header, data):
        # RFC 9110 8.6: a repeated Content-Length with the same value is one
        # value (Go's server accepts it too, and some clients send it twice).
        if header == b"Content-Length":
            if compat.transfer_decoder_chosen(self) and data == self._content_length:
                return True
            if data.isdigit() and len(data.lstrip(b"0")) > MAX_LENGTH_DIGITS:
                self.refuse(413, "Payload Too Large", "SIZE_INVALID", "the declared Content-Length is too large")
                self.length = None
                return False
            self._content_length = data
        elif header == b"Transfer-Encoding" and not compat.transfer_decoder_chosen(self):
            self._content_length = None
        return super().choose_transfer_decoder(header, data)

    def lineLengthExceeded(self, line):
        self.refuse(
            400, "Bad Request", "UNSUPPORTED", f"the request line and headers exceed {self.totalHeadersSize} bytes"
        )

    def lineReceived(self, line):
        if self.lingering:
            return None
        if compat.received_header_size(self) + len(line) > self.totalHeadersSize:
            self.refuse(
                400, "Bad Request", "UNSUPPORTED", f"the request line and headers exceed {self.totalHeadersSize} bytes"
            )
            return
        return super().lineReceived(line)

    def bad_request(self):
        self.refuse(400, "Bad Request", "UNSUPPORTED", "malformed request")

    def rawDataReceived(self, data):
        if self.lingering:
            return None
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
        self.lingering = True  # from here on, dataReceived, lineReceived and rawDataReceived drop what comes
        self._cancel_header_deadline()
        self.setTimeout(None)
        compat.unregister_network_producer(self)
        transport = cast(_ServerTransport, self.transport)
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
        self._cancel_header_deadline()
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._linger_call = None
        if self.limits is not None:
            self.limits.release(self.client)
            self.limits = None
        tracker = getattr(getattr(self, "site", None), "tracker", None)
        if tracker is not None:
            tracker.disconnected(self)
        super().connectionLost(reason)

    def dataReceived(self, data):
        if self.lingering:
            return None
        if self._first:
            self._first = False
            if data[:2] == b"\x16\x03":
                self.transport.write(
                    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
                )
                self.transport.loseConnection()
                return
        return super().dataReceived(data)


class _Refusal(Protocol):
    """Answers a connection past a cap with 503 and closes it."""

    def __init__(self, message: str):
        self.message = message

    def connectionMade(self):
        self.transport.write(
            error_response(503, "Service Unavailable", "UNAVAILABLE", self.message, {"Retry-After": "10"})
        )
        self.transport.loseConnection()


#: File descriptors a connection may hold at once: its socket and, while sendfile sends it a blob,
#: a duplicate of the socket and the blob's file.
FILES_PER_CONNECTION = 3
#: File descriptors kept for the rest of the process (listeners, logs, storage, thread pools).
OPEN_FILES_RESERVE = 64


class ConnectionLimits:
    """
    Open connections, in total and per client address (per process), and
    the caps on them (0: none).  A refusal logs one line when an episode
    starts and one when it ends (the count back under half the cap), never
    one per connection.
    """

    def __init__(self, total: int = 0, per_client: int = 0):
        self.total = total
        self.per_client = per_client
        self.open = 0
        self._by_client: dict[str, int] = {}
        self._refused: dict[str | None, int] = {}  # client (None: the total cap) -> refused in this episode

    def fit(self, open_files: int) -> None:
        """
        Lower the total cap to what a process allowed ``open_files`` file
        descriptors can serve (a connection sending a blob from the
        filesystem holds three, and storage, logs and listeners need some),
        with one log line, so that a flood of connections meets the cap's
        503 rather than failing requests in flight for want of a file.
        """
        fits = max(1, (open_files - OPEN_FILES_RESERVE) // FILES_PER_CONNECTION)
        if self.total and self.total > fits:
            log.warn(
                "max_connections lowered from {configured} to {fits}: this process may open {files} files"
                " (ulimit -n) and a connection may hold {per} of them",
                configured=self.total,
                fits=fits,
                files=open_files,
                per=FILES_PER_CONNECTION,
            )
            self.total = fits

    def admit(self, client: str) -> str | None:
        """Count a new connection from ``client``; a reason to refuse it instead, or None."""
        if self.total and self.open >= self.total:
            self._refuse(None, f"{self.open} connections are open (max_connections is {self.total})")
            return "the registry has too many open connections; try again later"
        count = self._by_client.get(client, 0)
        if self.per_client and count >= self.per_client:
            self._refuse(
                client, f"{count} connections are open from {client} (max_connections_per_client is {self.per_client})"
            )
            return "too many open connections from this address; try again later"
        self.open += 1
        self._by_client[client] = count + 1
        return None

    def release(self, client: str) -> None:
        self.open -= 1
        count = self._by_client.get(client, 1) - 1
        if count > 0:
            self._by_client[client] = count
        else:
            self._by_client.pop(client, None)
        if client in self._refused and count <= self.per_client // 2:
            self._end(client, f"connections from {client} are admitted again")
        if None in self._refused and self.open <= self.total // 2:
            self._end(None, "connections are admitted again")

    def _refuse(self, client: str | None, why: str) -> None:
        if client not in self._refused:
            log.warn("refusing new connections: {why}", why=why)
            self._refused[client] = 0
        self._refused[client] += 1

    def _end(self, client: str | None, what: str) -> None:
        refused = self._refused.pop(client)
        log.info("{what} ({refused} refused meanwhile)", what=what, refused=refused)

    def refusal(self, message: str) -> Protocol:
        return _Refusal(message)
