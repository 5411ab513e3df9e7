"""
The parts of Twisted the registry relies on that Twisted does not promise:
private attributes and methods, and the workings of public ones.  They
live here, and only here, each with what it relies on, so that a new
Twisted release is checked in one place: ``tests/test_twisted_compat.py``
exercises every item against the installed Twisted and names the item that
broke; setup.py bounds Twisted to the releases that test passes on.

Why they are needed at all: the registry reads a request's body only once
its handler has authorized it, streams it into storage with back-pressure,
refuses malformed framing with the spec's JSON errors, sends files with
``os.sendfile``, and bounds what an upstream registry may send.
``twisted.web`` offers none of these as public hooks.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from twisted.internet import tcp
from twisted.web import client as web_client
from twisted.web import http

# Twisted's own internal names, imported here only.
from twisted.web._newclient import HEADER, STATUS, HTTP11ClientProtocol

__all__ = [
    "ClientProtocolHooks",
    "HTTPChannelHooks",
    "StandardEndpointFactory",
    "can_sendfile",
    "connection_pool",
    "disconnected",
    "headers_received",
    "received_header_size",
    "request_line",
    "restore_idle_timeout_after_request",
    "resume_request_producer",
    "resume_when_flushed",
    "send_100_continue",
    "start_request",
    "tcp_connection",
    "transfer_decoder_chosen",
    "unregister_network_producer",
    "unsent_bytes",
    "write_pending",
]


# ------------------------------------------- twisted.web.http.HTTPChannel (server)


def request_line(channel: http.HTTPChannel) -> tuple[bytes, bytes, bytes]:
    """The method, target and version of the request whose headers the channel is reading."""
    # HTTPChannel.lineReceived keeps the request line in _command, _path and
    # _version until allContentReceived passes them to Request.requestReceived.
    return channel._command, channel._path, channel._version


def headers_received(channel: http.HTTPChannel, request) -> None:
    """What `HTTPChannel.allHeadersReceived` does before it answers ``Expect: 100-continue``."""
    # HTTPChannel.allHeadersReceived: parseCookies, checkPersistence with
    # the request's version (_version), gotLength(self.length), then the 100.
    request.parseCookies()
    channel.persistent = channel.checkPersistence(request, channel._version)
    request.gotLength(channel.length)


def send_100_continue(channel: http.HTTPChannel) -> None:
    """Write ``HTTP/1.1 100 Continue``: the client may send the body."""
    # HTTPChannel._send100Continue, as allHeadersReceived calls it.
    channel._send100Continue()


def restore_idle_timeout_after_request(channel: http.HTTPChannel, timeout) -> None:
    """Have the channel's idle timeout back (``timeout`` seconds) once the current request is done."""
    # HTTPChannel.allContentReceived saves the idle timeout in _savedTimeOut
    # (and disables it); requestDone sets it again from there.
    channel._savedTimeOut = timeout


def transfer_decoder_chosen(channel: http.HTTPChannel) -> bool:
    """Whether a Content-Length or Transfer-Encoding header has framed the current request's body already."""
    # HTTPChannel._transferDecoder: None until _maybeChooseTransferDecoder picks one.
    return channel._transferDecoder is not None


def received_header_size(channel: http.HTTPChannel) -> int:
    """Bytes of the current request's line and headers received so far."""
    # HTTPChannel._receivedHeaderSize, which lineReceived adds to and compares with totalHeadersSize.
    return channel._receivedHeaderSize


def resume_request_producer(channel: http.HTTPChannel) -> None:
    """The first half of `HTTPChannel.resumeProducing`: resume the response's producer, not reading from the client."""
    # HTTPChannel.resumeProducing: _waitingForTransport = False, then
    # _requestProducer.resumeProducing(), then the transport (not done here).
    channel._waitingForTransport = False
    producer = channel._requestProducer
    if producer is not None:
        producer.resumeProducing()


def unregister_network_producer(channel: http.HTTPChannel) -> None:
    """Stop the channel from pausing and resuming the transport (it is closing, reading only to drop)."""
    # HTTPChannel._networkProducer: the transport as an IPushProducer, registered at connectionMade.
    channel._networkProducer.unregisterProducer()


# Looked up once: twisted.web.http is a deprecated-attribute module proxy, whose
# every attribute access costs a few function calls, and these run per header.
_choose_transfer_decoder = http.HTTPChannel._maybeChooseTransferDecoder
_respond_to_bad_request = http.HTTPChannel._respondToBadRequestAndDisconnect


class HTTPChannelHooks(http.HTTPChannel):
    """
    An `HTTPChannel` whose private hooks a subclass overrides under names
    of its own: `choose_transfer_decoder` and `bad_request`.
    """

    def _maybeChooseTransferDecoder(self, header, data):
        # HTTPChannel.headerReceived calls this for every header, and drops
        # the connection when it returns False.
        return self.choose_transfer_decoder(header, data)

    def choose_transfer_decoder(self, header: bytes, data: bytes) -> bool:
        """Frame the body from a Content-Length or Transfer-Encoding header; False: the request is refused."""
        return _choose_transfer_decoder(self, header, data)

    def _respondToBadRequestAndDisconnect(self):
        # HTTPChannel calls this for a malformed request line, header or
        # chunk, and for too many headers.
        self.bad_request()

    def bad_request(self) -> None:
        """Answer a request that cannot be parsed, and close."""
        _respond_to_bad_request(self)


