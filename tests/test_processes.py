"""
State lives in storage, not in a process: two registry processes on one data
directory serve one registry, a restart loses nothing, an upload resumes in
another process, and a large upload is streamed, not held in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from image_builder import (
    append_through_both_at_once,
    finish_racing_an_append,
    pull_racing_a_delete,
    push_same_blob_and_tag_through_both,
)
from registry_process import RegistryProcess, registry_environment

pytestmark = pytest.mark.ociregistry_only


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def pair(tmp_path):
    data = str(tmp_path / "data")
    a = RegistryProcess(data).start()
    b = RegistryProcess(data).start()
    yield a, b
    a.stop()
    b.stop()


def absolute(registry, location: str) -> str:
    return location if location.startswith("http") else registry.url + location


async def push_manifest(registry, name, tag, layers):
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    for blob in [config, *layers]:
        r = await treq.post(f"{registry.url}/v2/{name}/blobs/uploads/?digest={sha256(blob)}", data=blob)
        assert r.code == 201, await r.text()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(b), "size": len(b)}
                for b in layers
            ],
        }
    ).encode()
    r = await treq.put(
        f"{registry.url}/v2/{name}/manifests/{tag}",
        data=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.code == 201, await r.text()
    return manifest


@pytest_twisted.ensureDeferred
async def test_chunked_upload_alternating_between_processes(pair):
    a, b = pair
    chunks = [os.urandom(n) for n in (700_000, 1, 2_000_000, 123_457)]
    blob = b"".join(chunks)
    r = await treq.post(f"{a.url}/v2/shared/app/blobs/uploads/")
    assert r.code == 202
    location = r.headers.getRawHeaders("Location")[0]
    offset = 0
    for i, chunk in enumerate(chunks):
        target = (a, b)[i % 2]
        r = await treq.patch(
            absolute(target, location),
            data=chunk,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
            },
        )
        assert r.code == 202, await r.text()
        offset += len(chunk)
        assert r.headers.getRawHeaders("Range") == [f"0-{offset - 1}"]
        location = r.headers.getRawHeaders("Location")[0]
    # B never hashed chunk 0: it must hash the partial data from storage.
    r = await treq.put(absolute(b, location) + f"?digest={sha256(blob)}")
    assert r.code == 201, await r.text()
    for registry in (a, b):
        r = await treq.get(f"{registry.url}/v2/shared/app/blobs/{sha256(blob)}")
        assert await r.content() == blob


@pytest_twisted.ensureDeferred
async def test_tag_pushed_through_one_is_pulled_through_other(pair):
    a, b = pair
    manifest = await push_manifest(a, "shared/tags", "v1", [b"layer one"])
    r = await treq.get(f"{b.url}/v2/shared/tags/manifests/v1")
    assert r.code == 200 and await r.content() == manifest
    manifest2 = await push_manifest(b, "shared/tags", "v1", [b"layer two"])
    r = await treq.get(f"{a.url}/v2/shared/tags/manifests/v1")
    assert await r.content() == manifest2
    r = await treq.get(f"{a.url}/v2/shared/tags/tags/list")
    assert json.loads(await r.content())["tags"] == ["v1"]


@pytest_twisted.ensureDeferred
async def test_upload_survives_restart(fresh_registry):
    registry = fresh_registry
    first, second = os.urandom(500_000), os.urandom(300_000)
    r = await treq.post(f"{registry.url}/v2/restart/app/blobs/uploads/")
    location = r.headers.getRawHeaders("Location")[0]
    r = await treq.patch(absolute(registry, location), data=first, headers={"Content-Range": f"0-{len(first) - 1}"})
    assert r.code == 202
    registry.stop()
    registry.start()
    r = await treq.get(absolute(registry, location))
    assert r.code == 204 and r.headers.getRawHeaders("Range") == [f"0-{len(first) - 1}"]
    r = await treq.put(
        absolute(registry, location) + f"?digest={sha256(first + second)}",
        data=second,
        headers={"Content-Range": f"{len(first)}-{len(first) + len(second) - 1}"},
    )
    assert r.code == 201, await r.text()
    r = await treq.get(f"{registry.url}/v2/restart/app/blobs/{sha256(first + second)}")
    assert await r.content() == first + second


@pytest_twisted.ensureDeferred
async def test_same_blob_pushed_concurrently(pair):
    a, b = pair
    blob = os.urandom(3_000_000)
    results = await gatherResults(
        [
            treq.post(f"{registry.url}/v2/race/{i}/blobs/uploads/?digest={sha256(blob)}", data=blob)
            for i in range(6)
            for registry in (a, b)
        ]
    )
    assert [r.code for r in results] == [201] * 12
    for i in range(6):
        r = await treq.get(f"{a.url}/v2/race/{i}/blobs/{sha256(blob)}")
        assert await r.content() == blob


@implementer(IBodyProducer)
class _PatternBody:
    """A large request body produced on the fly, so the test itself stays small."""

    def __init__(self, size: int, block: bytes):
        self.length = size
        self._block = block
        self._hasher = hashlib.sha256()
        self._paused = None
        self._stopped = False

    @property
    def digest(self) -> str:
        return "sha256:" + self._hasher.hexdigest()

    def startProducing(self, consumer):
        from twisted.internet.defer import Deferred

        async def produce():
            sent = 0
            while sent < self.length and not self._stopped:
                block = self._block[: self.length - sent]
                self._hasher.update(block)
                consumer.write(block)
                sent += len(block)
                # let the reactor flush, and honour pauses
                while self._paused is not None:
                    await self._paused
                if sent % (8 << 20) < len(block):
                    d = Deferred()
                    reactor.callLater(0, d.callback, None)
                    await d

        return Deferred.fromCoroutine(produce())

    def pauseProducing(self):
        from twisted.internet.defer import Deferred

        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self):
        if self._paused is not None:
            d, self._paused = self._paused, None
            d.callback(None)

    def stopProducing(self):
        self._stopped = True
        self.resumeProducing()


def test_one_upload_appended_through_both_at_once_never_publishes_wrong_bytes(pair):
    """
    Both processes append their bytes to the upload's file (appends only grow
    it), so neither holds a running hash of what is stored: finishing on A
    re-hashes from storage and refuses A's digest.
    """
    append_through_both_at_once(*pair, "processes/race")


def test_an_upload_finished_while_another_process_appends_to_it(pair):
    """
    B holds the upload's file open for an append: A's finishing PUT is
    refused rather than publish a file that B can still write into.
    """
    mine, finished, served = finish_racing_an_append(*pair, "processes/finish-race")
    assert finished.status == 400 and b"BLOB_UPLOAD_INVALID" in finished.body, (finished.status, finished.body)
    assert served.status == 404


def test_same_blob_and_tag_pushed_through_both_at_once(pair, tmp_path):
    """One blob, and the tag on one of the two manifests, whichever process is asked."""
    push_same_blob_and_tag_through_both(*pair, "processes/tag-race", tmp_path / "layout", 3_000_000)


def test_pull_racing_a_delete_and_garbage_collection(pair):
    """A pull through A outlives the layer's deletion through B and ``ociregistry gc`` removing its data."""
    a, _ = pair

    def collect():
        result = subprocess.run(
            [sys.executable, "-m", "oci_registry.cli", "gc", "--data-dir", a.data_dir, "--grace", "0s", "--json"],
            env=registry_environment(),
            capture_output=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return {blob["digest"] for blob in json.loads(result.stdout)["blobs_removed"]}

    pull_racing_a_delete(*pair, "processes/deleted", collect)


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest_twisted.ensureDeferred
async def test_large_upload_is_streamed_not_buffered(fresh_registry):
    """Pushing 1 GiB raises the registry's peak memory by a few tens of MB at most."""
    registry = fresh_registry
    await treq.get(registry.url + "/v2/")
    before = peak_rss_kib(registry.process.pid)
    size = 1 << 30
    body = _PatternBody(size, os.urandom(1 << 20))
    r = await treq.post(f"{registry.url}/v2/big/blob/blobs/uploads/")
    location = absolute(registry, r.headers.getRawHeaders("Location")[0])
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    r = await treq.request(
        "PATCH", location, data=body, agent=agent, headers={"Content-Type": "application/octet-stream"}
    )
    assert r.code == 202, await r.text()
    location = absolute(registry, r.headers.getRawHeaders("Location")[0])
    r = await treq.put(f"{location}?digest={body.digest}")
    assert r.code == 201, await r.text()
    grown_mib = (peak_rss_kib(registry.process.pid) - before) / 1024
    assert grown_mib < 48, f"peak RSS grew by {grown_mib:.0f} MiB while receiving 1 GiB"
    r = await treq.head(f"{registry.url}/v2/big/blob/blobs/{body.digest}")
    assert r.headers.getRawHeaders("Content-Length") == [str(size)]
    stored = os.path.join(registry.data_dir, "blobs", "sha256", body.digest[7:9], body.digest[7:], "data")
    assert os.path.getsize(stored) == size
    os.unlink(stored)  # a gigabyte is too much to leave behind in a temp dir


def test_large_download_to_a_slow_reader(fresh_registry):
    """A blob sent to a client slower than the registry arrives whole (the socket fills, sending resumes)."""
    import http.client
    import socket
    import time

    registry = fresh_registry
    blob = os.urandom(24 << 20)
    c = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=30)
    c.request("POST", f"/v2/slow/reader/blobs/uploads/?digest={sha256(blob)}", body=blob)
    assert c.getresponse().status == 201
    c.close()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.connect(("127.0.0.1", registry.port))
    sock.sendall(f"GET /v2/slow/reader/blobs/{sha256(blob)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    received = bytearray()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        chunk = sock.recv(256 << 10)
        if not chunk:
            break
        received += chunk
        head, sep, body = bytes(received).partition(b"\r\n\r\n")
        if sep and len(body) >= len(blob):
            break
        if len(received) < (4 << 20):
            time.sleep(0.01)  # slow at first, so the registry's socket fills up
    sock.close()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert b"200 OK" in head.split(b"\r\n")[0]
    assert body == blob


def test_client_leaving_mid_download(fresh_registry):
    """A client that hangs up during a large download costs nothing: no error, and the registry serves on."""
    import http.client
    import socket

    registry = fresh_registry
    blob = os.urandom(32 << 20)
    c = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=30)
    c.request("POST", f"/v2/leaving/blobs/uploads/?digest={sha256(blob)}", body=blob)
    assert c.getresponse().status == 201
    c.close()
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", registry.port))
        sock.sendall(f"GET /v2/leaving/blobs/{sha256(blob)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.recv(1 << 20)
        sock.close()
    c = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=30)
    c.request("GET", f"/v2/leaving/blobs/{sha256(blob)}")
    assert c.getresponse().read() == blob
    c.close()
    assert "Traceback" not in registry.log()
