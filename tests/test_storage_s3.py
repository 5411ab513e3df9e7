"""
The storage suite against the S3 driver on a real S3 server (SeaweedFS),
plus what only S3 needs: multipart parts of at least 5 MiB, uploads carried
on by another driver instance (another replica), multipart copies, presigned
redirect URLs, signatures the server checks, and the configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.request

import pytest
import pytest_twisted
import treq
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from oci_registry.config import Config, ConfigError
from oci_registry.storage.interfaces import (
    IBatchDelete,
    IClosableDriver,
    IEmptyCopy,
    IExclusiveCreate,
    IReadFile,
    IStatFile,
    IWalkAfter,
    IWalkPages,
    PathNotFound,
    StorageUnavailable,
)
from oci_registry.storage.s3 import STATE_HEADER, S3Driver, _copy_ranges
from oci_registry.storage.s3client import S3Client
from oci_registry.storage.settings import MIN_PART_SIZE, S3Settings
from oci_registry.storage.sigv4 import Credentials
from registry_process import free_port
from s3_server import s3_server  # noqa: F401  (the session fixture)
from storage_suite import StorageSuite

MiB = 1 << 20


def make_driver(server, **overrides) -> S3Driver:
    settings = server.settings(**overrides)
    return S3Driver(settings)


class TestS3Storage(StorageSuite):
    driver_capabilities = (
        IClosableDriver,
        IExclusiveCreate,
        IWalkPages,
        IWalkAfter,
        IBatchDelete,
        IStatFile,
        IReadFile,
        IEmptyCopy,
    )

    @pytest.fixture
    def driver(self, s3_server):  # noqa: F811
        self.server = s3_server
        driver = make_driver(s3_server)
        yield driver
        driver.close()

    def temp_files(self, driver):
        return self.server.multipart_uploads(driver.settings.prefix)


class TestS3SmallParts:
    """S3-only behaviour, with the smallest part size S3 allows (5 MiB) to keep the data small."""

    @pytest.fixture
    def settings(self, s3_server):  # noqa: F811
        self.server = s3_server
        return s3_server.settings(part_size=MIN_PART_SIZE)

    @pytest.fixture
    def drivers(self, settings):
        """Two drivers on the same bucket and prefix: two replicas."""
        made = [S3Driver(settings), S3Driver(settings)]
        yield made
        for driver in made:
            driver.close()
        assert self.server.multipart_uploads(settings.prefix) == []

    @pytest_twisted.ensureDeferred
    async def test_multipart_parts_are_at_least_5_mib(self, drivers):
        driver = drivers[0]
        sent = []
        upload_part = driver.client.upload_part

        async def spy(key, upload_id, number, data, payload_hash=None):
            sent.append((number, len(data)))
            return await upload_part(key, upload_id, number, data, payload_hash)

        driver.client.upload_part = spy
        data = os.urandom(17 * MiB + 12345)
        hasher = hashlib.sha256()
        writer = await driver.open_writer("mp/data", hasher=hasher)
        highest = 0
        for i in range(0, len(data), 256 << 10):
            await writer.write(data[i : i + (256 << 10)])
            highest = max(highest, writer._buffered)
        await writer.commit()
        sent.sort()  # two parts are in flight at once: they may start in either order
        assert [n for n, _ in sent] == [1, 2, 3, 4]
        assert all(size >= MIN_PART_SIZE for _, size in sent[:-1])
        assert highest < 2 * MIN_PART_SIZE  # never more than a part waits behind the one in flight
        assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
        assert await driver.read_bytes("mp/data") == data
        assert (await driver.stat("mp/data")).size == len(data)
        await driver.delete("mp")

    @pytest_twisted.ensureDeferred
    async def test_copy_empty_writes_only_where_the_source_is_empty(self, drivers):
        """What lists a repository as its upload finishes: an empty session, never one holding bytes, or none."""
        a, b = drivers
        await a.write_bytes("u/empty/data", b"")
        assert await b.copy_empty("u/empty/data", "entries/one") is True
        assert await a.read_bytes("entries/one") == b""
        writer = await a.open_writer("u/state/data", append=True)
        await writer.write(b"not yet a part")
        await writer.close()  # an upload state: the bytes, below one part, held in the object
        await a.write_bytes("u/full/data", b"x")
        for source in ("u/state/data", "u/full/data", "u/missing/data"):
            assert await b.copy_empty(source, "entries/two") is False, source
        assert await a.stat_file("entries/two") is None
        assert (await b.stat("u/state/data")).size == len(b"not yet a part")
        # A server that would copy whatever the condition: the copy's ETag tells.
        copy = b.client.copy
        b.client.copy = lambda source, key, if_match=None, if_absent=False: copy(source, key)
        assert await b.copy_empty("u/full/data", "entries/two") is False
        assert await b.copy_empty("u/empty/data", "entries/four") is True
        b.client.copy = copy
        # A store whose empty objects' ETags are not the MD5 of nothing (SSE-KMS): no copy is tried.
        put = b.client.put

        async def kms_put(key, data, payload_hash=None, metadata=None, if_absent=False):
            await put(key, data, payload_hash, metadata, if_absent)
            return "a-kms-etag"

        b.client.put = kms_put
        await b.write_bytes("u/kms/data", b"")
        copies = []
        b.client.copy = lambda *args, **kwargs: copies.append(args)
        assert await b.copy_empty("u/kms/data", "entries/three") is False
        assert copies == []
        for path in ("u", "entries"):
            await a.delete(path)

    @pytest_twisted.ensureDeferred
    async def test_append_continues_on_another_driver(self, drivers):
        """PATCH on one replica, the next PATCH on the other, PUT back on the first."""
        a, b = drivers
        chunks = [os.urandom(6 * MiB + 7), os.urandom(3 * MiB), os.urandom(5 * MiB + 1), os.urandom(1000)]
        path = "repositories/x/_uploads/u1/data"
        writer = await a.open_writer(path, hasher=hashlib.sha256())
        await writer.write(chunks[0])
        await writer.close()
        # The upload's state is in the bucket, not in a's memory.
        info = await b.stat(path)
        assert info.size == len(chunks[0]) and not info.is_dir
        for driver, chunk in ((b, chunks[1]), (a, chunks[2]), (b, chunks[3])):
            writer = await driver.open_writer(path, append=True)
            assert writer.size == (await driver.stat(path)).size
            await writer.write(chunk)
            await writer.close()
        data = b"".join(chunks)
        assert (await a.stat(path)).size == len(data)
        # Whoever finishes re-hashes from storage (hash state is never stored), then publishes.
        hasher = await a.hash_file(path, hashlib.sha256())
        assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
        await b.move(path, "blobs/sha256/aa/blob/data")
        assert await a.read_bytes("blobs/sha256/aa/blob/data") == data
        assert await a.stat(path) is None
        await a.delete("repositories/x/_uploads/u1")
        await a.delete("blobs")

    @pytest_twisted.ensureDeferred
    async def test_an_empty_append_reads_and_rewrites_nothing(self, drivers):
        """A PUT that finishes an upload often has no body: the state is left as it is."""
        a, b = drivers
        data = os.urandom(6 * MiB)
        writer = await a.open_writer("e/data")
        await writer.write(data)
        await writer.close()
        calls = []
        for name in ("get_bytes", "put", "upload_part"):
            original = getattr(b.client, name)

            def spy(*args, _original=original, _name=name, **kwargs):
                calls.append(_name)
                return _original(*args, **kwargs)

            setattr(b.client, name, spy)
        writer = await b.open_writer("e/data", append=True)
        assert writer.size == len(data)
        await writer.close()
        assert calls == []
        writer = await b.open_writer("e/data", append=True)
        await writer.commit()
        assert await a.read_bytes("e/data") == data
        await a.delete("e")

    @pytest_twisted.ensureDeferred
    async def test_closed_upload_state_is_not_blob_data(self, drivers):
        """A closed writer's state object is flagged; every reader gets the bytes, never the state."""
        a, b = drivers
        data = os.urandom(5 * MiB + 100)
        writer = await a.open_writer("s/data")
        await writer.write(data)
        await writer.close()
        head = await a.client.head(a._key("s/data"))
        assert STATE_HEADER in head.metadata and head.size < len(data)
        reader = await b.open_reader("s/data", 5 * MiB)
        assert reader.size == len(data)
        assert await reader.read(1000) == data[5 * MiB :]
        await reader.close()
        assert await a.read_bytes("s/data") == data
        await a.delete("s")

    @pytest_twisted.ensureDeferred
    async def test_a_part_sent_again_after_the_state_never_mixes_in(self, drivers):
        """
        A writer cut short after sending a part, or a client sending one
        chunk to two replicas at once, can put a part number again after
        the state recorded it: the recorded ETag decides which bytes count.
        """
        a, b = drivers
        written = [os.urandom(MiB) for _ in range(10)]
        writer = await a.open_writer("r/data")
        for chunk in written:
            await writer.write(chunk)
        await writer.close()  # parts 1 and 2 recorded in the state
        key = a._key("r/data")
        upload_id = json.loads((await a.client.get_bytes(key))[1].split(b"\n", 1)[0])["upload_id"]
        await b.client.upload_part(key, upload_id, 2, os.urandom(5 * MiB))
        try:
            hasher = await b.hash_file("r/data", hashlib.sha256())
        except Exception as e:  # noqa: BLE001 AWS, MinIO, Ceph: whichever error, it names the part
            assert "InvalidPart" in str(e)
        else:  # SeaweedFS completes with the recorded version
            assert hasher.hexdigest() == hashlib.sha256(b"".join(written)).hexdigest()
        await a.delete("r")

    @pytest_twisted.ensureDeferred
    async def test_delete_aborts_a_closed_multipart_upload(self, drivers):
        a, _ = drivers
        writer = await a.open_writer("up/1/data")
        await writer.write(os.urandom(6 * MiB))
        await writer.close()
        assert self.server.multipart_uploads(a.settings.prefix) != []
        await a.delete("up/1")
        assert self.server.multipart_uploads(a.settings.prefix) == []
        assert await a.walk("up") == []

    @pytest_twisted.ensureDeferred
    async def test_append_to_a_committed_object(self, drivers):
        """A finished object of a part's size or more is copied server-side into the new upload."""
        a, b = drivers
        first, second = os.urandom(6 * MiB), os.urandom(MiB)
        await a.write_bytes("f", first)
        writer = await b.open_writer("f", append=True)
        assert writer.size == len(first)
        await writer.write(second)
        await writer.commit()
        assert await a.read_bytes("f") == first + second
        await a.delete("f")

    @pytest_twisted.ensureDeferred
    async def test_move_large_object_uses_multipart_copy(self, drivers):
        a, _ = drivers
        a.copy_limit, a.copy_part_size = 6 * MiB, MIN_PART_SIZE
        data = os.urandom(13 * MiB + 5)
        await a.write_bytes("big/src", data)
        copied = []
        upload_part_copy = a.client.upload_part_copy

        async def spy(key, upload_id, number, source, start, end):
            copied.append((start, end))
            return await upload_part_copy(key, upload_id, number, source, start, end)

        a.client.upload_part_copy = spy
        await a.move("big/src", "big/dst")
        assert copied == [(0, 5 * MiB - 1), (5 * MiB, len(data) - 1)]
        assert await a.read_bytes("big/dst") == data
        assert await a.stat("big/src") is None
        await a.delete("big")

    @pytest_twisted.ensureDeferred
    async def test_hash_file_streams_a_limit(self, drivers):
        a, _ = drivers
        data = os.urandom(3 * MiB)
        await a.write_bytes("h", data)
        got = await a.hash_file("h", hashlib.sha256(), MiB + 1)
        assert got.hexdigest() == hashlib.sha256(data[: MiB + 1]).hexdigest()
        with pytest.raises(PathNotFound):
            await a.hash_file("missing", hashlib.sha256())
        await a.delete("h")

    @pytest_twisted.ensureDeferred
    async def test_reader_at_the_end_and_empty_files(self, drivers):
        a, _ = drivers
        await a.write_bytes("e", b"")
        reader = await a.open_reader("e")
        assert reader.size == 0 and await reader.read(10) == b""
        await a.write_bytes("n", b"12345")
        reader = await a.open_reader("n", 5)
        assert reader.size == 5 and await reader.read(10) == b""
        assert (await a.hash_file("e", hashlib.sha256())).hexdigest() == hashlib.sha256(b"").hexdigest()
        await a.delete("e")
        await a.delete("n")


