"""
Storage that fails: while S3 (the real SeaweedFS, reached through a relay
the tests can cut) or the file system cannot be used, every request gets
503 UNAVAILABLE with the spec's error body, at once after the first, and
the cause is logged once per outage (one line when it starts, one when it
ends); a missing bucket is never "not found".  At start-up a bucket that
does not exist or refuses the credentials stops the registry with one
line; an S3 merely unreachable does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from registry_process import RegistryProcess, free_port
from s3_server import BUCKET, s3_server  # noqa: F401  (the session fixture)
from test_startup import (  # noqa: F401  (nobody: a fixture)
    CLI,
    _answers,
    assert_fails_at_once,
    nobody,
    run,
    start_dropping_privileges,
    twistd,
    wait_for,
)

pytestmark = pytest.mark.ociregistry_only

UNAVAILABLE = "#error] storage unavailable:"
AVAILABLE = "#info] storage available again:"


class Relay:
    """
    A TCP relay on 127.0.0.1 to a real server, that can be cut (its port
    refuses connections and the open ones are dropped) and restored on the
    same port: an outage of that server, as its clients see it.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Relay:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._open = self._open, set()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.fixture
def relay(s3_server):  # noqa: F811
    made = Relay(s3_server.port)
    yield made
    made.cut()


def request(method: str, url: str, body: bytes | None = None, headers=None, timeout: float = 30):
    """(status, body, seconds taken)."""
    started = time.monotonic()
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read(), time.monotonic() - started
    except urllib.error.HTTPError as e:
        return e.code, e.read(), time.monotonic() - started


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_image(url: str, name: str, tag: str) -> tuple[str, bytes]:
    """Push a one-layer image; its layer's digest and the manifest."""
    config, layer = b"{}", os.urandom(2000)
    for blob in (config, layer):
        status, body, _ = request("POST", f"{url}/v2/{name}/blobs/uploads/?digest={sha256(blob)}", blob)
        assert status == 201, body
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": 2},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer), "size": len(layer)}
            ],
        }
    ).encode()
    status, body, _ = request(
        "PUT",
        f"{url}/v2/{name}/manifests/{tag}",
        manifest,
        {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert status == 201, body
    return sha256(layer), manifest


def every_kind_of_request(url: str, name: str, layer: str, manifest: bytes):
    """A read and a write of each kind: (method, url, body, headers)."""
    manifest_type = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    return [
        ("GET", f"{url}/v2/{name}/manifests/v1", None, {}),
        ("HEAD", f"{url}/v2/{name}/manifests/v1", None, {}),
        ("GET", f"{url}/v2/{name}/blobs/{layer}", None, {}),
        ("HEAD", f"{url}/v2/{name}/blobs/{layer}", None, {}),
        ("GET", f"{url}/v2/{name}/tags/list", None, {}),
        ("GET", f"{url}/v2/_catalog", None, {}),
        ("POST", f"{url}/v2/{name}/blobs/uploads/", b"", {}),
        ("POST", f"{url}/v2/{name}/blobs/uploads/?digest={sha256(b'new')}", b"new", {}),
        ("PUT", f"{url}/v2/{name}/manifests/v2", manifest, manifest_type),
        ("DELETE", f"{url}/v2/{name}/manifests/{sha256(manifest)}", None, {}),
    ]


def assert_unavailable(status: int, body: bytes, what) -> None:
    assert status == 503, (what, status, body)
    if body:  # HEAD answers carry none
        assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE", (what, body)


def assert_serves_until_recovered(log, url: str, status: int) -> None:
    """Once the storage is back, requests are served; the outage ends after some seconds without a failure."""
    deadline = time.monotonic() + 20
    while AVAILABLE not in log():
        got, answer, _ = request("GET", url)
        assert got == status, (got, answer)
        assert time.monotonic() < deadline, log()
        time.sleep(0.5)


def s3_registry(s3_server, tmp_path, settings, **config) -> RegistryProcess:  # noqa: F811
    return RegistryProcess(str(tmp_path / "unused"), config=s3_server.config_file(str(tmp_path), settings, **config))


def test_s3_outage_is_503_logged_once_and_recovers(s3_server, relay, tmp_path):  # noqa: F811
    relay.start()
    registry = s3_registry(s3_server, tmp_path, s3_server.settings(endpoint=relay.url)).start()
    try:
        layer, manifest = push_image(registry.url, "outage/app", "v1")
        relay.cut()
        took = []
        for _ in range(2):  # the first round meets the outage, the second finds it known
            for method, url, body, headers in every_kind_of_request(registry.url, "outage/app", layer, manifest):
                status, answer, seconds = request(method, url, body, headers)
                assert_unavailable(status, answer, (method, url))
                took.append(seconds)
        # The first request finds the outage (retries for at most 10 s); the others fail at once.
        assert took[0] < 15 and max(took[1:]) < 3, took
        log = registry.log()
        assert log.count(UNAVAILABLE) == 1, log
        assert f"{UNAVAILABLE} s3://{BUCKET}/" in log and "cannot reach S3 at " in log
        assert "Traceback" not in log and '" 500 ' not in log, log

        relay.start()
        assert_serves_until_recovered(registry.log, f"{registry.url}/v2/outage/app/manifests/v1", 200)
        log = registry.log()
        assert log.count(AVAILABLE) == 1 and log.count(UNAVAILABLE) == 1, log
        assert re.search(r"storage available again: .* \(after [0-9.]+s; \d+ operations failed\)", log), log
    finally:
        registry.stop()


def test_s3_unreachable_at_start_up_starts_and_answers_503(s3_server, relay, tmp_path):  # noqa: F811
    """An orchestrator sees a process that is up; requests get 503 until S3 answers."""
    registry = s3_registry(s3_server, tmp_path, s3_server.settings(endpoint=relay.url), gc_interval="1h").start()
    try:
        status, answer, _ = request("GET", f"{registry.url}/v2/late/app/manifests/v1")
        assert_unavailable(status, answer, "GET manifest")
        assert wait_for(lambda: "scheduled garbage collection not run: storage unavailable" in registry.log())
        log = registry.log()
        assert log.count(UNAVAILABLE) == 1 and "Traceback" not in log, log
        relay.start()
        assert_serves_until_recovered(registry.log, f"{registry.url}/v2/late/app/manifests/v1", 404)
        assert registry.log().count(AVAILABLE) == 1
    finally:
        registry.stop()


def processes_with(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (a worker keeps its parent's)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("workers", [1, 2])
def test_s3_missing_bucket_refuses_to_start(s3_server, tmp_path, workers):  # noqa: F811
    bucket = f"ociregistry-missing-{uuid.uuid4().hex[:8]}"
    config = s3_server.config_file(str(tmp_path), s3_server.settings(bucket=bucket))
    port = free_port()
    status, output = twistd(
        tmp_path, "-c", config, "--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", str(workers), timeout=30
    )
    assert status == 2, output
    lines = [
        line
        for line in output.splitlines()
        if f"bucket {bucket!r} does not exist at S3 at {s3_server.endpoint}" in line
    ]
    assert len(lines) == 2 and "critical" in lines[-1], output  # the outage, and why the registry stops
    assert "Traceback" not in output
    # No worker outlives its parent.
    assert wait_for(lambda: not processes_with(bucket)), processes_with(bucket)


def test_s3_wrong_secret_refuses_to_start(s3_server, tmp_path):  # noqa: F811
    config = s3_server.config_file(str(tmp_path), s3_server.settings(secret_key="not-the-secret"))
    status, output = twistd(tmp_path, "-c", config, "--listen", f"tcp:{free_port()}:interface=127.0.0.1")
    assert status == 2, output
    assert re.search(
        rf"#critical\] S3 at {s3_server.endpoint} refuses access to bucket '{BUCKET}': SignatureDoesNotMatch", output
    ), output
    assert "Traceback" not in output


def test_bucket_deleted_while_serving_is_503_not_404(s3_server, tmp_path):  # noqa: F811
    bucket = f"ociregistry-gone-{uuid.uuid4().hex[:8]}"
    status, body = s3_server.request("PUT", bucket=bucket)
    assert status == 200, body
    registry = s3_registry(s3_server, tmp_path, s3_server.settings(bucket=bucket, prefix="")).start()
    try:
        layer, manifest = push_image(registry.url, "gone/app", "v1")
        status, listing = s3_server.request("GET", bucket=bucket, query="list-type=2")
        for key in re.findall(rb"<Key>([^<]+)</Key>", listing):
            s3_server.request("DELETE", key.decode(), bucket=bucket)
        status, body = s3_server.request("DELETE", bucket=bucket)
        assert status in (200, 204), body
        assert wait_for(lambda: s3_server.request("GET", bucket=bucket, query="list-type=2")[0] == 404)
        for method, url, body, headers in every_kind_of_request(registry.url, "gone/app", layer, manifest)[:6]:
            status, answer, _ = request(method, url, body, headers)
            assert_unavailable(status, answer, (method, url))
        log = registry.log()
        assert log.count(UNAVAILABLE) == 1 and f"bucket {bucket!r} does not exist" in log, log
    finally:
        registry.stop()


@pytest.mark.parametrize("command", ["gc", "du"])
def test_maintenance_commands_when_s3_is_unavailable(s3_server, relay, tmp_path, command):  # noqa: F811
    """One line, and status 1 for an outage, 2 for a bucket that does not exist."""
    config = s3_server.config_file(str(tmp_path), s3_server.settings(endpoint=relay.url))
    status, output = run([*CLI, command, "-c", config], tmp_path)
    assert_fails_at_once(status, output, 1, rf"^ociregistry: storage unavailable: cannot reach S3 at {relay.url}: ")
    bucket = f"ociregistry-missing-{uuid.uuid4().hex[:8]}"
    config = s3_server.config_file(str(tmp_path), s3_server.settings(bucket=bucket))
    status, output = run([*CLI, command, "-c", config], tmp_path)
    assert_fails_at_once(status, output, 2, rf"^ociregistry: storage unavailable: bucket '{bucket}' does not exist at ")


# ----------------------------------------------------------------- filesystem


def test_filesystem_refusing_reads_is_503_logged_once(nobody, tmp_path):  # noqa: F811
    """Files the registry's user cannot read (a permissions mistake): 503, one line, until it is fixed."""
    user, top, _ = nobody
    os.chown(top, user.pw_uid, user.pw_gid)
    data = os.path.join(top, "data")
    process = start_dropping_privileges(nobody, data)
    url = f"http://127.0.0.1:{process.port}"
    try:
        assert wait_for(lambda: _answers(url + "/v2/") or process.poll() is not None, 20)
        layer, manifest = push_image(url, "perm/app", "v1")
        repository = os.path.join(data, "repositories", "perm")
        os.chmod(repository, 0)
        try:
            for method, target, body, headers in every_kind_of_request(url, "perm/app", layer, manifest)[:5]:
                status, answer, _ = request(method, target, body, headers)
                assert_unavailable(status, answer, (method, target))
        finally:
            os.chmod(repository, 0o755)
        deadline = time.monotonic() + 20
        while True:  # until the outage ends: some seconds without a failure
            status, answer, _ = request("GET", f"{url}/v2/perm/app/manifests/v1")
            assert status == 200 and answer == manifest
            if time.monotonic() > deadline or AVAILABLE in _log_so_far(process):
                break
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    log = _log_so_far(process)
    assert log.count(UNAVAILABLE) == 1 and "Permission denied" in log, log
    assert log.count(AVAILABLE) == 1 and "Traceback" not in log, log
    shutil.rmtree(data, ignore_errors=True)


def _log_so_far(process) -> str:
    """What the process printed until now (read without waiting for its end)."""
    import fcntl

    if not hasattr(process, "seen"):
        process.seen = []
        fcntl.fcntl(process.stdout, fcntl.F_SETFL, fcntl.fcntl(process.stdout, fcntl.F_GETFL) | os.O_NONBLOCK)
    while chunk := process.stdout.read():
        process.seen.append(chunk.decode(errors="replace"))
    return "".join(process.seen)
