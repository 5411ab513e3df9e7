"""
``/healthz`` and ``/readyz`` as a load balancer sees them: no credentials
asked, JSON answers, 503 with a reason while the storage cannot take a
write (a data directory made read-only, an S3 cut off) and 200 again once
it can; never an access line at info level.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess

import pytest
import pytest_twisted
import treq

from auth_helpers import start_registry, write_htpasswd
from registry_process import RegistryProcess, free_port
from s3_server import s3_server  # noqa: F401  (the session fixture)
from test_startup import nobody, wait_for  # noqa: F401  (nobody: a fixture)
from test_storage_unavailable import Relay, s3_registry

pytestmark = pytest.mark.ociregistry_only


def get(port: int, path: str, method: str = "GET", headers=None, timeout: float = 10) -> tuple[int, dict, dict]:
    """(status, headers, JSON body or {})."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(body) if body else {}
    finally:
        connection.close()


def test_health_answers_without_credentials_and_is_not_logged(tmp_path):
    write_htpasswd(tmp_path / "htpasswd", {"alice": "right"})
    registry = start_registry(tmp_path, "  htpasswd: htpasswd\n  access: []\n")
    try:
        assert get(registry.port, "/v2/")[0] == 401  # auth is on
        status, headers, body = get(registry.port, "/healthz")
        assert (status, body) == (200, {"status": "ok"})
        assert headers["content-type"] == "application/json" and headers["cache-control"] == "no-store"
        status, headers, body = get(registry.port, "/readyz")
        assert (status, body) == (200, {"status": "ready"})
        assert get(registry.port, "/readyz", "HEAD")[:1] == (200,)
        status, headers, body = get(registry.port, "/readyz", "POST")
        assert status == 405 and body["errors"][0]["code"] == "UNSUPPORTED" and headers["allow"] == "GET, HEAD"
        assert get(registry.port, "/v2/", headers={"Authorization": "Basic YWxpY2U6cmlnaHQ="})[0] == 200
        assert wait_for(lambda: '"GET /v2/ HTTP/1.1" 200' in registry.log())
        log = registry.log()
        assert "/healthz" not in log and "/readyz" not in log, log
        assert not os.path.exists(os.path.join(registry.data_dir, "_health"))  # the probe left nothing behind
    finally:
        registry.stop()


def test_health_checks_are_logged_at_debug_level(tmp_path):
    registry = RegistryProcess(str(tmp_path / "data"), extra_args=["--log-level", "debug"]).start()
    try:
        assert get(registry.port, "/readyz")[0] == 200
        assert wait_for(lambda: '"GET /readyz HTTP/1.1" 200' in registry.log())
        (line,) = [line for line in registry.log().splitlines() if "/readyz" in line]
        assert "[oci_registry.access#debug]" in line, line
    finally:
        registry.stop()


class UserRegistry:
    """
    A registry that runs as a user whose data directory can be made
    read-only under it: this user, or ``nobody`` (through ``twistd --uid``)
    when the tests run as root, whom file permissions do not hold back.
    """

    def __init__(self, tmp_path, request):
        self.port = free_port()
        if os.geteuid() != 0:
            self.top = str(tmp_path)
            self.data = str(tmp_path / "data")
            self._registry = RegistryProcess(self.data)
            self._registry.port = self.port
            self.log_path = self._registry.log_path
            return
        user, self.top, (command, env) = request.getfixturevalue("nobody")
        self.data = os.path.join(self.top, "data")
        os.makedirs(self.data)
        os.chown(self.data, user.pw_uid, user.pw_gid)
        self._registry = None
        self.log_path = os.path.join(self.top, "registry.log")
        self._command = [
            *command,
            "-n",
            "--pidfile=",
            f"--uid={user.pw_uid}",
            f"--gid={user.pw_gid}",
            "ociregistry",
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "-d",
            self.data,
        ]
        self._env = env

    def start(self) -> UserRegistry:
        if self._registry is not None:
            self._registry.start()
            self.process = self._registry.process
        else:
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    self._command, cwd=self.top, env=self._env, stdout=log, stderr=subprocess.STDOUT
                )
        assert wait_for(lambda: ready_status(self.port) == 200, 20), self.log()
        return self

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(15)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


def ready_status(port: int) -> int | None:
    try:
        return get(port, "/readyz", timeout=5)[0]
    except OSError:
        return None


def test_readyz_is_503_while_the_data_directory_cannot_be_written(tmp_path, request):
    registry = UserRegistry(tmp_path, request).start()
    try:
        os.chmod(registry.data, 0o555)
        try:
            status, _, body = get(registry.port, "/readyz")
            assert (status, body) == (
                503,
                {"status": "unavailable", "reason": "storage unavailable"},
            )
            assert get(registry.port, "/healthz")[0] == 200  # alive all the same
        finally:
            os.chmod(registry.data, 0o755)
        assert wait_for(lambda: ready_status(registry.port) == 200)
    finally:
        assert registry.stop() == 0
    log = registry.log()
    (line,) = [line for line in log.splitlines() if "not ready: " in line]
    assert "not ready: storage unavailable (" in line and "Permission denied" in line, log
    assert log.count("ready again") == 1, log


def test_readyz_is_503_while_s3_is_unreachable(s3_server, tmp_path):  # noqa: F811
    relay = Relay(s3_server.port).start()
    settings = s3_server.settings(endpoint=relay.url)
    registry = s3_registry(s3_server, tmp_path, settings).start()
    try:
        assert get(registry.port, "/readyz")[::2] == (200, {"status": "ready"})
        relay.cut()
        for _ in range(2):  # the second check may find the first probe still retrying: it has the same deadline
            status, _, body = get(registry.port, "/readyz")
            assert status == 503, body
            assert body["status"] == "unavailable", body
            assert body["reason"] in ("storage unavailable", "storage did not answer within 3s"), body
        assert get(registry.port, "/healthz")[0] == 200
        relay.start()
        assert wait_for(lambda: ready_status(registry.port) == 200, 30), registry.log()
    finally:
        relay.cut()
        registry.stop()
    status, listing = s3_server.request("GET", query=f"list-type=2&prefix={settings.prefix}/")
    assert status == 200 and b"_health/" not in listing, listing  # the probes left nothing behind
    log = registry.log()
    assert "not ready: " in log and "ready again" in log, log


@pytest_twisted.ensureDeferred
async def test_the_health_resource_mounts_on_any_site(tmp_path):
    """An application's own site (a metrics or admin one) can serve /healthz and /readyz too."""
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from oci_registry.compose import build
    from oci_registry.config import Config

    components = build(Config(data_dir=str(tmp_path / "data")), reactor)
    await components.storage.check()
    root = Resource()
    components.health.mount(root)
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{port.getHost().port}"
        for path, expected in (("/healthz", {"status": "ok"}), ("/readyz", {"status": "ready"})):
            response = await treq.get(base + path, persistent=False)
            assert response.code == 200
            assert json.loads(await response.content()) == expected
        components.health.readiness.drain()
        response = await treq.get(base + "/readyz", persistent=False)
        assert response.code == 503
        assert json.loads(await response.content()) == {"status": "draining", "reason": "shutting down"}
    finally:
        await port.stopListening()
