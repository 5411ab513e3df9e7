"""
Every item of `oci_registry.twisted_compat` against the installed Twisted,
over real connections on 127.0.0.1: each test is named after the Twisted
internal it checks, so that a Twisted release that changes one fails here,
loudly and by name, rather than somewhere in the registry's behaviour.
"""

from __future__ import annotations

import inspect
import io

import pytest
import pytest_twisted
from twisted.internet import abstract, reactor, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, ResponseFailed
from twisted.web.resource import Resource
from zope.interface import implementer

from oci_registry import twisted_compat as compat

TIMEOUT = 10.0  # seconds any wait below may take


async def until(predicate, what: str) -> None:
    """Wait (at most TIMEOUT) for ``predicate()``."""
    for _ in range(int(TIMEOUT / 0.01)):
        if predicate():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"gave up waiting for {what}")


class Probe(compat.HTTPChannelHooks):
    """A channel that records what the compatibility functions tell while it reads a request."""

    def connectionMade(self):
        super().connectionMade()
        self.factory.channels.append(self)
        self.seen = {"headers": [], "bad": 0}

    def choose_transfer_decoder(self, header, data):
        self.seen["headers"].append((header, data))
        return super().choose_transfer_decoder(header, data)

    def bad_request(self):
        self.seen["bad"] += 1
        super().bad_request()

    def allHeadersReceived(self):
        request = self.requests[-1]
        self.seen["line"] = compat.request_line(self)
        self.seen["header size"] = compat.received_header_size(self)
        self.seen["framed"] = compat.transfer_decoder_chosen(self)
        compat.headers_received(self, request)
        self.seen["persistent"] = self.persistent
        self.seen["content"] = request.content is not None
        expect = request.requestHeaders.getRawHeaders(b"expect")
        if expect and expect[0].lower() == b"100-continue":
            compat.send_100_continue(self)