class TestRedirect:
    @pytest_twisted.ensureDeferred
    async def test_presigned_url_serves_the_bytes(self, s3_server):  # noqa: F811
        driver = make_driver(s3_server, redirect=True, redirect_expiry="5m")
        try:
            data = os.urandom(300000)
            await driver.write_bytes("blobs/sha256/ab/abc/data", data)
            url = await driver.redirect_url("blobs/sha256/ab/abc/data")
            assert url.startswith(s3_server.endpoint) and "X-Amz-Signature=" in url
            assert "X-Amz-Expires=300" in url
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.read() == data
            # Tampering with the URL breaks the signature: the server checks it.
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(url.replace("abc/data", "abd/data"), timeout=10)
            assert e.value.code == 403
            await driver.delete("blobs")
        finally:
            driver.close()

    @pytest_twisted.ensureDeferred
    async def test_redirect_endpoint_is_the_one_clients_reach(self, s3_server):  # noqa: F811
        public = s3_server.endpoint.replace("127.0.0.1", "localhost")
        driver = make_driver(s3_server, redirect=True, redirect_endpoint=public)
        try:
            await driver.write_bytes("b/data", b"public")
            url = await driver.redirect_url("b/data")
            assert url.startswith(public + "/")
            with urllib.request.urlopen(url, timeout=10) as response:  # signed for that host
                assert response.read() == b"public"
            await driver.delete("b")
        finally:
            driver.close()

    @pytest_twisted.ensureDeferred
    async def test_no_redirect_unless_enabled(self, s3_server):  # noqa: F811
        driver = make_driver(s3_server)
        try:
            assert await driver.redirect_url("blobs/x/data") is None
        finally:
            driver.close()


