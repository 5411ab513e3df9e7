"""
The pull-through cache against upstreams that lie, stall or never end:
small real HTTP servers on 127.0.0.1 (`ScriptedUpstream`) that answer as
each test says, behind one ociregistry proxy with auth, small timeouts and
a 10 MiB ``max_upload_size``.  Every wait here is bounded: a proxy that
hangs fails a test by a client timeout, never by hanging the suite.
"""

from __future__ import annotations

import http.client
import json
import os
import time

import pytest
from auth_helpers import write_htpasswd
from image_builder import MEDIA_TYPE_OCI_MANIFEST, http_request, random_bytes, sha256_digest
from proxy_helpers import ScriptedUpstream, basic, serve
from registry_process import RegistryProcess

pytestmark = pytest.mark.ociregistry_only

TIMEOUT = 1.0  # the proxy's timeout for the scripted upstream
QUICK = 6.0  # a proxy that keeps its deadlines answers within this
USERS = {"alice": "alice-secret", "bob": "bob-secret"}
ALICE, BOB = basic("alice", "alice-secret"), basic("bob", "bob-secret")
MAX_UPLOAD = 10 << 20


@pytest.fixture(scope="module")
def hostile():
    server = ScriptedUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def far():
    """Another host (127.0.0.2) to redirect to."""
    server = ScriptedUpstream(host="127.0.0.2").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    process = RegistryProcess(str(tmp_path_factory.mktemp("honest"))).start()
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def _fresh_routes(hostile, far):
    hostile.reset()
    far.reset()
    yield
    hostile.release.set()  # end this test's stalls
    time.sleep(0.05)
    hostile.release.clear()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, hostile, honest):
    directory = tmp_path_factory.mktemp("proxy")
    write_htpasswd(directory / "htpasswd", USERS, cost=4)
    quick = f"timeout: {TIMEOUT}s, tag_ttl: 0"
    (directory / "config.yaml").write_text(
        f"max_upload_size: {MAX_UPLOAD}\n"
        "auth:\n"
        f"  htpasswd: {directory / 'htpasswd'}\n"
        "  access:\n"
        "    - repository: ['private/**']\n"
        "      pull: [alice]\n"
        "      push: [alice]\n"
        "    - repository: ['h/**', 'hd/**', 'ht/**', 'hs/**', 'oci/**']\n"
        "      pull: [anonymous]\n"
        "    - repository: ['c/**']\n"
        "      pull: [alice]\n"
        "proxies:\n"
        f"  - {{prefix: h, url: '{hostile.url}', {quick}}}\n"
        f"  - {{prefix: ht, url: '{hostile.url}', {quick}}}\n"  # the token test's: its client learns a challenge
        f"  - {{prefix: hs, url: '{hostile.url}', timeout: 20s}}\n"  # for 24 huge manifests on a busy machine
        f"  - {{prefix: c, url: '{hostile.url}', {quick}, username: mirror, password: upstream-secret}}\n"
        f"  - {{prefix: oci, url: '{honest.url}', {quick}}}\n"
    )
    process = RegistryProcess(str(directory / "data"), config=str(directory / "config.yaml")).start()
    yield process
    process.stop()


def get(proxy, path: str, headers=None, method="GET", timeout: float = 15):
    return http_request(method, f"{proxy.url}/v2/{path}", headers=headers, timeout=timeout)


def timed(call):
    started = time.monotonic()
    try:
        return call(), time.monotonic() - started
    except (http.client.IncompleteRead, ConnectionError) as e:
        return e, time.monotonic() - started


def linked(proxy, name: str, digest: str) -> bool:
    hex_ = digest.split(":", 1)[1]
    return os.path.exists(os.path.join(proxy.data_dir, "repositories", name, "_layers", "sha256", hex_, "link"))


def manifest_bytes(seed: str) -> bytes:
    config = sha256_digest(seed.encode())
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
            "layers": [],
        }
    ).encode()


def manifest_headers(data: bytes) -> dict:
    return {"Content-Type": MEDIA_TYPE_OCI_MANIFEST, "Docker-Content-Digest": sha256_digest(data)}


def stall_after(part: bytes, length: int, headers: dict | None = None, status: int = 200):
    """An action: headers announcing ``length`` bytes, ``part`` of the body, then silence."""

    def action(handler, match):
        handler.start_body(status, headers, length)
        if handler.command != "HEAD":
            handler.send(part)
            handler.stall()

    return action


def head_says(size: int, digest: str | None = None):
    headers = {"Docker-Content-Digest": digest} if digest else {}
    return lambda handler, match: handler.reply(200, b"", {**headers, "Content-Length": str(size)})


# -- fills are bounded, ranges verified, redirects followed with care ----------------------------------


def test_an_endless_blob_body_is_cut_at_max_upload_size(proxy, hostile):
    def endless(handler, match):
        handler.start_body(200, {"Content-Type": "application/octet-stream"})
        block = b"e" * (1 << 20)
        for _ in range(300):  # 300 MiB at most, should the proxy never stop reading
            handler.chunk(block)

    hostile.on("GET", r"/v2/team/endless/blobs/.+", endless)
    digest = sha256_digest(b"whatever")
    response, seconds = timed(lambda: get(proxy, f"h/team/endless/blobs/{digest}", timeout=60))
    assert response.status == 503, response
    assert "max_upload_size" in response.json()["errors"][0]["detail"]
    time.sleep(0.5)
    assert hostile.sent < MAX_UPLOAD + (8 << 20)  # what the sockets buffer on top
    uploads = os.path.join(proxy.data_dir, "repositories", "h", "team", "endless", "_uploads")
    assert not os.path.exists(uploads) or os.listdir(uploads) == []

    # A size announced over the limit is refused before a byte of the body is read.
    hostile.reset()
    hostile.on("GET", r"/v2/team/endless/blobs/.+", stall_after(b"", MAX_UPLOAD + 1))
    response, seconds = timed(lambda: get(proxy, f"h/team/endless/blobs/{digest}"))
    assert response.status == 503
    assert "more than max_upload_size" in response.json()["errors"][0]["detail"]
    assert seconds < QUICK


def test_a_range_of_a_blob_the_upstream_sends_wrong_is_never_served(proxy, hostile):
    good = random_bytes(2 << 20, "range-good")
    digest = sha256_digest(good)
    wrong = random_bytes(len(good), "range-wrong")
    hostile.on("GET", r"/v2/team/range/blobs/.+", serve(200, wrong))
    for span in ("bytes=0-999", "bytes=1000-1999", "bytes=-100"):
        response, _ = timed(lambda span=span: get(proxy, f"h/team/range/blobs/{digest}", {"Range": span}))
        assert not isinstance(response, Exception)
        assert response.status == 503, (span, response.status)
        assert wrong[:100] not in response.body and wrong[-100:] not in response.body

    # From an honest upstream, the same ranges are served (once the blob is verified).
    hostile.on("GET", r"/v2/team/range/blobs/.+", serve(200, good))
    response = get(proxy, f"h/team/range/blobs/{digest}", {"Range": "bytes=1000-1999"})
    assert (response.status, response.body) == (206, good[1000:2000])
