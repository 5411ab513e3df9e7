"""Configurable limits: upload size, open sessions per client, header size, idle and trickling clients."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import time

import pytest

from auth_helpers import push_blob, sha256_digest
from registry_process import RegistryProcess

pytestmark = pytest.mark.ociregistry_only


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    config = root / "config.yaml"
    config.write_text(
        "max_upload_size: 1MiB\n"
        "max_uploads_per_client: 3\n"
        "max_header_size: 2KiB\n"
        "client_timeout: 1s\n"
        "min_body_rate: 2000\n"
        "max_manifest_size: 64KiB\n"
    )
    registry = RegistryProcess(str(root / "data"), config=str(config)).start()
    yield registry
    registry.stop()


def call(registry, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=20)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def test_upload_size_limit(limited):
    big = os.urandom((1 << 20) + 1)
    digest = "sha256:" + hashlib.sha256(big).hexdigest()
    status, _, body = call(limited, "POST", f"/v2/lim/a/blobs/uploads/?digest={digest}", big)
    assert status == 413 and b"SIZE_INVALID" in body
    status, headers, _ = call(limited, "POST", "/v2/lim/a/blobs/uploads/")
    location = headers["location"]
    half = big[:600_000]
    assert call(limited, "PATCH", location, half, {"Content-Range": f"0-{len(half) - 1}"})[0] == 202
    status, _, body = call(limited, "PATCH", location, half, {"Content-Range": f"600000-{600000 + len(half) - 1}"})
    assert status == 413
    # Streamed with no length: refused once it passes the limit.
    c = http.client.HTTPConnection("127.0.0.1", limited.port, timeout=20)
    c.request("PATCH", location, body=iter([half, half]), encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    r = c.getresponse()
    assert r.status == 413
    c.close()
    assert call(limited, "DELETE", location)[0] == 204
    ok = os.urandom(1000)
    assert (
        call(limited, "POST", f"/v2/lim/a/blobs/uploads/?digest=sha256:{hashlib.sha256(ok).hexdigest()}", ok)[0] == 201
    )


def test_open_sessions_per_client(limited):
    locations = []
    for _ in range(3):
        status, headers, _ = call(limited, "POST", "/v2/lim/sessions/blobs/uploads/")
        assert status == 202
        locations.append(headers["location"])
    status, headers, body = call(limited, "POST", "/v2/lim/sessions/blobs/uploads/")
    assert status == 429 and b"TOOMANYREQUESTS" in body and "retry-after" in headers
    assert call(limited, "DELETE", locations.pop())[0] == 204
    status, headers, _ = call(limited, "POST", "/v2/lim/sessions/blobs/uploads/")
    assert status == 202
    for location in locations + [headers["location"]]:
        call(limited, "DELETE", location)


def test_manifest_size_limit(limited):
    status, _, body = call(
        limited,
        "PUT",
        "/v2/lim/m/manifests/big",
        b"{" + b" " * (65 << 10) + b"}",
        {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert status == 413 and b"SIZE_INVALID" in body


def test_header_size_limit(limited):
    status, _, _ = call(limited, "GET", "/v2/", headers={"X-Padding": "x" * 4096})
    assert status == 400
    assert call(limited, "GET", "/v2/")[0] == 200


def test_idle_connection_times_out(limited):
    sock = socket.create_connection(("127.0.0.1", limited.port))
    sock.settimeout(10)
    started = time.monotonic()
    assert sock.recv(100) == b""  # closed by the registry
    assert time.monotonic() - started < 8
    sock.close()


def test_trickling_body_is_dropped_while_others_are_served(limited):
    sock = socket.create_connection(("127.0.0.1", limited.port))
    sock.sendall(
        f"PATCH /v2/lim/slow/blobs/uploads/0123456789abcdef0123456789abcdef HTTP/1.1\r\n"
        f"Host: {limited.host}\r\nContent-Length: 100000\r\n\r\n".encode()
    )
    started = time.monotonic()
    dropped = False
    while time.monotonic() - started < 10:
        try:
            sock.sendall(b"x" * 10)
        except OSError:
            dropped = True
            break
        # The registry keeps answering everyone else meanwhile.
        assert call(limited, "GET", "/v2/")[0] == 200
        time.sleep(0.3)
    sock.close()
    assert dropped, "a body trickling at ~30 B/s was not dropped"


def trickle(sock, seconds: float, step: float = 0.3) -> float | None:
    """
    Send a header byte every ``step`` seconds; when the registry closed the
    connection (None: not within ``seconds``).
    """
    started = time.monotonic()
    sock.settimeout(step)
    while time.monotonic() - started < seconds:
        try:
            sock.sendall(b"X")
            if sock.recv(100) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


def test_headers_trickling_in_are_cut_off(limited):
    # Every byte used to restart client_timeout (1 s here): 1 byte per 0.3 s lasted for ever.
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nX-Slow: ")
        closed = trickle(sock, 8)
    assert closed is not None and closed < 4, f"a trickling request line and headers lasted {closed} s"


@pytest.fixture
def capped(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("client_timeout: 3s\nmax_connections: 8\nmax_connections_per_client: 5\n")
    registry = RegistryProcess(str(tmp_path / "data"), config=str(config)).start()
    yield registry
    registry.stop()


def connect_from(registry, address: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", registry.port))
    return sock


def refused_connection(sock) -> bool:
    """Whether the registry answered the new connection with 503 and closed it, before any request."""
    sock.settimeout(5)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data.startswith(b"HTTP/1.1 503 ") and b"UNAVAILABLE" in data and b"Retry-After" in data


def test_connections_are_capped_per_client_address_and_in_total(capped):
    holders = []
    try:
        # Five slow requests fill 127.0.0.1's share; three more are refused at once.
        for _ in range(5):
            holders.append(connect_from(capped, "127.0.0.1"))
            holders[-1].sendall(b"GET /v2/ HTTP/1.1\r\n")
        time.sleep(0.3)
        for _ in range(3):
            with connect_from(capped, "127.0.0.1") as extra:
                assert refused_connection(extra)
        # Another address is served meanwhile.
        with connect_from(capped, "127.0.0.2") as other:
            other.sendall(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n")
            other.settimeout(5)
            assert other.recv(100).startswith(b"HTTP/1.1 200 ")
        # Three more from 127.0.0.2 reach the total (8): 127.0.0.3 is refused too.
        for _ in range(3):
            holders.append(connect_from(capped, "127.0.0.2"))
        time.sleep(0.3)
        with connect_from(capped, "127.0.0.3") as extra:
            assert refused_connection(extra)
        # The slow requests run out of time (client_timeout); then everyone is served again.
        time.sleep(4)
        status, _, _ = call(capped, "GET", "/v2/")
        assert status == 200
    finally:
        for sock in holders:
            sock.close()
    log = capped.log()
    # One line per episode, not one per refused connection.
    assert log.count("refusing new connections: 5 connections are open from 127.0.0.1") == 1, log
    assert log.count("refusing new connections: 8 connections are open (max_connections is 8)") == 1, log
    assert "connections from 127.0.0.1 are admitted again (3 refused meanwhile)" in log, log


def read_reply(stream) -> tuple[int, bytes]:
    """One response from a socket's file: its status and body (by Content-Length)."""
    status = int(stream.readline().split()[1])
    length = 0
    while (line := stream.readline().strip()) != b"":
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, stream.read(length)


