"""
Hostile clients against a real registry process, each attack with bounded
counts and time, and the limits (latency, memory of the registry process)
measured here with generous margins:

- downloads that are never read hold no shared thread and are dropped after
  ``client_timeout``, over plain TCP (sendfile) and TLS;
- bodies are not read before their sender is authorized: half-sent
  anonymous manifests and uploads with wrong passwords hold no memory;
- refusals that the headers decide arrive at once, with the spec's JSON
  body, and close the connection without reading the body;
- large manifests are parsed off the reactor; a body framed in tiny chunks
  is refused before it stalls it;
- numbers too long for Python's ``int`` (or digits that are not ASCII) in
  ``Range``, ``Content-Range``, ``Content-Length`` and ``n=`` get 4xx, never 500.
"""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
import subprocess
import sys
import time

import pytest

from auth_helpers import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
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
# The attacks below come from one address, many connections at once.
UNCAPPED = "max_connections: 0\nmax_connections_per_client: 0\n"


def rss_mib(registry) -> float:
    with open(f"/proc/{registry.process.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Basic auth (pub/** pulled by anyone, pushed by alice), a TLS listener, client_timeout 3s, no connection caps."""
    root = tmp_path_factory.mktemp("hostile")
    write_htpasswd(root / "htpasswd", USERS, cost=10)  # a password check takes a while
    key, cert = self_signed_certificate(str(root))
    (root / "config.yaml").write_text(AUTH_YAML + f"client_timeout: {TIMEOUT}s\n" + UNCAPPED)
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
    """The spec's error codes of a body; the token endpoint's OAuth error (RFC 6749 5.2) counts as one."""
    document = json.loads(body)
    if "errors" not in document:
        return [document["error"]]
    return [e["code"] for e in document["errors"]]


def closed_within(sock, seconds: float, sending: bool = False) -> bool:
    """
    Whether the peer closes (or resets) the connection within ``seconds``,
    whatever it sends before; ``sending``: meanwhile send it as much as it takes.
    """
    deadline = time.monotonic() + seconds
    sock.setblocking(False)
    chunk = b"x" * 65536
    while time.monotonic() < deadline:
        try:
            if sending:
                sock.send(chunk)
            if not sock.recv(1 << 20):
                return True
        except BlockingIOError:
            select.select([sock], [sock] if sending else [], [], 0.05)
        except OSError:
            return True
    return False


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


# ----------------------------------------------------- bodies before auth


def half_sent_bodies(registry, count: int, head: bytes, send: int, seconds: float, wait: float) -> tuple[float, dict]:
    """
    ``count`` connections send ``head`` then up to ``send`` body bytes each
    for ``seconds``; the registry's peak RSS growth (MiB) meanwhile, and the
    first bytes each connection received within ``wait`` seconds.
    """
    before = rss_mib(registry)
    socks, left, answers = [], {}, {}
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", registry.port))
            sock.sendall(head)
            sock.setblocking(False)
            socks.append(sock)
            left[sock] = send
        peak, chunk = before, b" " * 65536
        started = time.monotonic()
        while time.monotonic() - started < wait and len(answers) < count:
            sending = time.monotonic() - started < seconds
            for sock in socks:
                if sending and left[sock] > 0:
                    try:
                        left[sock] -= sock.send(chunk[: left[sock]])
                    except OSError:
                        left[sock] = 0
                if sock not in answers:
                    try:
                        data = sock.recv(100)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    answers[sock] = data
            peak = max(peak, rss_mib(registry))
            if not sending:
                select.select([s for s in socks if s not in answers], [], [], 0.1)
        return peak - before, {i: answers.get(sock, b"") for i, sock in enumerate(socks)}
    finally:
        for sock in socks:
            sock.close()


def test_half_sent_anonymous_manifests_are_refused_unread(hostile):
    declared = 4 << 20  # max_manifest_size
    head = request_bytes(
        "PUT", "/v2/pub/app/manifests/latest", {"Content-Type": OCI_MANIFEST, "Content-Length": declared}
    )
    growth, answers = half_sent_bodies(hostile, 200, head, send=2 << 20, seconds=3, wait=10)
    refused = sum(a.startswith(b"HTTP/1.1 401 ") for a in answers.values())
    assert refused == 200, f"{refused} of 200 half-sent manifests got their 401"
    assert growth < 40, f"the registry grew by {growth:.0f} MiB"


def test_uploads_with_wrong_passwords_hold_no_memory_while_passwords_are_checked(hostile):
    head = request_bytes(
        "PATCH",
        "/v2/pub/app/blobs/uploads/0123456789abcdef0123456789abcdef",
        {**WRONG, "Content-Length": 64 << 20},
    )
    growth, answers = half_sent_bodies(hostile, 100, head, send=8 << 20, seconds=4, wait=60)
    refused = sum(a.startswith(b"HTTP/1.1 401 ") for a in answers.values())
    assert refused == 100, f"{refused} of 100 uploads with a wrong password got their 401"
    assert growth < 40, f"the registry grew by {growth:.0f} MiB"


# --------------------------------------------------------- early refusals


def refused_at_once(registry, data: bytes, status: int, code: str, sending: bool = True) -> dict:
    """
    Send ``data`` (a request without the rest of its body): the refusal must
    come within a second, and the connection must then be closed within a
    few, although the client goes on sending (``sending``) the body.
    """
    with socket.create_connection(("127.0.0.1", registry.port)) as sock:
        sock.sendall(data)
        (got, headers, body), elapsed = timed(lambda: read_response(sock))
        assert got == status, (got, body)
        assert error_codes(body) == [code]
        assert elapsed < 1.0, f"the {status} took {elapsed:.2f} s"
        assert closed_within(sock, 8, sending), "the connection stayed open, reading a body it refused"
        return headers


def test_an_upload_chunk_past_the_size_limit_is_refused_at_once(hostile):
    started = call(hostile.url, "POST", "/v2/pub/big/blobs/uploads/", b"", ALICE)
    assert started.status == 202
    refused_at_once(
        hostile,
        request_bytes("PATCH", started.headers["location"], {**ALICE, "Content-Length": 10**15}, b"x" * 1000),
        413,
        "SIZE_INVALID",
    )


def test_a_manifest_declared_too_large_is_refused_at_once(hostile):
    data = request_bytes(
        "PUT", "/v2/pub/big/manifests/latest", {**ALICE, "Content-Type": OCI_MANIFEST, "Content-Length": 10**12}, b"{"
    )
    refused_at_once(hostile, data, 413, "SIZE_INVALID")


def test_an_anonymous_push_expecting_100_continue_is_refused_without_it(hostile):
    data = request_bytes(
        "PUT",
        "/v2/pub/app/manifests/latest",
        {"Content-Type": OCI_MANIFEST, "Content-Length": 1000, "Expect": "100-continue"},
    )
    headers = refused_at_once(hostile, data, 401, "UNAUTHORIZED", sending=False)  # not "100 Continue" first
    assert headers["www-authenticate"] == 'Basic realm="hostile"'


def test_headers_over_the_default_limit_get_a_400(hostile):
    refused_at_once(hostile, request_bytes("GET", "/v2/", {"X-Padding": "x" * (17 << 10)}), 400, "UNSUPPORTED")
    refused_at_once(hostile, request_bytes("GET", "/v2/_catalog?last=" + "x" * (17 << 10)), 400, "UNSUPPORTED")
    many = {f"X-{i}": "y" for i in range(600)}  # 4 KiB, but more headers than are read
    refused_at_once(hostile, request_bytes("GET", "/v2/", many), 400, "UNSUPPORTED")
    assert call(hostile.url, "GET", "/v2/", headers=ALICE).status == 200


def test_a_content_length_too_long_for_a_number_is_refused(hostile):
    refused_at_once(
        hostile, request_bytes("PUT", "/v2/pub/x/manifests/t", {"Content-Length": "9" * 5000}), 413, "SIZE_INVALID"
    )
    refused_at_once(hostile, request_bytes("GET", "/v2/", {"Content-Length": "1" * 30}), 413, "SIZE_INVALID")


def test_a_body_in_tiny_chunks_is_refused_before_it_stalls_the_registry(hostile):
    started = call(hostile.url, "POST", "/v2/pub/chunks/blobs/uploads/", b"", ALICE)
    assert started.status == 202
    with socket.create_connection(("127.0.0.1", hostile.port)) as sock:
        sock.sendall(request_bytes("PATCH", started.headers["location"], {**ALICE, "Transfer-Encoding": "chunked"}))
        sock.setblocking(False)
        tiny = b"1\r\nx\r\n" * 50_000
        worst, deadline, answer = 0.0, time.monotonic() + 10, b""
        while time.monotonic() < deadline and not answer:
            try:
                sock.send(tiny)
            except BlockingIOError:
                pass
            except OSError:
                break
            reply, elapsed = timed(lambda: call(hostile.url, "GET", "/v2/", headers=ALICE))
            assert reply.status == 200
            worst = max(worst, elapsed)
            try:
                answer = sock.recv(200)
            except BlockingIOError:
                pass
            except OSError:
                break
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert b"UNSUPPORTED" in answer
        assert worst < 1.0, f"GET /v2/ took {worst:.2f} s while a body came in 1-byte chunks"


def test_a_token_form_is_read_within_its_limit(tmp_path):
    write_htpasswd(tmp_path / "htpasswd", USERS, cost=5)
    (tmp_path / "config.yaml").write_text(
        AUTH_YAML.replace("  htpasswd: htpasswd\n", "  htpasswd: htpasswd\n  token: {service: hostile}\n")
    )
    registry = RegistryProcess(str(tmp_path / "data"), config=str(tmp_path / "config.yaml")).start()
    try:
        form = b"grant_type=password&service=hostile&username=alice&password=alice-secret&scope=repository:pub/x:pull"
        reply = call(registry.url, "POST", "/token", form, {"Content-Type": "application/x-www-form-urlencoded"})
        assert reply.status == 200 and reply.json()["access_token"]
        data = request_bytes(
            "POST", "/token", {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": 100 << 20}, form
        )
        refused_at_once(registry, data, 413, "invalid_request")
    finally:
        registry.stop()


# -------------------------------------------------------- large manifests


@pytest.fixture(scope="module")
def open_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("open")
    (root / "config.yaml").write_text(UNCAPPED)
    process = RegistryProcess(str(root / "data"), config=str(root / "config.yaml")).start()
    yield process
    process.stop()


PUT_MANIFEST = """
import http.client, sys
body = open(sys.argv[2], "rb").read()
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=120)
c.request("PUT", sys.argv[3], body=body, headers={"Content-Type": sys.argv[4]})
print(c.getresponse().status)
"""


def test_large_manifests_do_not_stall_the_registry(open_registry, tmp_path):
    config, layer = b"{}", b"one layer"
    for data in (config, layer):
        assert push_blob(open_registry.url, "big/manifest", data, {}).status == 201
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256_digest(layer), "size": len(layer)}] * 25_000,
    }
    path = tmp_path / "manifest.json"
    path.write_bytes(json.dumps(document).encode())
    assert 3 << 20 < path.stat().st_size < 4 << 20
    pushes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                PUT_MANIFEST,
                str(open_registry.port),
                str(path),
                f"/v2/big/manifest/manifests/t{i}",
                OCI_MANIFEST,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    worst, probes, deadline = 0.0, 0, time.monotonic() + 120
    while any(p.poll() is None for p in pushes) and time.monotonic() < deadline:
        reply, elapsed = timed(lambda: call(open_registry.url, "GET", "/v2/"))
        assert reply.status == 200
        worst, probes = max(worst, elapsed), probes + 1
        time.sleep(0.02)
    assert [p.communicate(timeout=60)[0].strip() for p in pushes] == ["201"] * 4
    assert probes >= 3
    assert worst < 0.5, f"GET /v2/ took {worst:.2f} s while four 25,000-layer manifests were pushed"


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


