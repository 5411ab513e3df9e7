"""
Hostile clients against a real registry process, each attack with bounded
counts and time, and the limits (latency) measured here with generous
margins:

- downloads that are never read hold no shared thread and are dropped after
  ``client_timeout``, over plain TCP (sendfile) and TLS;
- numbers too long for Python's ``int`` (or digits that are not ASCII) in
  ``Range``, ``Content-Range`` and ``n=`` get 4xx, never 500.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import time

import pytest
from auth_helpers import (
    basic,
    call,
    free_port,
    push_blob,
    self_signed_certificate,
    sha256_digest,
    tls_listen,
    write_htpasswd,
)
from registry_process import RegistryProcess

pytestmark = pytest.mark.ociregistry_only

TIMEOUT = 3  # the registries' client_timeout, seconds
USERS = {"alice": "alice-secret", "bob": "bob-secret"}
ALICE = basic("alice", USERS["alice"])
WRONG = basic("alice", "not-her-password")
AUTH_YAML = """\
auth:
  realm: hostile
  htpasswd: htpasswd
  max_failed_logins: 100000
  access:
    - repository: "pub/**"
      pull: [anonymous]
      push: [alice]
"""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Basic auth (pub/** pulled by anyone, pushed by alice), a TLS listener, client_timeout 3s."""
    root = tmp_path_factory.mktemp("hostile")
    write_htpasswd(root / "htpasswd", USERS, cost=10)  # a password check takes a while
    key, cert = self_signed_certificate(str(root))
    (root / "config.yaml").write_text(AUTH_YAML + f"client_timeout: {TIMEOUT}s\n")
    tls_port = free_port()
    process = RegistryProcess(
        str(root / "data"), config=str(root / "config.yaml"), extra_args=["--listen", tls_listen(tls_port, key, cert)]
    ).start()
    process.tls_port, process.cafile = tls_port, cert
    yield process
    process.stop()


@pytest.fixture(scope="module")
def blobs(hostile):
    """A 32 MiB blob (more than socket buffers hold) and a small one, in pub/blobs."""
    big, small = os.urandom(32 << 20), b"a small blob " * 100
    for data in (big, small):
        assert push_blob(hostile.url, "pub/blobs", data, ALICE).status == 201
    return big, small


def request_bytes(method: str, path: str, headers: dict | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: registry"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def read_response(sock, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """One response off a raw socket: status, headers (lower-case names), body (by Content-Length)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed after {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def error_codes(body: bytes) -> list[str]:
    return [e["code"] for e in json.loads(body)["errors"]]


def non_reading_download(port: int, digest: str, tls_context=None):
    """A connection that asks for a blob and reads nothing of it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    if tls_context is not None:
        sock = tls_context.wrap_socket(sock, server_hostname="127.0.0.1")
    sock.sendall(request_bytes("GET", f"/v2/pub/blobs/blobs/{digest}"))
    return sock


def bytes_until_closed(sock, limit: int, seconds: float = 30.0) -> int:
    """Read everything the peer still sends, up to ``limit`` bytes; how much that was."""
    total, deadline = 0, time.monotonic() + seconds
    sock.settimeout(5)
    while total < limit and time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except OSError:
            break
        if not chunk:
            break
        total += len(chunk)
    return total


def timed(function):
    started = time.monotonic()
    result = function()
    return result, time.monotonic() - started


# ------------------------------------------------------------ slow readers


def test_downloads_that_are_never_read_hold_no_shared_thread(hostile, blobs):
    big, small = blobs
    readers = [non_reading_download(hostile.port, sha256_digest(big)) for _ in range(12)]
    try:
        time.sleep(0.5)  # every reader's socket is full by now
        reply, elapsed = timed(lambda: call(hostile.url, "GET", f"/v2/pub/blobs/blobs/{sha256_digest(small)}"))
        assert reply.status == 200 and reply.body == small
        assert elapsed < 1.0, f"a small download took {elapsed:.2f} s behind 12 stalled readers"
        reply, elapsed = timed(lambda: call(hostile.url, "GET", "/v2/", headers=basic("bob", USERS["bob"])))
        assert reply.status == 200
        assert elapsed < 1.0, f"a login took {elapsed:.2f} s behind 12 stalled readers"
        # Taking nothing for client_timeout, they are dropped.
        time.sleep(TIMEOUT + 2)
        for reader in readers:
            assert bytes_until_closed(reader, len(big)) < len(big)
    finally:
        for reader in readers:
            reader.close()


def test_a_tls_download_that_is_never_read_is_dropped(hostile, blobs):
    big, _ = blobs
    context = ssl.create_default_context(cafile=hostile.cafile)
    reader = non_reading_download(hostile.tls_port, sha256_digest(big), context)
    try:
        time.sleep(TIMEOUT + 2)
        assert bytes_until_closed(reader, len(big)) < len(big)
    finally:
        reader.close()


# ---------------------------------------------------------------- numbers

HUGE = "9" * 5000  # more digits than Python's int() takes


def raw_call(registry, data: bytes) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", registry.port)) as sock:
        sock.sendall(data)
        return read_response(sock)


def test_ranges_with_huge_numbers(hostile, blobs):
    _, small = blobs
    path = f"/v2/pub/blobs/blobs/{sha256_digest(small)}"
    for header, status in ((f"bytes=0-{HUGE}", 206), (f"bytes=-{HUGE}", 206), (f"bytes={HUGE}-", 416)):
        reply = call(hostile.url, "GET", path, headers={"Range": header})
        assert reply.status == status, (header[:20], reply.status, reply.body[:200])
        if status == 206:
            assert reply.body == small
        else:
            assert reply.error_codes == ["RANGE_INVALID"]
    # Digits that are not ASCII are no range: the whole blob.
    status, _, body = raw_call(hostile, request_bytes("GET", path, {"Range": "bytes=\xb2-\xb3"}))
    assert (status, body) == (200, small)


def test_upload_content_range_with_huge_numbers(hostile):
    started = call(hostile.url, "POST", "/v2/pub/ranges/blobs/uploads/", b"", ALICE)
    location = started.headers["location"]
    for header in (f"{HUGE}-{HUGE}", f"0-{HUGE}", "\xb2-\xb3"):
        status, _, body = raw_call(
            hostile, request_bytes("PATCH", location, {**ALICE, "Content-Range": header, "Content-Length": 3}, b"abc")
        )
        assert status == 416, (header[:20], status, body[:200])
        assert error_codes(body) == ["BLOB_UPLOAD_INVALID"]


@pytest.mark.parametrize("path", ["/v2/pub/blobs/tags/list", "/v2/_catalog"])
def test_page_sizes_that_are_not_numbers(hostile, blobs, path):
    for n in ("%C2%B2", "%D9%A3", "-1", "1e3"):  # ², an Arabic-Indic 3, ...
        reply = call(hostile.url, "GET", f"{path}?n={n}", headers=ALICE)
        assert reply.status == 400, (n, reply.status, reply.body[:200])
        assert reply.error_codes == ["PAGINATION_NUMBER_INVALID"]
    reply = call(hostile.url, "GET", f"{path}?n={HUGE}", headers=ALICE)
    assert reply.status in (200, 404), (reply.status, reply.body[:200])  # the repository has no tags: 404
    assert reply.status != 404 or reply.error_codes == ["NAME_UNKNOWN"]
