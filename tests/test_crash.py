"""
Crash safety and a full disk: SIGKILL in the middle of uploads and manifest
pushes, and a data directory that runs out of space.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from registry_process import RegistryProcess

pytestmark = pytest.mark.ociregistry_only


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def request(registry, method, path, body=None, headers=None, timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def push_blob(registry, name, data):
    status, headers, body = request(registry, "POST", f"/v2/{name}/blobs/uploads/?digest={sha256(data)}", data)
    return status, body


def push_image(registry, name, tag, layer):
    config = json.dumps({"os": "linux", "architecture": "amd64", "tag": tag}).encode()
    for blob in (config, layer):
        assert push_blob(registry, name, blob)[0] == 201
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
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer), "size": len(layer)}
            ],
        }
    ).encode()
    status, _, body = request(
        registry,
        "PUT",
        f"/v2/{name}/manifests/{tag}",
        manifest,
        {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    return status, manifest


def verify_store(data_dir: str) -> int:
    """Every visible blob's bytes match its digest; returns how many were checked."""
    checked = 0
    root = os.path.join(data_dir, "blobs")
    for algorithm in os.listdir(root) if os.path.isdir(root) else []:
        for top, _dirs, files in os.walk(os.path.join(root, algorithm)):
            if "data" in files:
                with open(os.path.join(top, "data"), "rb") as f:
                    assert hashlib.new(algorithm, f.read()).hexdigest() == os.path.basename(top), top
                checked += 1
    return checked


def stream_patch(registry, location, total, block, stop_after=None):
    """PATCH ``total`` bytes of ``block`` repeated over a raw socket; may be cut off by the server dying."""
    sock = socket.create_connection(("127.0.0.1", registry.port))
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: {registry.host}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {total}\r\n\r\n"
    ).encode()
    sent = 0
    try:
        sock.sendall(head)
        while sent < total:
            chunk = block[: total - sent]
            sock.sendall(chunk)
            sent += len(chunk)
            if stop_after is not None and sent >= stop_after:
                stop_after = None
                yield sent
        sock.settimeout(30)
        yield sock.recv(65536)
    except OSError:
        yield None
    finally:
        sock.close()


