"""`--workers N`: several processes serve one port, and all of them serve the same registry."""

import http.client
import json
import os
import re
import signal
import subprocess
import time

import pytest

from registry_process import RegistryProcess

pytestmark = pytest.mark.ociregistry_only


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def listening_pids(port: int) -> set[int]:
    out = subprocess.run(["ss", "-ltnpH", f"( sport = :{port} )"], capture_output=True, text=True).stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


@pytest.fixture
def workers(tmp_path):
    registry = RegistryProcess(str(tmp_path / "data"), extra_args=["--workers", "2"]).start()
    assert wait_for(lambda: len(listening_pids(registry.port)) == 2)
    yield registry
    registry.stop()


def test_connections_spread_over_workers(workers):
    parent = workers.process.pid
    assert wait_for(lambda: len(children_of(parent)) == 1)
    connections = []
    for _ in range(24):
        c = http.client.HTTPConnection("127.0.0.1", workers.port, timeout=5)
        c.request("GET", "/v2/")
        assert c.getresponse().read() == b"{}"
        connections.append(c)
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{workers.port} )"], capture_output=True, text=True
    ).stdout
    serving = {int(p) for p in re.findall(r"pid=(\d+)", out)}
    assert serving == {parent, *children_of(parent)}
    for c in connections:
        c.close()


def test_workers_share_state_and_restart(workers):
    parent = workers.process.pid
    assert wait_for(lambda: len(children_of(parent)) == 1)
    (child,) = children_of(parent)
    blob = os.urandom(1000)
    import hashlib

    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    # Each new connection may land on either worker: all must see the blob.
    c = http.client.HTTPConnection("127.0.0.1", workers.port, timeout=5)
    c.request("POST", f"/v2/w/blobs/uploads/?digest={digest}", body=blob)
    assert c.getresponse().status == 201
    c.close()
    for _ in range(10):
        c = http.client.HTTPConnection("127.0.0.1", workers.port, timeout=5)
        c.request("GET", f"/v2/w/blobs/{digest}")
        assert c.getresponse().read() == blob
        c.close()

    os.kill(child, signal.SIGKILL)
    assert wait_for(lambda: children_of(parent) not in ([], [child]))
    c = http.client.HTTPConnection("127.0.0.1", workers.port, timeout=5)
    c.request("GET", "/v2/_catalog")
    assert json.loads(c.getresponse().read()) == {"repositories": ["w"]}
    c.close()

    (new_child,) = children_of(parent)
    workers.stop()
    assert wait_for(lambda: not os.path.exists(f"/proc/{new_child}"))


def test_parent_killed_takes_workers_down(workers):
    parent = workers.process.pid
    assert wait_for(lambda: len(children_of(parent)) == 1)
    (child,) = children_of(parent)
    workers.kill()
    assert wait_for(
        lambda: not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split()[2] == "Z"
    )


def test_workers_need_tcp(tmp_path):
    registry = RegistryProcess(
        str(tmp_path / "data"), extra_args=["--workers", "2", "--listen", f"unix:{tmp_path}/s.sock"]
    )
    with pytest.raises(RuntimeError, match="tcp"):
        registry.start(timeout=10)