def test_small_bodies_held_at_once_are_bounded(tmp_path):
    (tmp_path / "config.yaml").write_text("max_body_memory: 1MiB\n")
    registry = RegistryProcess(str(tmp_path / "data"), config=str(tmp_path / "config.yaml")).start()
    try:
        head = request_bytes(
            "PUT", "/v2/budget/app/manifests/latest", {"Content-Type": OCI_MANIFEST, "Content-Length": 600 << 10}
        )
        with socket.create_connection(("127.0.0.1", registry.port)) as first:
            first.sendall(head + b"{" + b" " * (100 << 10))  # holds 600 KiB of the budget
            time.sleep(0.5)
            headers = refused_at_once(registry, head, 503, "UNAVAILABLE")
            assert int(headers["retry-after"]) > 0
            first.sendall(b" " * ((500 << 10) - 1))  # not a manifest: 400, and the budget is back
            status, _, body = read_response(first)
            assert (status, error_codes(body)) == (400, ["MANIFEST_INVALID"])
        status, _, body = raw_call(registry, head + b"{" + b" " * ((600 << 10) - 1))
        assert (status, error_codes(body)) == (400, ["MANIFEST_INVALID"])
    finally:
        registry.stop()


def test_pipelined_requests_with_bodies_are_answered_in_order(open_registry):
    junk = b"not a manifest"
    put = request_bytes(
        "PUT", "/v2/pipe/app/manifests/t", {"Content-Type": OCI_MANIFEST, "Content-Length": len(junk)}, junk
    )
    get = request_bytes("GET", "/v2/")
    with socket.create_connection(("127.0.0.1", open_registry.port)) as sock:
        sock.sendall(get * 3 + put + get + put + get)
        sock.settimeout(10)
        stream = sock.makefile("rb")
        answers = []
        for _ in range(7):
            status = int(stream.readline().split()[1])
            headers = {}
            while (line := stream.readline().strip()) != b"":
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            answers.append((status, stream.read(int(headers[b"content-length"]))))
    assert [status for status, _ in answers] == [200, 200, 200, 400, 200, 400, 200]
    assert error_codes(answers[3][1]) == ["MANIFEST_INVALID"]