@pytest_twisted.ensureDeferred
async def test_wrong_secret_is_refused(s3_server):  # noqa: F811
    """The server checks signatures, so the suite passing means ours are right."""
    driver = make_driver(s3_server, secret_key="not-the-secret")
    try:
        for operation in (driver.write_bytes("x", b"x"), driver.read_bytes("x"), driver.stat("x"), driver.check()):
            with pytest.raises(
                StorageUnavailable, match="refuses access to bucket 'ociregistry': (SignatureDoesNotMatch|HTTP 403)"
            ) as e:
                await operation
            assert e.value.misconfigured
    finally:
        driver.close()


@pytest_twisted.ensureDeferred
async def test_the_client_makes_its_endpoint_once(s3_server):  # noqa: F811
    """Not once a request (what an `Agent` does by itself, pooled connection or not)."""
    driver = make_driver(s3_server)
    try:
        for i in range(5):
            await driver.write_bytes(f"endpoint/{i}", b"x")
            assert await driver.read_bytes(f"endpoint/{i}") == b"x"
        assert len(driver.client._endpoints._made) == 1
    finally:
        driver.close()


@pytest_twisted.ensureDeferred
async def test_missing_bucket_is_unavailable_never_not_found(s3_server):  # noqa: F811
    driver = make_driver(s3_server, bucket="ociregistry-no-such-bucket")
    try:
        for operation in (driver.read_bytes("x"), driver.stat("x"), driver.list("x"), driver.check()):
            with pytest.raises(StorageUnavailable, match="bucket 'ociregistry-no-such-bucket' does not exist") as e:
                await operation
            assert e.value.misconfigured
    finally:
        driver.close()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_s3_fails_fast_once_known(s3_server):  # noqa: F811
    """About 2 s of retries for the first request; one attempt each while the outage lasts; not a misconfiguration."""
    from twisted.internet import reactor

    driver = make_driver(s3_server, endpoint=f"http://127.0.0.1:{free_port()}")
    try:
        took = []
        for _ in range(3):
            started = reactor.seconds()
            with pytest.raises(StorageUnavailable, match="cannot reach S3 at http://127.0.0.1:") as e:
                await driver.read_bytes("x")
            took.append(reactor.seconds() - started)
            assert not e.value.misconfigured
        assert 2 <= took[0] < 10 and max(took[1:]) < 1.5, took
        assert driver.client.availability.down
    finally:
        driver.close()