def test_sigkill_mid_upload_then_resume(fresh_registry):
    registry = fresh_registry
    block = os.urandom(1 << 20)
    total = 256 << 20
    expected = hashlib.sha256()
    for _ in range(total // len(block)):
        expected.update(block)
    status, headers, _ = request(registry, "POST", "/v2/crash/app/blobs/uploads/")
    location = headers["location"]
    sender = stream_patch(registry, location, total, block, stop_after=96 << 20)
    assert next(sender) >= 96 << 20
    registry.kill()
    next(sender, None)

    registry.start()
    status, headers, _ = request(registry, "GET", location)
    assert status == 204
    received = int(headers["range"].split("-")[1]) + 1
    assert 0 < received <= total
    # Resume from the reported Range with the rest of the same stream.
    remainder_first = block[received % len(block) :]
    status, headers, body = request(
        registry,
        "PATCH",
        location,
        remainder_first,
        {
            "Content-Range": f"{received}-{received + len(remainder_first) - 1}",
            "Content-Type": "application/octet-stream",
        },
    )
    assert status == 202, body
    offset = received + len(remainder_first)
    while offset < total:
        status, headers, body = request(
            registry,
            "PATCH",
            headers.get("location", location),
            block,
            {"Content-Range": f"{offset}-{offset + len(block) - 1}", "Content-Type": "application/octet-stream"},
        )
        assert status == 202, body
        offset += len(block)
    digest = "sha256:" + expected.hexdigest()
    status, _, body = request(registry, "PUT", f"{headers.get('location', location)}?digest={digest}")
    assert status == 201, body
    status, headers, _ = request(registry, "HEAD", f"/v2/crash/app/blobs/{digest}")
    assert status == 200 and int(headers["content-length"]) == total
    assert verify_store(registry.data_dir) == 1


def test_sigkill_during_pushes_leaves_consistent_store(fresh_registry):
    registry = fresh_registry
    done = []
    stop = threading.Event()

    def pusher(n):
        i = 0
        while not stop.is_set() and i < 200:
            layer = os.urandom(200_000) + f"{n}-{i}".encode()
            try:
                status, manifest = push_image(registry, f"crash/p{n}", f"t{i}", layer)
            except OSError:
                return
            if status == 201:
                done.append((f"crash/p{n}", f"t{i}", manifest, layer))
            i += 1

    threads = [threading.Thread(target=pusher, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    registry.kill()
    stop.set()
    for t in threads:
        t.join(30)
    assert done, "no push completed before the kill"

    registry.start()
    verify_store(registry.data_dir)
    for name, tag, manifest, layer in done:
        status, headers, body = request(registry, "GET", f"/v2/{name}/manifests/{tag}")
        assert status == 200 and body == manifest
        status, _, body = request(registry, "GET", f"/v2/{name}/blobs/{sha256(layer)}")
        assert status == 200 and body == layer
    # Whatever else is visible is whole: every tag resolves to a manifest whose blobs are there.
    status, _, body = request(registry, "GET", "/v2/_catalog")
    for name in json.loads(body)["repositories"]:
        status, _, body = request(registry, "GET", f"/v2/{name}/tags/list")
        for tag in json.loads(body)["tags"] or []:
            status, _, raw = request(registry, "GET", f"/v2/{name}/manifests/{tag}")
            assert status == 200
            for layer in json.loads(raw)["layers"]:
                assert request(registry, "HEAD", f"/v2/{name}/blobs/{layer['digest']}")[0] == 200


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
    yield str(mount)
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk(small_disk):
    registry = RegistryProcess(os.path.join(small_disk, "data")).start()
    try:
        status, manifest = push_image(registry, "disk/app", "v1", os.urandom(1 << 20))
        assert status == 201
        filler = os.path.join(small_disk, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * (16 << 20))

        too_big = os.urandom(12 << 20)
        status, body = push_blob(registry, "disk/app", too_big)
        assert status == 507, body
        assert json.loads(body)["errors"][0]["code"] == "INSUFFICIENT_STORAGE"
        assert "storage is full" in registry.log()

        # Chunked too: the PATCH fails cleanly.
        status, headers, _ = request(registry, "POST", "/v2/disk/app/blobs/uploads/")
        status, _, body = request(
            registry, "PATCH", headers["location"], too_big, {"Content-Type": "application/octet-stream"}
        )
        assert status == 507, body
        request(registry, "DELETE", headers["location"])

        # A body still arriving when the disk fills: the rest is read and
        # dropped, and the client that keeps sending gets the 507.
        def slowly(data, piece=1 << 20):
            for start in range(0, len(data), piece):
                time.sleep(0.02)
                yield data[start : start + piece]

        status, second, _ = request(registry, "POST", "/v2/disk/app/blobs/uploads/")
        status, _, body = request(
            registry,
            "PATCH",
            second["location"],
            slowly(too_big),
            {"Content-Type": "application/octet-stream", "Content-Length": str(len(too_big))},
        )
        assert status == 507, body
        request(registry, "DELETE", second["location"])

        # Nothing partial is visible, and pulls still work.
        assert request(registry, "HEAD", f"/v2/disk/app/blobs/{sha256(too_big)}")[0] == 404
        assert verify_store(registry.data_dir) == 3
        status, _, body = request(registry, "GET", "/v2/disk/app/manifests/v1")
        assert status == 200 and body == manifest

        # Space freed: pushes work again.
        os.unlink(filler)
        status, body = push_blob(registry, "disk/app", too_big)
        assert status == 201, body
        status, _, body = request(registry, "GET", f"/v2/disk/app/blobs/{sha256(too_big)}")
        assert body == too_big
    finally:
        registry.stop()
