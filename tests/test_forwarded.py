"""
Behind a reverse proxy: ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` are
believed only from the peers in ``trusted_proxies``.  The tests connect
from two loopback addresses: 127.0.0.1 (a client) and 127.0.0.2 (the
trusted proxy).  A client that writes its own ``X-Forwarded-For`` is still
rate-limited, logged and capped as the address it connects from; through
the proxy, the address the proxy reports is used, with the right-most
untrusted hop of the chain.
"""

from __future__ import annotations

import base64
import http.client
import json
import re

import pytest

from auth_helpers import start_registry, write_htpasswd
from registry_process import RegistryProcess
from test_startup import wait_for

pytestmark = pytest.mark.ociregistry_only

CLIENT = "127.0.0.1"
PROXY = "127.0.0.2"
AGENT = "forwarded-test"


def call(port: int, source: str, path: str = "/v2/", method: str = "GET", headers=None):
    """(status, headers) of one request sent from the loopback address ``source``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        connection.request(method, path, headers={"User-Agent": AGENT, **(headers or {})})
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def wrong_password() -> dict:
    return {"Authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()}


def right_password() -> dict:
    return {"Authorization": "Basic " + base64.b64encode(b"alice:right").decode()}


@pytest.fixture
def limited(tmp_path):
    """Basic auth, 2 failed logins per address per minute; 127.0.0.2 is a trusted proxy."""
    write_htpasswd(tmp_path / "htpasswd", {"alice": "right"})
    auth = "  htpasswd: htpasswd\n  max_failed_logins: 2\n  failed_login_window: 60s\n  admins: [alice]\n"
    registry = start_registry(tmp_path, auth, extra_config=f"trusted_proxies: ['{PROXY}/32']\nlog_format: json\n")
    yield registry
    registry.stop()


def access_lines(registry) -> list[dict]:
    lines = [json.loads(line) for line in registry.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line["namespace"] == "oci_registry.access" and line["user_agent"] == AGENT]


def test_a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(limited):
    for n in range(2):
        status, _ = call(limited.port, CLIENT, headers={**wrong_password(), "X-Forwarded-For": f"198.51.100.{n}"})
        assert status == 401
    # Another made-up address does not escape the limit: it keys the real peer.
    status, _ = call(limited.port, CLIENT, headers={**right_password(), "X-Forwarded-For": "198.51.100.99"})
    assert status == 429
    # The trusted proxy's own clients are not held back by it.
    status, _ = call(limited.port, PROXY, headers={**right_password(), "X-Forwarded-For": "203.0.113.5"})
    assert status == 200
    assert wait_for(lambda: len(access_lines(limited)) >= 4)
    clients = [line["client"] for line in access_lines(limited)]
    assert clients == [CLIENT, CLIENT, CLIENT, "203.0.113.5"], clients


def test_forwarded_for_from_a_trusted_proxy_keys_the_client(limited):
    for _ in range(2):
        status, _ = call(limited.port, PROXY, headers={**wrong_password(), "X-Forwarded-For": "203.0.113.7"})
        assert status == 401
    status, _ = call(limited.port, PROXY, headers={**right_password(), "X-Forwarded-For": "203.0.113.7"})
    assert status == 429  # that client is limited...
    status, _ = call(limited.port, PROXY, headers={**right_password(), "X-Forwarded-For": "203.0.113.8"})
    assert status == 200  # ...not the proxy, nor its other clients
    status, _ = call(limited.port, CLIENT, headers=right_password())
    assert status == 200
    # The right-most hop that is not a trusted proxy: what the client wrote to the left of it is not believed.
    chain = f"10.9.9.9, 203.0.113.9, {PROXY}"
    call(limited.port, PROXY, headers={**right_password(), "X-Forwarded-For": chain})
    assert wait_for(lambda: len(access_lines(limited)) >= 6)
    clients = [line["client"] for line in access_lines(limited)]
    assert clients == ["203.0.113.7"] * 3 + ["203.0.113.8", CLIENT, "203.0.113.9"], clients
    assert "failed login as alice from 203.0.113.7" in limited.log()


def token_registry(tmp_path) -> RegistryProcess:
    write_htpasswd(tmp_path / "htpasswd", {"alice": "right"})
    auth = "  htpasswd: htpasswd\n  token: {service: registry.test}\n  admins: [alice]\n"
    return start_registry(tmp_path, auth, extra_args=["--trusted-proxy", f"{PROXY}/32"])


def realm(headers: dict) -> str:
    match = re.search(r'realm="([^"]+)"', headers["www-authenticate"])
    assert match, headers
    return match.group(1)


def test_token_realm_follows_the_trusted_proxy_only(tmp_path):
    registry = token_registry(tmp_path)
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "registry.example.com"}
    try:
        status, headers = call(registry.port, PROXY, headers=forwarded)
        assert status == 401
        assert realm(headers) == "https://registry.example.com/token"
        status, headers = call(registry.port, CLIENT, headers={**forwarded, "Host": f"127.0.0.1:{registry.port}"})
        assert status == 401
        assert realm(headers) == f"http://127.0.0.1:{registry.port}/token"
        # A proxy that forwards nothing: the Host it sent.
        status, headers = call(registry.port, PROXY, headers={"Host": "internal:5000"})
        assert realm(headers) == "http://internal:5000/token"
    finally:
        registry.stop()


def test_a_bad_trusted_proxy_is_one_line_and_status_2(tmp_path):
    from test_startup import assert_fails_at_once, twistd

    status, output = twistd(tmp_path, "--trusted-proxy", "10.0.0.0/33", "-d", str(tmp_path / "data"))
    assert_fails_at_once(status, output, 2, r"^ociregistry: trusted_proxies: not a CIDR: '10\.0\.0\.0/33'")


def test_upload_sessions_are_capped_per_forwarded_client(tmp_path):
    registry = RegistryProcess(str(tmp_path / "data"), extra_args=["--trusted-proxy", PROXY, "--trusted-proxy", "::1"])
    config = tmp_path / "config.yaml"
    config.write_text("max_uploads_per_client: 1\n")
    registry.config = str(config)
    registry.start()
    try:

        def start_upload(source: str, forwarded_for: str) -> int:
            path = "/v2/capped/app/blobs/uploads/"
            return call(registry.port, source, path, "POST", {"X-Forwarded-For": forwarded_for})[0]

        assert start_upload(PROXY, "203.0.113.1") == 202
        assert start_upload(PROXY, "203.0.113.1") == 429
        assert start_upload(PROXY, "203.0.113.2") == 202  # another client behind the same proxy
        assert start_upload(CLIENT, "203.0.113.3") == 202
        assert start_upload(CLIENT, "203.0.113.4") == 429  # a made-up address is no way around the cap
    finally:
        registry.stop()


# ------------------------------------------------ the chain rule, in memory


def origin_of(peer: str, headers: dict, trusted=("10.0.0.0/8", "192.0.2.1")):
    from twisted.internet.address import IPv4Address, IPv6Address
    from twisted.web.test.requesthelper import DummyRequest

    from oci_registry.api.forwarded import TrustedProxies

    request = DummyRequest([b""])
    request.client = (IPv6Address if ":" in peer else IPv4Address)("TCP", peer, 40000)
    for key, value in headers.items():
        request.requestHeaders.setRawHeaders(key, value if isinstance(value, list) else [value])
    return TrustedProxies.parse(list(trusted)).origin(request)


@pytest.mark.parametrize(
    "peer, forwarded_for, client",
    [
        ("203.0.113.1", "198.51.100.1", "203.0.113.1"),  # not a proxy: the header is the client's invention
        ("10.0.0.5", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.5", "1.1.1.1, 198.51.100.1, 10.0.0.6", "198.51.100.1"),  # right-most untrusted hop
        ("10.0.0.5", ["1.1.1.1", "198.51.100.1, 192.0.2.1"], "198.51.100.1"),  # several headers are one chain
        ("10.0.0.5", "10.0.0.7, 10.0.0.6", "10.0.0.7"),  # all proxies: the first of them
        ("10.0.0.5", "198.51.100.1, not-an-address", "10.0.0.5"),  # garbage from a proxy: the proxy it came from
        ("10.0.0.5", "[2001:db8::1]:443", "2001:db8::1"),
        ("10.0.0.5", "198.51.100.1:5555", "198.51.100.1"),
        ("10.0.0.5", "::ffff:198.51.100.2", "198.51.100.2"),
        ("10.0.0.5", "", "10.0.0.5"),
    ],
)
def test_the_client_of_a_forwarded_chain(peer, forwarded_for, client):
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    assert origin_of(peer, headers).client == client


def test_forwarded_proto_and_host_come_from_the_trusted_peer_only():
    forwarded = {"Host": "internal:5000", "X-Forwarded-Proto": "http, https", "X-Forwarded-Host": "registry.example"}
    trusted = origin_of("10.0.0.5", forwarded)
    assert (trusted.scheme, trusted.host) == ("https", "registry.example")
    untrusted = origin_of("203.0.113.1", forwarded)
    assert (untrusted.scheme, untrusted.host) == ("http", "internal:5000")
    bad = origin_of("10.0.0.5", {"Host": "h", "X-Forwarded-Proto": "gopher", "X-Forwarded-Host": 'evil"/x'})
    assert (bad.scheme, bad.host) == ("http", "h")


@pytest.mark.parametrize("value", ["10.0.0.0/33", "not-a-cidr", "", "10.0.0.0/8/8"])
def test_a_bad_cidr_is_refused_with_its_name(value):
    from oci_registry.api.forwarded import TrustedProxies

    with pytest.raises(ValueError, match="not a CIDR"):
        TrustedProxies.parse([value])