@pytest_twisted.ensureDeferred
async def test_credentials_refused_while_serving_is_503(s3_server):  # noqa: F811
    """
    A secret revoked after start-up: 503 with the spec's body (in memory: the
    secret cannot change under a process).
    """
    from twisted.internet import reactor
    from twisted.web.server import Site

    from oci_registry.api.app import RegistryAPI
    from oci_registry.registry import Registry
    from oci_registry.storage.s3 import S3Driver

    driver = S3Driver(s3_server.settings(secret_key="revoked"))
    port = reactor.listenTCP(0, Site(RegistryAPI(Registry(driver)).resource()), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}"
        for path in (
            "/v2/app/manifests/v1",
            "/v2/app/tags/list",
            f"/v2/app/blobs/{'sha256:' + hashlib.sha256(b'x').hexdigest()}",
        ):
            response = await treq.get(url + path)
            body = json.loads(await response.content())
            assert response.code == 503, body
            assert body["errors"][0]["code"] == "UNAVAILABLE"
            assert response.headers.getRawHeaders("Retry-After") == ["10"]
        assert driver.client.availability.down
    finally:
        await port.stopListening()
        driver.close()


def test_request_bodies_go_to_the_socket_in_slices_as_it_takes_them():
    """
    A part is handed to the transport a slice at a time, stopping while the
    transport pushes back: written whole, it would be copied again when the
    transport joins its buffer.
    """
    from oci_registry.storage.s3client import BODY_SLICE, _BytesProducer

    data = os.urandom(3 * BODY_SLICE + 5)
    producer = _BytesProducer(data)
    assert producer.length == len(data)

    class Consumer:
        def __init__(self, producer):
            self.producer, self.pieces = producer, []

        def write(self, piece):
            assert isinstance(piece, bytes) and len(piece) <= BODY_SLICE
            self.pieces.append(piece)
            self.producer.pauseProducing()  # a full socket buffer after every slice

    consumer = Consumer(producer)
    done = producer.startProducing(consumer)
    assert len(consumer.pieces) == 1 and not done.called
    for expected in (2, 3, 4):
        producer.resumeProducing()
        assert len(consumer.pieces) == expected
    assert not done.called
    producer.resumeProducing()  # nothing left: finished
    assert done.called and b"".join(consumer.pieces) == data

    stopped = _BytesProducer(data)
    consumer = Consumer(stopped)
    fired = []
    stopped.startProducing(consumer).addBoth(fired.append)
    stopped.stopProducing()
    stopped.resumeProducing()
    assert fired == [] and len(consumer.pieces) == 1  # never fired nor written to after a stop