def test_connections_are_capped_within_the_open_files_limit(tmp_path):
    """
    With a hard open files limit of 1024 (which the registry cannot raise),
    1,035 slow connections from several addresses used to take every file
    descriptor: a blob GET on a connection opened before got 500 (EMFILE
    opening the blob). The cap now fits the limit: the excess gets 503 and
    requests in flight are served.
    """
    python = tmp_path / "python-1024-files"
    python.write_text(f'#!/bin/sh\nulimit -n 1024 || exit 1\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    config = tmp_path / "config.yaml"
    config.write_text("client_timeout: 30s\n")
    registry = RegistryProcess(str(tmp_path / "data"), config=str(config), python=str(python)).start()
    holders = []
    try:
        data = os.urandom(1000)
        assert push_blob(registry.url, "fds/app", data, {}).status == 201
        with socket.create_connection(("127.0.0.1", registry.port)) as early:
            early.settimeout(10)
            replies = early.makefile("rb")
            early.sendall(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n\r\n")
            assert read_reply(replies)[0] == 200
            for i in range(1035):  # at most 148 per address: under max_connections_per_client
                sock = socket.socket()
                sock.bind((f"127.0.1.{i % 7 + 1}", 0))
                sock.connect(("127.0.0.1", registry.port))
                sock.sendall(b"GET /v2/ HTTP/1.1\r\nX-Slow: ")
                holders.append(sock)
            time.sleep(1)
            early.sendall(f"GET /v2/fds/app/blobs/{sha256_digest(data)} HTTP/1.1\r\nHost: registry\r\n\r\n".encode())
            status, body = read_reply(replies)
            assert (status, body) == (200, data), (status, body[:300])
        refused = 0
        for sock in holders:
            sock.setblocking(False)
            try:
                refused += sock.recv(100).startswith(b"HTTP/1.1 503 ")
            except OSError:
                pass
        assert refused > 600, refused
    finally:
        for sock in holders:
            sock.close()
        registry.stop()
    log = registry.log()
    assert "max_connections lowered from 2000 to 320: this process may open 1024 files (ulimit -n)" in log, log
    assert "refusing new connections: 320 connections are open (max_connections is 320)" in log, log
    assert "Too many open files" not in log