class Page(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []
        self.hold = False
        self.idle_timeout = None

    def render(self, request):
        self.requests.append(request)
        if self.idle_timeout is not None:
            compat.restore_idle_timeout_after_request(request.channel, self.idle_timeout)
        if self.hold:
            return server.NOT_DONE_YET
        return b"ok:" + request.content.read()


class RawClient(Protocol):
    def __init__(self):
        self.data = b""
        self.closed = False

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.closed = True


@pytest.fixture
def probe():
    page = Page()
    site = server.Site(page)
    site.protocol = Probe
    site.channels = []
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    site.page, site.port_number = page, port.getHost().port
    yield site
    for channel in site.channels:
        if channel.transport is not None:
            channel.transport.abortConnection()
    pytest_twisted.blockon(port.stopListening())


async def connect(site) -> RawClient:
    client = RawClient()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", site.port_number), client)
    return client


# ------------------------------------------------------------------ HTTPChannel


@pytest_twisted.ensureDeferred
async def test_HTTPChannel_request_line_header_size_and_transfer_decoder(probe):
    client = await connect(probe)
    lines = [b"POST /x?y=1 HTTP/1.1", b"Host: a", b"Content-Length: 3"]
    client.transport.write(b"\r\n".join(lines) + b"\r\n\r\nabc")
    await until(lambda: b"ok:abc" in client.data, "the response")
    seen = probe.channels[0].seen
    assert seen["line"] == (b"POST", b"/x?y=1", b"HTTP/1.1"), "HTTPChannel._command/_path/_version"
    assert seen["header size"] == sum(len(line) for line in lines), "HTTPChannel._receivedHeaderSize"
    assert (b"Content-Length", b"3") in seen["headers"], "HTTPChannel._maybeChooseTransferDecoder"
    assert seen["framed"] is True, "HTTPChannel._transferDecoder"
    assert seen["persistent"] is True and seen["content"], "HTTPChannel.allHeadersReceived's steps"


@pytest_twisted.ensureDeferred
async def test_HTTPChannel_checkPersistence_and_100_continue(probe):
    client = await connect(probe)
    client.transport.write(
        b"PUT /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    await until(lambda: b"\r\n\r\n" in client.data, "the 100 Continue")
    assert client.data == b"HTTP/1.1 100 Continue\r\n\r\n", "HTTPChannel._send100Continue"
    assert probe.channels[0].seen["persistent"] is False, "HTTPChannel.checkPersistence with _version"
    client.transport.write(b"hi")
    await until(lambda: client.closed, "the connection closing")
    assert client.data.endswith(b"ok:hi")


@pytest_twisted.ensureDeferred
async def test_HTTPChannel_respondToBadRequestAndDisconnect(probe):
    client = await connect(probe)
    client.transport.write(b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n")
    await until(lambda: client.closed, "the connection closing")
    assert probe.channels[0].seen["bad"] == 1, "HTTPChannel._respondToBadRequestAndDisconnect"
    assert client.data.startswith(b"HTTP/1.1 400 Bad Request")


@pytest_twisted.ensureDeferred
async def test_HTTPChannel_savedTimeOut(probe):
    probe.page.idle_timeout = 7.0
    client = await connect(probe)
    client.transport.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    await until(lambda: b"ok:" in client.data, "the response")
    await until(lambda: probe.channels[0].timeOut == 7.0, "the idle timeout back")


@implementer(IPushProducer)
class CountingProducer:
    def __init__(self):
        self.resumed = 0

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        self.resumed += 1

    def stopProducing(self):
        pass


@pytest_twisted.ensureDeferred
async def test_HTTPChannel_requestProducer_waitingForTransport_networkProducer(probe):
    probe.page.hold = True
    client = await connect(probe)
    client.transport.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    await until(lambda: probe.page.requests, "the request")
    channel, request = probe.channels[0], probe.page.requests[0]
    producer = CountingProducer()
    request.registerProducer(producer, True)
    channel.transport.pauseProducing()
    compat.resume_request_producer(channel)
    assert producer.resumed == 1, "HTTPChannel._requestProducer"
    assert channel.transport not in reactor.getReaders(), "resume_request_producer resumed the transport"
    request.unregisterProducer()
    assert channel.transport.producer is channel, "HTTPChannel._networkProducer is the transport"
    compat.unregister_network_producer(channel)
    assert channel.transport.producer is None, "HTTPChannel._networkProducer.unregisterProducer"


# ---------------------------------------------------------------------- Request


@pytest_twisted.ensureDeferred
async def test_Request_disconnected(probe):
    probe.page.hold = True
    client = await connect(probe)
    client.transport.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    await until(lambda: probe.page.requests, "the request")
    request = probe.page.requests[0]
    assert compat.disconnected(request) is False
    client.transport.loseConnection()
    await until(lambda: compat.disconnected(request), "Request._disconnected")


# --------------------------------------------------------------- TCP transports


@implementer(IPushProducer)
class FlushWatch(CountingProducer):
    pass


@pytest_twisted.ensureDeferred
async def test_FileDescriptor_dataBuffer_offset_tempDataLen_producerPaused(probe):
    probe.page.hold = True
    client = await connect(probe)
    client.transport.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    await until(lambda: probe.page.requests, "the request")
    transport = probe.channels[0].transport
    assert compat.can_sendfile(transport), "tcp.Server with dataBuffer"
    assert compat.unsent_bytes(transport) == 0 and not compat.write_pending(transport)
    client.transport.pauseProducing()  # the client stops reading: the server's buffer fills
    transport.write(b"x" * (32 << 20))
    assert compat.unsent_bytes(transport) > 0, "FileDescriptor.dataBuffer/offset/_tempDataLen"
    assert compat.write_pending(transport)
    # As the sendfile pump does: its producer is the request's, the channel the transport's.
    watch = FlushWatch()
    request = probe.page.requests[0]
    request.registerProducer(watch, True)
    # What the pump may find: a transport that has not paused its producer (it
    # pauses it only past its own buffer's size); resume_when_flushed asks anyway.
    transport.producerPaused = False
    compat.resume_when_flushed(transport)
    assert transport.producerPaused is True
    client.transport.resumeProducing()
    await until(lambda: watch.resumed, "FileDescriptor.doWrite resuming a producerPaused producer")
    assert compat.unsent_bytes(transport) == 0
    request.unregisterProducer()


@pytest_twisted.ensureDeferred
async def test_Connection_bufferSize_bounds_each_read(probe):
    client = await connect(probe)
    await until(lambda: probe.channels, "the connection")
    transport = probe.channels[0].transport
    assert isinstance(getattr(tcp.Connection, compat.READ_LIMIT_ATTRIBUTE), int)
    assert isinstance(getattr(abstract.FileDescriptor, compat.SEND_LIMIT_ATTRIBUTE), int)
    assert "self.SEND_LIMIT" in inspect.getsource(abstract.FileDescriptor.doWrite), "FileDescriptor.SEND_LIMIT"
    reads = []
    channel = probe.channels[0]
    original = channel.dataReceived
    channel.dataReceived = lambda data: (reads.append(data), original(data))[1]
    setattr(transport, compat.READ_LIMIT_ATTRIBUTE, 5)
    client.transport.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    await until(lambda: b"ok:" in client.data, "the response")
    assert reads and max(len(r) for r in reads) <= 5, "tcp.Connection.bufferSize"


# ------------------------------------------------------------------- the client


class BodyTransport(Protocol):
    def __init__(self):
        self.connection = None
        self.done = Deferred()

    def makeConnection(self, transport):
        self.connection = compat.tcp_connection(transport)  # while the body is read
        super().makeConnection(transport)

    def connectionLost(self, reason):
        self.done.callback(None)


class Recorder(compat.ClientProtocolHooks):
    made: list = []
    give_up_with = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.states = []
        Recorder.made.append(self)

    def dataReceived(self, data):
        self.states.append(self.reading_headers())
        if Recorder.give_up_with is not None:
            self.give_up(Failure(Recorder.give_up_with))
            return
        super().dataReceived(data)


class GiveUp(Exception):
    pass


@pytest_twisted.ensureDeferred
async def test_HTTPConnectionPool_factory_and_HTTP11ClientProtocol_parser(probe):
    Recorder.made, Recorder.give_up_with = [], None
    pool = compat.connection_pool(Recorder)(reactor, persistent=False)
    agent = Agent(reactor, pool=pool)
    url = f"http://127.0.0.1:{probe.port_number}/x".encode()
    response = await agent.request(b"GET", url)
    body = BodyTransport()
    response.deliverBody(body)
    await body.done
    assert len(Recorder.made) == 1, "HTTPConnectionPool._factory building the pool's protocol"
    assert Recorder.made[0].states[0] is True, "HTTP11ClientProtocol._parser.state in (STATUS, HEADER)"
    assert isinstance(body.connection, tcp.Client), "TransportProxyProducer._producer"
    assert compat.connection_pool()._factory.noisy is False

    Recorder.give_up_with = GiveUp("enough")
    with pytest.raises(ResponseFailed) as failed:
        await agent.request(b"GET", url)
    assert any(reason.check(GiveUp) for reason in failed.value.reasons), "HTTP11ClientProtocol._giveUp"
    await pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_StandardEndpointFactory(probe):
    factory = compat.StandardEndpointFactory(reactor, BrowserLikePolicyForHTTPS(), 5.0, None)
    endpoint = factory.endpointForURI(URI.fromBytes(f"http://127.0.0.1:{probe.port_number}/".encode()))
    agent = Agent.usingEndpointFactory(reactor, factory)
    response = await agent.request(b"GET", f"http://127.0.0.1:{probe.port_number}/x".encode())
    assert response.code == 200
    body = BodyTransport()
    response.deliverBody(body)
    await body.done
    assert endpoint is not None


class Recording(server.Request):
    processed = False

    def process(self):
        self.processed = True


@pytest.mark.parametrize("target", [b"/v2/a/blobs/uploads/", b"/v2/a/blobs/uploads/?digest=sha256:00&mount=&x=1&x=2"])
@pytest_twisted.ensureDeferred
async def test_Request_requestReceived(probe, target):
    """`start_request` sets what `Request.requestReceived` sets from the request line, and processes the request."""
    await connect(probe)
    await until(lambda: probe.channels, "the connection")
    channel = probe.channels[0]
    ours, theirs = Recording(channel), Recording(channel)
    theirs.content = io.BytesIO()  # an empty body, all read
    compat.start_request(ours, b"PATCH", target, b"HTTP/1.1")
    theirs.requestReceived(b"PATCH", target, b"HTTP/1.1")
    for name in ("method", "uri", "clientproto", "path", "args", "processed"):
        assert getattr(ours, name) == getattr(theirs, name), f"Request.requestReceived sets {name}"
