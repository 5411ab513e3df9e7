"""
SIGTERM while a client is pushing: the graceful drain.  The listener
closes at once (a new connection is refused), ``/readyz`` answers 503 on a
connection kept alive from before, the upload in flight completes (201)
and then the process exits 0, with ``--workers`` too, without a
traceback.  A request still running after ``shutdown_timeout`` is cut,
with a log line that says so.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import threading
import time

import pytest

from registry_process import RegistryProcess
from test_startup import children_of, wait_for

pytestmark = pytest.mark.ociregistry_only

BLOB_SIZE = 30 << 20
BLOCK = 1 << 20


def start_upload(port: int, name: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", f"/v2/{name}/blobs/uploads/")
        response = connection.getresponse()
        response.read()
        assert response.status == 202
        return response.getheader("Location")
    finally:
        connection.close()


class SlowPut:
    """
    A monolithic ``PUT`` of a whole blob to an upload, sent a block at a
    time: the first block at once, the rest only once `go` is set, at a
    pace; ``status`` is what it was answered (None: no answer).
    """

    def __init__(self, port: int, location: str, data: bytes, pause: float = 0.05, stop_after: int | None = None):
        self.port = port
        self.location = location
        self.data = data
        self.pause = pause
        self.stop_after = stop_after  # blocks sent before it stalls for good
        self.go = threading.Event()
        self.first_block_sent = threading.Event()
        self.status: int | None = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SlowPut:
        self._thread.start()
        assert self.first_block_sent.wait(10)
        return self

    def join(self, timeout: float = 60) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        digest = "sha256:" + hashlib.sha256(self.data).hexdigest()
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        try:
            separator = "&" if "?" in self.location else "?"
            sock.sendall(
                f"PUT {self.location}{separator}digest={digest} HTTP/1.1\r\nHost: registry\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {len(self.data)}\r\n\r\n".encode()
            )
            blocks = [self.data[i : i + BLOCK] for i in range(0, len(self.data), BLOCK)]
            sock.sendall(blocks[0])
            self.first_block_sent.set()
            self.go.wait(30)
            for number, block in enumerate(blocks[1:], 1):
                if self.stop_after is not None and number >= self.stop_after:
                    time.sleep(30)  # stalls: the registry cuts it before this ends
                    break
                sock.sendall(block)
                time.sleep(self.pause)
            answer = b""
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
            if answer.startswith(b"HTTP/1.1 "):
                self.status = int(answer.split()[1])
        except OSError as e:
            self.error = e
        finally:
            sock.close()


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def kept_alive(port: int) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/v2/")
    response = connection.getresponse()
    response.read()
    assert response.status == 200 and response.getheader("Connection") != "close"
    return connection


def registry_for(tmp_path, workers: int, timeout: str) -> RegistryProcess:
    return RegistryProcess(
        str(tmp_path / "data"), extra_args=["--workers", str(workers), "--shutdown-timeout", timeout]
    ).start()


def test_sigterm_lets_an_upload_in_flight_finish(tmp_path):
    registry = registry_for(tmp_path, 1, "30s")
    process = registry.process
    data = os.urandom(BLOB_SIZE)
    upload = SlowPut(registry.port, start_upload(registry.port, "drain/app"), data).start()
    idle = kept_alive(registry.port)
    time.sleep(0.3)  # the PUT's headers have been read: it is in flight
    process.send_signal(signal.SIGTERM)
    assert wait_for(lambda: refuses_connections(registry.port)), registry.log()
    # A health check on a connection from before: not ready, and that connection closes after.
    idle.request("GET", "/readyz")
    response = idle.getresponse()
    assert response.status == 503 and response.getheader("Connection") == "close"
    assert json.loads(response.read()) == {"status": "draining", "reason": "shutting down"}
    assert process.poll() is None  # still draining
    upload.go.set()
    upload.join()
    assert upload.status == 201, (upload.error, registry.log())
    assert process.wait(30) == 0, registry.log()
    log = registry.log()
    assert "draining: waiting up to 30s for 1 request(s) in flight" in log, log
    assert "drained: every request in flight finished" in log and "Traceback" not in log, log
    # The blob is there: served by a registry started again on the same data.
    again = RegistryProcess(registry.data_dir).start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", again.port, timeout=10)
        connection.request("HEAD", "/v2/drain/app/blobs/sha256:" + hashlib.sha256(data).hexdigest())
        assert connection.getresponse().status == 200
    finally:
        again.stop()


def test_sigterm_with_workers_lets_uploads_in_flight_finish(tmp_path):
    registry = registry_for(tmp_path, 2, "30s")
    process = registry.process
    assert wait_for(lambda: len(children_of(process.pid)) == 1)
    assert wait_for(lambda: "worker 1 serving" in registry.log())
    # Several uploads, so that the kernel hands some to each process.
    uploads = []
    for n in range(4):
        location = start_upload(registry.port, f"drain/w{n}")
        uploads.append(SlowPut(registry.port, location, os.urandom(BLOB_SIZE // 4)).start())
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    assert wait_for(lambda: refuses_connections(registry.port)), registry.log()
    for upload in uploads:
        upload.go.set()
    for upload in uploads:
        upload.join()
    assert [upload.status for upload in uploads] == [201] * 4, ([u.error for u in uploads], registry.log())
    assert process.wait(30) == 0, registry.log()
    log = registry.log()
    assert "Traceback" not in log and "ReactorNotRunning" not in log, log


@pytest.mark.parametrize("workers", [1, 2])
def test_a_request_still_running_after_the_timeout_is_cut(tmp_path, workers):
    registry = registry_for(tmp_path, workers, "1s")
    process = registry.process
    if workers > 1:
        assert wait_for(lambda: "worker 1 serving" in registry.log())
    upload = SlowPut(registry.port, start_upload(registry.port, "drain/stuck"), os.urandom(8 * BLOCK), stop_after=2)
    upload.start()
    upload.go.set()
    time.sleep(0.5)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, registry.log()
    assert time.monotonic() - started < 15  # the timeout, not the client, ended it
    upload.join()
    assert upload.status is None  # cut: no answer
    log = registry.log()
    assert "shutdown_timeout (1s) reached: cutting 1 request(s) still in flight" in log, log
    (line,) = [line for line in log.splitlines() if "cut at shutdown" in line]
    assert "oci_registry.access#warn]" in line and '"PUT /v2/drain/stuck/blobs/uploads/' in line, line
    assert "Traceback" not in log, log


def test_an_upload_finished_during_the_drain_has_its_notification_recorded(tmp_path):
    """Notifications stop after the drain: the event of a push that completes while draining is not lost."""
    from notification_helpers import config_file, pending_events
    from receiver_process import ReceiverProcess

    receiver = ReceiverProcess(str(tmp_path / "receiver"))  # never started: the events wait in the outbox
    try:
        data = str(tmp_path / "data")
        config = config_file(tmp_path, [{"name": "test", "url": receiver.url}])
        registry = RegistryProcess(data, config=config, extra_args=["--shutdown-timeout", "30s"]).start()
        upload = SlowPut(registry.port, start_upload(registry.port, "drain/notified"), os.urandom(4 * BLOCK))
        upload.start()
        time.sleep(0.3)
        registry.process.send_signal(signal.SIGTERM)
        assert wait_for(lambda: refuses_connections(registry.port)), registry.log()
        upload.go.set()
        upload.join()
        assert upload.status == 201, registry.log()
        assert registry.process.wait(30) == 0, registry.log()
        assert pending_events(data) == 1, registry.log()
    finally:
        receiver.cleanup()