def test_large_buffers_come_from_mmap_on_glibc():
    import platform

    from oci_registry.bulk import large_buffers_from_mmap

    assert large_buffers_from_mmap() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_body_stream_pauses_and_gives_up_on_a_stalled_server():
    from twisted.internet.error import TimeoutError as StallError
    from twisted.internet.task import Clock
    from twisted.python.failure import Failure
    from twisted.web.client import ResponseDone

    from oci_registry.storage.s3client import BodyStream

    class Transport:
        paused = stopped = False

        def pauseProducing(self):
            self.paused = True

        def resumeProducing(self):
            self.paused = False

        def stopProducing(self):
            self.stopped = True

    clock, transport = Clock(), Transport()
    stream = BodyStream(high_water=10, reactor=clock, idle_timeout=30)
    stream.makeConnection(transport)
    stream.dataReceived(b"0123456789ab")
    assert transport.paused  # more than high_water waiting: the server is paused
    got = []
    Deferred.fromCoroutine(stream.read(8)).addCallback(got.append)
    assert got == [b"01234567"] and not transport.paused
    Deferred.fromCoroutine(stream.read(8)).addCallback(got.append)
    waiting = Deferred.fromCoroutine(stream.read(8))
    failures = []
    waiting.addErrback(failures.append)
    clock.advance(29)
    assert not failures
    clock.advance(1)
    assert failures and failures[0].check(StallError) and transport.stopped
    stream.connectionLost(Failure(ResponseDone()))
    assert got == [b"01234567", b"89ab"]


