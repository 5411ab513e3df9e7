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
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import threading
import time

import pytest

from counting_proxy import CountingProxy
from image_builder import http_request
from oci_registry.gc import BUSY_WAIT
from registry_process import RegistryProcess
from s3_server import s3_server  # noqa: F401  (the session fixture)

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
