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
from image_builder import MEDIA_TYPE_OCI_MANIFEST, http_request, push_blob_http, random_bytes, sha256_digest
from proxy_helpers import ScriptedUpstream, basic, push_blob, serve
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


# -- bytes served under a proxied name come from its upstream -------------------------------


@pytest.mark.parametrize("lie", ["404", "wrong-bytes"])
def test_a_lying_upstream_cannot_read_a_blob_pushed_to_a_private_repository(proxy, hostile, lie):
    secret = random_bytes(200 << 10, f"private-{lie}")
    digest = push_blob(proxy.url, "private/app", secret, ALICE)
    assert get(proxy, f"private/app/blobs/{digest}").status == 401
    # The upstream claims to hold every blob in every repository, and cannot send it.
    hostile.on("HEAD", r"/v2/.+/blobs/.+", head_says(len(secret), digest))
    if lie == "404":
        hostile.on("GET", r"/v2/.+/blobs/.+", serve(404))
    else:
        hostile.on("GET", r"/v2/.+/blobs/.+", serve(200, b"x" * len(secret)))

    head = get(proxy, f"h/stolen/blobs/{digest}", method="HEAD")
    assert head.status == 200  # the upstream's claim, and nothing of ours
    for headers in (None, {"Range": "bytes=0-999"}, {"Range": "bytes=1000-"}):
        response, _ = timed(lambda headers=headers: get(proxy, f"h/stolen/blobs/{digest}", headers))
        if lie == "404":
            assert response.status == 404, response.body
        else:  # a broken transfer, or an error: never the stored bytes
            assert isinstance(response, Exception) or response.status == 503, response.status
        body = getattr(response, "body", b"") or getattr(response, "partial", b"")
        assert secret[:1000] not in body
    assert not linked(proxy, "h/stolen", digest)
    assert hostile.paths("GET") == [f"/v2/stolen/blobs/{digest}"] * 3  # each GET asked the upstream itself


def test_a_blob_another_upstream_sent_is_fetched_again_and_one_this_upstream_sent_is_linked(proxy, hostile, honest):
    data = random_bytes(300 << 10, "shared-blob")
    digest = push_blob_http(honest.url, "team/a", data)
    assert get(proxy, f"oci/team/a/blobs/{digest}").body == data  # cached from the honest upstream

    hostile.on("HEAD", r"/v2/.+/blobs/.+", head_says(len(data), digest))
    hostile.on("GET", r"/v2/.+/blobs/.+", serve(404))
    assert get(proxy, f"h/x/blobs/{digest}").status == 404
    assert not linked(proxy, "h/x", digest)

    # The upstream really has it: it sends it, it is verified, and it is served.
    hostile.on("GET", r"/v2/.+/blobs/.+", serve(200, data))
    assert get(proxy, f"h/x/blobs/{digest}").body == data
    assert hostile.paths("GET") == [f"/v2/x/blobs/{digest}"] * 2
    # Having sent the bytes, it only has to confirm that another of its repositories holds them.
    assert get(proxy, f"h/y/blobs/{digest}").body == data
    assert hostile.paths() == [
        f"/v2/x/blobs/{digest}",
        f"/v2/x/blobs/{digest}",
        f"/v2/y/blobs/{digest}",
    ]
    assert [m for m, *_ in hostile.requests] == ["GET", "GET", "HEAD"]
    assert linked(proxy, "h/y", digest)


# -- credentials lent to pullers ---------------------------------------------------------------


def test_access_rules_decide_who_pulls_through_an_upstream_with_credentials(proxy, hostile):
    data = manifest_bytes("upstream-private")
    blob = random_bytes(1000, "upstream-private-blob")
    blob_digest = sha256_digest(blob)

    def private(answer):
        def action(handler, match):
            if handler.headers.get("Authorization") != basic("mirror", "upstream-secret")["Authorization"]:
                return handler.reply(401, b"", {"WWW-Authenticate": 'Basic realm="upstream"'})
            return answer(handler, match)

        return action

    hostile.on("GET", r"/v2/account/private/manifests/v1", private(serve(200, data, manifest_headers(data))))
    hostile.on("GET", r"/v2/account/private/blobs/.+", private(serve(200, blob)))
    hostile.on("GET", r"/v2/account/private/tags/list", private(serve(200, b'{"tags": ["v1"]}')))

    paths = [
        "c/account/private/manifests/v1",
        f"c/account/private/blobs/{blob_digest}",
        "c/account/private/tags/list",
        f"c/account/private/referrers/{sha256_digest(data)}",
    ]
    for path in paths:
        assert get(proxy, path).status == 401, path
        assert get(proxy, path, BOB).status == 403, path
        assert get(proxy, path, method="HEAD").status == 401, path
    assert hostile.requests == []  # refused before the upstream was asked anything

    # Whoever the rules let pull reads the upstream account's private repository.
    assert get(proxy, paths[0], ALICE).body == data
    assert get(proxy, paths[1], ALICE).body == blob
    assert get(proxy, paths[2], ALICE).json()["tags"] == ["v1"]


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
