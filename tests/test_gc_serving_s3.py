"""
A scheduled garbage collection on S3 gives way to the requests the same
process serves: while a request waits for its answer, the collection sends
next to no storage requests of its own, so that the request's S3 round trip
and its turns of the reactor are not shared with the collection's.

The collection here reads the tag links of a repository with many tags (its
first walk: one GET per tag, back to back); a blob HEAD is held at a
counting proxy (`counting_proxy`) between the registry and SeaweedFS, and
what the collection sends meanwhile is counted (the HEAD's read of the
blob's link is held: a GET of it, or a HEAD where the driver asks so).  Without giving way, it
went on at full speed (hundreds of GETs a second); giving way, it sends at
most one request each `oci_registry.gc.BUSY_WAIT` seconds.

It gives way before each S3 request, not only between its steps (a step
of the sweep is a dozen requests): in the process, a collection told that
a request waits, in the middle of a step, sends nothing more until it is
told no request waits; and the S3 client holds back exactly the requests
made for background work (`oci_registry.storage.priority`).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from counting_proxy import CountingProxy
from image_builder import http_request
from oci_registry import gc, paths
from oci_registry.gc import BUSY_WAIT, GCOptions, collect
from oci_registry.registry import Registry
from oci_registry.storage import priority
from oci_registry.storage.s3 import S3Driver
from registry_process import RegistryProcess
from s3_server import s3_server  # noqa: F401  (the session fixture)
from test_gc import LATER, push_blob, push_image

pytestmark = pytest.mark.ociregistry_only

TAGS = 3000  # tag links the collection reads one after the other
HELD = 1.0  # seconds the blob HEAD is held


def _populate(s3, prefix: str) -> str:
    """The tags, and a blob linked from another repository; the blob's digest."""
    data = b"held blob"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    hex_ = digest.split(":", 1)[1]
    files = [
        (f"blobs/sha256/{hex_[:2]}/{hex_}/data", data),
        (f"repositories/gives/way/_layers/sha256/{hex_}/link", digest.encode()),
    ]
    target = "sha256:" + "0" * 64
    files += [(f"repositories/gc/tags/_manifests/tags/t{i}/current/link", target.encode()) for i in range(TAGS)]

    def put(item):
        status, body = s3.request("PUT", f"{prefix}/{item[0]}", item[1])
        assert status == 200, (status, body)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, files))
    return digest


def _collection(seen) -> list:
    return [r for r in seen.requests if "/_manifests/tags/" in r.key]


def test_scheduled_gc_gives_way_to_a_request_waiting_on_s3(s3_server, tmp_path):  # noqa: F811
    proxy = CountingProxy(s3_server.port).start()
    registry = None
    try:
        settings = s3_server.settings(endpoint=proxy.endpoint)
        digest = _populate(s3_server, settings.prefix)
        config = s3_server.config_file(str(tmp_path), settings, gc_interval="24h")
        with proxy.counting() as seen:
            registry = RegistryProcess(str(tmp_path / "data"), config=config).start()
            deadline = time.monotonic() + 30
            while len(_collection(seen)) < 50 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(_collection(seen)) >= 50, "the collection did not start reading tags"

            link = f"/gives/way/_layers/sha256/{digest.split(':', 1)[1]}/link"
            answers = []
            with proxy.holding(lambda r: r.method in ("GET", "HEAD") and r.key.endswith(link)) as hold:
                client = threading.Thread(
                    target=lambda: answers.append(http_request("HEAD", f"{registry.url}/v2/gives/way/blobs/{digest}"))
                )
                client.start()
                assert hold.arrived.wait(10), "the blob HEAD's read of its link did not reach S3"
                before = len(seen.requests)
                time.sleep(HELD)
                during = seen.requests[before:]
            client.join(30)
            assert answers and answers[0].status == 200, answers
            read = len(_collection(seen))
        log = registry.log()
    finally:
        if registry is not None:
            registry.stop()
        proxy.stop()

    assert "garbage collection:" not in log, "the collection ended before the request was held: more tags needed"
    assert read < TAGS, "the collection read every tag while the request was held"
    # One request of the collection may be under way when the HEAD arrives, then
    # at most one each BUSY_WAIT: far from the hundreds it sends meanwhile otherwise.
    assert len(during) <= 2 + 2 * HELD / BUSY_WAIT, (len(during), during[:5])


@pytest.fixture
def proxied(s3_server):  # noqa: F811
    proxy = CountingProxy(s3_server.port).start()
    driver = S3Driver(s3_server.settings(endpoint=proxy.endpoint))
    yield driver, proxy
    driver.close()
    proxy.stop()


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await deferLater(reactor, 0.005, lambda: None)
    assert condition(), "timed out"


@pytest_twisted.ensureDeferred
async def test_the_s3_client_holds_back_only_requests_made_for_background_work(proxied):
    driver, proxy = proxied
    await driver.write_bytes("gate/file", b"content")
    opened: Deferred = Deferred()
    asked = []

    def gate():
        asked.append(True)
        return opened

    async def in_background():
        with priority.background(gate):
            return await driver.read_bytes("gate/file")

    with proxy.counting() as seen:
        reading = Deferred.fromCoroutine(in_background())
        # Started outside the background work, as a request served is: not held back.
        assert await driver.read_bytes("gate/file") == b"content"
        assert seen.total == 1 and asked == [True] and not reading.called
        assert priority.gate() is None
        opened.callback(None)
        assert await reading == b"content"
        assert seen.total == 2


@pytest_twisted.ensureDeferred
async def test_a_collection_told_a_request_waits_sends_nothing_more_within_its_step(proxied, monkeypatch):
    driver, proxy = proxied
    monkeypatch.setattr(gc, "BUSY_WAIT", 3600.0)  # it waits for as long as it is told a request waits
    registry = Registry(driver)
    await push_image(registry, "app", "v1", b"a layer that stays")
    orphan = await push_blob(registry, "app", b"an orphan")
    waiting = [False]
    quarantine = paths.blob_quarantine(orphan)

    def moving_to_quarantine(seen) -> bool:
        return seen.method == "PUT" and seen.key.endswith(quarantine)

    with proxy.counting() as seen:
        with proxy.holding(moving_to_quarantine) as hold:
            collecting = Deferred.fromCoroutine(
                collect(driver, GCOptions(), now=LATER, reactor=reactor, at_once=1, busy=lambda: waiting[0])
            )
            await _until(hold.arrived.is_set)
            # The sweep's step for the orphan is under way (its copy to quarantine
            # held at S3) when a request starts waiting.
            waiting[0] = True
            before = seen.total
        await deferLater(reactor, 0.5, lambda: None)
        during = seen.requests[before:]
        waiting[0] = False
        report = await collecting

    # Without giving way before each request, the step went on (the rest of the
    # move, the marker, the link and its quarantine: half a dozen requests).
    assert during == []
    assert [d for d, _ in report.blobs_removed] == [str(orphan)]
    assert await driver.stat(paths.blob_data(orphan)) is None