# ------------------------------------------------------- twisted.web.server.Request


def start_request(request, command: bytes, path: bytes, version: bytes) -> None:
    """
    Start handling a request once its headers are in, before its body: what
    `Request.requestReceived` does when the whole request has arrived, minus
    reading the body (the handler reads it later, if it is authorized).
    """
    # Request.requestReceived sets method, uri, clientproto, path and args
    # (from the query), parses a POSTed form from the body, then calls process().
    request.method, request.uri = command, path
    request.clientproto = version
    request.args = {}
    base, _, query = path.partition(b"?")
    request.path = base
    if query:
        request.args = parse_qs(query, keep_blank_values=True)
    request.process()


def disconnected(request) -> bool:
    """Whether the request's connection was lost (nothing written to it arrives any more)."""
    # Request._disconnected, set by Request.connectionLost.
    return request._disconnected


# ---------------------------------------------- twisted.internet.tcp transports


def can_sendfile(transport) -> bool:
    """Whether ``os.sendfile`` may write to the transport's socket: a plain TCP server connection, not TLS."""
    # tcp.Server is the connection class of a listening TCP port; TLS wraps it
    # in another transport.  dataBuffer: see unsent_bytes.
    return isinstance(transport, tcp.Server) and hasattr(transport, "dataBuffer")


def unsent_bytes(transport) -> int:
    """Bytes written to a TCP transport that it has not sent to its socket yet."""
    # abstract.FileDescriptor keeps what is being sent in dataBuffer (sent up
    # to offset) and _tempDataLen more bytes queued in _tempDataBuffer.
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def write_pending(transport) -> bool:
    """Whether a transport holds bytes written to it that its peer has not taken (False when it cannot tell)."""
    # abstract.FileDescriptor's dataBuffer and _tempDataLen (see unsent_bytes); TLS and other transports have neither.
    return bool(getattr(transport, "dataBuffer", b"") or getattr(transport, "_tempDataLen", 0))


def resume_when_flushed(transport) -> None:
    """Have the transport call its registered producer's ``resumeProducing`` once its buffer is sent."""
    # abstract.FileDescriptor.doWrite resumes a paused producer (producerPaused)
    # when its buffer empties; startWriting makes the reactor call doWrite.
    transport.producerPaused = True
    transport.startWriting()


def tcp_connection(transport) -> tcp.Connection | None:
    """The TCP connection under ``transport``, also under the HTTP client's proxy for it; None (TLS, UNIX...)."""
    # A response body's transport in twisted.web's client is a
    # TransportProxyProducer (twisted.web._newclient) holding the connection in _producer.
    for candidate in (transport, getattr(transport, "_producer", None)):
        if isinstance(candidate, tcp.Connection):
            return candidate
    return None


# The per-call socket limits of a TCP connection, overridden per instance by
# `oci_registry.bulk` and restored by deleting the instance attribute:
# tcp.Connection.bufferSize (bytes per recv) and abstract.FileDescriptor.SEND_LIMIT (bytes per send).
READ_LIMIT_ATTRIBUTE = "bufferSize"
SEND_LIMIT_ATTRIBUTE = "SEND_LIMIT"


# ----------------------------------------------------------- twisted.web.client


class ClientProtocolHooks(HTTP11ClientProtocol):
    """An `HTTP11ClientProtocol` that can tell when it reads a response's headers, and give up on a response."""

    def reading_headers(self) -> bool:
        """Whether the response's status line and headers are being read."""
        # HTTP11ClientProtocol._parser (an HTTPClientParser while a response
        # is read) and its state, STATUS then HEADER then the body's states.
        parser = self._parser
        return parser is not None and parser.state in (STATUS, HEADER)

    def give_up(self, failure) -> None:
        """Fail the request in progress with ``failure`` and drop the connection."""
        # HTTP11ClientProtocol._giveUp: abort the connection, failing the response's Deferred.
        self._giveUp(failure)


def connection_pool(protocol: type[HTTP11ClientProtocol] | None = None, noisy: bool = False):
    """
    A `HTTPConnectionPool` class whose connections are ``protocol``
    instances (the default: Twisted's) and whose factories log no
    "Starting factory" line per connection unless ``noisy``.
    """

    # HTTPConnectionPool._factory: the factory class of its connections,
    # _HTTP11ClientFactory, built with the pool's quiescent callback, which
    # its buildProtocol hands to the protocol (_quiescentCallback).
    class Factory(web_client._HTTP11ClientFactory):
        def buildProtocol(self, addr):
            if protocol is None:
                return super().buildProtocol(addr)
            return protocol(self._quiescentCallback)

    Factory.noisy = noisy

    class Pool(web_client.HTTPConnectionPool):
        _factory = Factory

    return Pool


# twisted.web.client's Agent endpoint factory (host, port, TLS policy,
# connect timeout, bind address), for an agent whose reactor resolves names its own way.
StandardEndpointFactory = web_client._StandardEndpointFactory