class _Flaky(Resource):
    """Answers 503 SlowDown ``failures`` times, then 200; or never answers when ``hang``."""

    isLeaf = True

    def __init__(self, failures=0, hang=False):
        super().__init__()
        self.failures, self.hang, self.seen = failures, hang, []

    def render(self, request):
        self.seen.append(request.getHeader(b"authorization"))
        if self.hang:
            return NOT_DONE_YET
        if len(self.seen) <= self.failures:
            request.setResponseCode(503)
            return b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
        request.setHeader(b"etag", b'"abc"')
        return b""


@pytest.fixture
def flaky():
    from twisted.internet import reactor
    from twisted.web.server import Site

    made = []

    def serve(**kwargs):
        resource = _Flaky(**kwargs)
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
        made.append(port)
        client = S3Client(
            reactor, f"http://127.0.0.1:{port.getHost().port}", "b", Credentials("k", "s"), timeout=0.5, attempts=3
        )
        return resource, client

    yield serve
    for port in made:
        port.stopListening()


@pytest_twisted.ensureDeferred
async def test_client_retries_slow_down_and_signs_each_attempt_afresh(flaky):
    resource, client = flaky(failures=2)
    assert await client.put("k", b"data") == "abc"
    assert len(resource.seen) == 3 and all(a.startswith(b"AWS4-HMAC-SHA256 ") for a in resource.seen)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_client_gives_up_on_a_server_that_never_answers(flaky):
    resource, client = flaky(hang=True)
    with pytest.raises(StorageUnavailable, match="did not answer"):
        await client.head("k")
    assert len(resource.seen) == 3 and client.availability.down
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_request_its_caller_cancels_is_not_retried(flaky):
    """A client that went away is no outage of S3's: no retry, nothing noted."""
    from twisted.internet import reactor
    from twisted.internet.defer import CancelledError
    from twisted.internet.task import deferLater

    resource, client = flaky(hang=True)
    client.timeout = 30
    d = Deferred.fromCoroutine(client.head("k"))
    reactor.callLater(0.2, d.cancel)
    with pytest.raises(CancelledError):
        await d
    await deferLater(reactor, 0.5, lambda: None)  # time for retries, were there any
    assert len(resource.seen) == 1 and not client.availability.down
    await client.close()


# -------------------------------------------------------------- configuration


def test_copy_ranges_never_leave_a_short_part_in_the_middle():
    assert _copy_ranges(10, 4 << 20) == [(0, 9)]
    assert _copy_ranges(13 * MiB, 5 * MiB) == [(0, 5 * MiB - 1), (5 * MiB, 13 * MiB - 1)]
    assert _copy_ranges(15 * MiB, 5 * MiB) == [(0, 5 * MiB - 1), (5 * MiB, 10 * MiB - 1), (10 * MiB, 15 * MiB - 1)]


