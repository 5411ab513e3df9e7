"""
One upstream fetch per blob across processes: the pull-through cache's
fill is claimed in shared storage (``oci_registry/proxy/claim.py``), so
that ``--workers 2`` and two replicas on one bucket fetch a cold blob once
between them, and a process that dies mid-fetch is taken over after its
lease.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import threading
import time

import pytest

from image_builder import http_request, push_blob_http, random_bytes
from proxy_helpers import ScriptedUpstream, upstream_requests
from registry_process import RegistryProcess
from s3_server import s3_server  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.ociregistry_only

CLIENTS = 8


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    process = RegistryProcess(str(tmp_path_factory.mktemp("upstream"))).start()
    yield process
    process.stop()


def _serving_pids(port: int) -> set[int]:
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True
    ).stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


def _listening_pids(port: int) -> set[int]:
    out = subprocess.run(["ss", "-ltnpH", f"( sport = :{port} )"], capture_output=True, text=True).stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


def _get_all(connections: list[tuple[http.client.HTTPConnection, str]]) -> list[tuple[int, bytes]]:
    """One GET on each connection, all at once."""
    results: list = [None] * len(connections)
    start = threading.Barrier(len(connections))

    def pull(i, connection, path):
        start.wait()
        connection.request("GET", path)
        response = connection.getresponse()
        results[i] = (response.status, response.read())
        connection.close()

    threads = [threading.Thread(target=pull, args=(i, c, p)) for i, (c, p) in enumerate(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_workers_fetch_a_cold_blob_from_the_upstream_once(upstream, tmp_path):
    data = random_bytes(24 << 20, "claims-workers")
    digest = push_blob_http(upstream.url, "team/layer", data)
    proxy = RegistryProcess(str(tmp_path / "data"), extra_args=["--workers", "2", "--proxy", f"up={upstream.url}"])
    proxy.start()
    try:
        deadline = time.monotonic() + 20
        while len(_listening_pids(proxy.port)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_listening_pids(proxy.port)) == 2
        # Connections until both processes hold some (the kernel spreads them over the workers).
        connections = []
        for _ in range(10):
            for c, _path in connections:
                c.close()
            connections = []
            for _ in range(CLIENTS):
                c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
                c.connect()
                connections.append((c, f"/v2/up/team/layer/blobs/{digest}"))
            if len(_serving_pids(proxy.port)) == 2:
                break
        assert len(_serving_pids(proxy.port)) == 2, "the pulls must be spread over both workers"

        results = _get_all(connections)
        assert [status for status, _ in results] == [200] * CLIENTS
        assert all(body == data for _, body in results)
        assert upstream_requests(upstream, "GET", digest) == [f"GET /v2/team/layer/blobs/{digest} 200"]
    finally:
        proxy.stop()


def test_replicas_on_one_bucket_fetch_a_cold_blob_from_the_upstream_once(s3_server, upstream, tmp_path):  # noqa: F811
    data = random_bytes(24 << 20, "claims-replicas")
    digest = push_blob_http(upstream.url, "team/s3layer", data)
    config = s3_server.config_file(str(tmp_path), s3_server.settings(), proxies=[f"up={upstream.url}"])
    replicas = [RegistryProcess(str(tmp_path / f"unused{i}"), config=config).start() for i in range(2)]
    try:
        connections = []
        for i in range(CLIENTS):
            c = http.client.HTTPConnection("127.0.0.1", replicas[i % 2].port, timeout=60)
            connections.append((c, f"/v2/up/team/s3layer/blobs/{digest}"))
        results = _get_all(connections)
        assert [status for status, _ in results] == [200] * CLIENTS
        assert all(body == data for _, body in results)
        assert upstream_requests(upstream, "GET", digest) == [f"GET /v2/team/s3layer/blobs/{digest} 200"]
        # Both serve it from the cache from now on.
        for replica in replicas:
            assert http_request("GET", f"{replica.url}/v2/up/team/s3layer/blobs/{digest}").body == data
        assert len(upstream_requests(upstream, "GET", digest, settle=0)) == 1
    finally:
        for replica in replicas:
            replica.stop()


def test_a_filler_killed_mid_fetch_is_taken_over_after_its_lease(tmp_path):
    data = random_bytes(4 << 20, "claims-killed")
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    gets = []

    def blob(handler, match):
        gets.append(handler.path)
        handler.start_body(200, {"Content-Type": "application/octet-stream"}, length=len(data))
        if len(gets) == 1:
            handler.send(data[: len(data) // 2])
            handler.stall(60)  # the process fetching it is killed meanwhile
            return
        handler.send(data)

    upstream = ScriptedUpstream().start()
    upstream.on("GET", rf"/v2/team/app/blobs/{digest}", blob)
    upstream.on(
        "HEAD",
        rf"/v2/team/app/blobs/{digest}",
        lambda handler, match: handler.reply(200, b"", {"Content-Length": str(len(data))}),
    )
    config = tmp_path / "proxy.yaml"
    config.write_text(json.dumps({"proxies": [{"prefix": "up", "url": upstream.url, "fill_lease": "2s"}]}))
    data_dir = str(tmp_path / "data")  # both replicas on one file system
    first = RegistryProcess(data_dir, config=str(config)).start()
    second = RegistryProcess(data_dir, config=str(config)).start()
    path = f"/v2/up/team/app/blobs/{digest}"
    try:
        doomed = http.client.HTTPConnection("127.0.0.1", first.port, timeout=60)
        doomed.request("GET", path)
        deadline = time.monotonic() + 20
        while not gets and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(gets) == 1

        result = {}

        def pull():
            result["response"] = http_request("GET", f"{second.url}{path}", timeout=60)

        waiting = threading.Thread(target=pull)
        waiting.start()
        time.sleep(1)  # the second replica finds the claim held and waits on it
        assert len(gets) == 1
        first.kill()
        waiting.join(60)
        assert result["response"].status == 200
        assert result["response"].body == data
        assert len(gets) == 2  # the dead filler's, and the one that took over
        assert "taking the fetch over" in second.log()
        assert http_request("GET", f"{second.url}{path}").body == data
        assert len(gets) == 2
    finally:
        first.stop()
        second.stop()
        upstream.stop()