def test_config_file_environment_and_options(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text(
        "storage:\n  s3:\n    bucket: from-file\n    endpoint: http://127.0.0.1:9\n"
        "    access_key: AK\n    secret_key: SK\n    prefix: /reg/\n    part_size: 16MiB\n"
    )
    for name in list(os.environ):
        if name.startswith(("OCIREGISTRY_S3_", "AWS_")):
            monkeypatch.delenv(name)
    config = Config.load(str(path))
    assert config.storage == S3Settings(
        bucket="from-file",
        endpoint="http://127.0.0.1:9",
        access_key="AK",
        secret_key="SK",
        prefix="reg",
        part_size=16 << 20,
    )
    assert "SK" not in repr(config.storage)
    monkeypatch.setenv("OCIREGISTRY_S3_BUCKET", "from-env")
    monkeypatch.setenv("OCIREGISTRY_S3_REDIRECT", "true")
    config = Config.load(str(path))
    assert (config.storage.bucket, config.storage.redirect, config.storage.secret_key) == ("from-env", True, "SK")
    config = Config.load(str(path), storage_options={"bucket": "from-option", "region": None})
    assert config.storage.bucket == "from-option" and config.storage.region == "us-east-1"
    # Worker processes get the config through to_dict.
    assert Config.from_dict(config.to_dict()) == config


def test_config_from_environment_only(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("OCIREGISTRY_S3_", "AWS_")):
            monkeypatch.delenv(name)
    assert Config.load().storage is None
    monkeypatch.setenv("OCIREGISTRY_S3_BUCKET", "b")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SK")
    storage = Config.load().storage
    assert (storage.bucket, storage.access_key, storage.secret_key) == ("b", "AK", "SK")
    assert storage.endpoint_url == "https://s3.us-east-1.amazonaws.com"


@pytest.mark.parametrize(
    "storage, message",
    [
        ({"s3": {}}, "needs a bucket"),
        ({"s3": {"bucket": "b"}}, "needs access_key and secret_key"),
        ({"s3": {"bucket": "b", "colour": 1}}, "unknown s3 keys: colour"),
        ({"s3": {"bucket": "b", "access_key": "a", "secret_key": "s", "part_size": "1MiB"}}, "part_size"),
        ({"s3": {"bucket": "b", "access_key": "a", "secret_key": "s", "redirect_expiry": "8d"}}, "redirect_expiry"),
        ({"gcs": {}}, "unknown storage"),
        ({"filesystem": {"root": "/x"}}, "takes no options"),
    ],
)
def test_config_errors(storage, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config.from_dict({"storage": storage})


def test_filesystem_stays_the_default():
    assert Config.from_dict({}).storage is None
    assert Config.from_dict({"storage": {"filesystem": {}}}).storage is None


def test_twistd_options_reach_the_config(monkeypatch, tmp_path):
    import importlib

    for name in list(os.environ):
        if name.startswith(("OCIREGISTRY_S3_", "AWS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OCIREGISTRY_S3_ACCESS_KEY", "AK")
    monkeypatch.setenv("OCIREGISTRY_S3_SECRET_KEY", "SK")
    plugin = importlib.import_module("twisted.plugins.ociregistry_plugin")
    options = plugin.Options()
    options.parseOptions(
        [
            "--s3-bucket",
            "b",
            "--s3-endpoint",
            "http://127.0.0.1:9",
            "--s3-prefix",
            "p",
            "--s3-redirect",
            "--data-dir",
            str(tmp_path),
        ]
    )
    made = {}

    def make_service(config, reactor):
        made["config"] = config
        return MultiService()

    monkeypatch.setattr("oci_registry.service.make_service", make_service)
    plugin.serviceMaker.makeService(options)
    storage = made["config"].storage
    assert (storage.bucket, storage.endpoint, storage.prefix, storage.redirect, storage.secret_key) == (
        "b",
        "http://127.0.0.1:9",
        "p",
        True,
        "SK",
    )
