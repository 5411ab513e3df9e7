"""
Unit tests of the pull-through cache's pieces that need no upstream:
configuration, routing of names, auth challenges, the token cache, and the
promise that `ProxyRegistry` decides about every `Registry` method itself.
"""

from __future__ import annotations

import inspect
import json
import os
import sys

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from oci_registry import manifest as manifests
from oci_registry.config import Config, ConfigError
from oci_registry.interfaces import ILocalRegistry, IRegistry
from oci_registry.interfaces import operations as registry_operations
from oci_registry.proxy import IUpstream, ProxyRegistry, Upstream, UpstreamClient, UpstreamConfig
from oci_registry.proxy.auth import MAX_TOKEN_LIFETIME, MAX_TOKENS, TokenCache, basic_authorization, parse_challenges
from oci_registry.proxy.cache import _acceptable, _canonical, _upstream_accept
from oci_registry.proxy.client import UpstreamUnavailable, _retry_after, redirect_target
from oci_registry.proxy.fill import BlobFill, FillFailed
from oci_registry.proxy.transport import AddressGuard
from oci_registry.reference import Digest, Name
from oci_registry.registry import Registry
from oci_registry.storage.filesystem import FilesystemDriver
from oci_registry.storage.interfaces import IReader

# -- configuration -------------------------------------------------------------------


def test_prefix_equals_url_and_credentials_in_the_url():
    config = UpstreamConfig.parse("ghcr/=https://me:p%40ss@ghcr.io/")
    assert (config.prefix, config.url, config.username, config.password) == ("ghcr", "https://ghcr.io", "me", "p@ss")
    assert config.default_namespace is None
    assert "p@ss" not in repr(config)


def test_docker_hub_defaults_to_the_library_namespace():
    assert UpstreamConfig.parse("hub=https://registry-1.docker.io").default_namespace == "library"
    assert (
        UpstreamConfig.parse(
            {"prefix": "hub", "url": "https://registry-1.docker.io", "default_namespace": None}
        ).default_namespace
        is None
    )
    assert (
        UpstreamConfig.parse(
            {"prefix": "", "url": "http://127.0.0.1:5001", "default_namespace": "library"}
        ).default_namespace
        == "library"
    )


def test_yaml_mapping_with_durations():
    config = UpstreamConfig.parse(
        {
            "prefix": "hub",
            "url": "http://127.0.0.1:5001",
            "tag_ttl": "2m",
            "timeout": "5s",
            "username": "u",
            "password": "p",
            "max_retry_wait": 3,
            "fill_lease": "1m",
        }
    )
    assert (config.tag_ttl, config.timeout, config.max_retry_wait) == (120.0, 5.0, 3.0)
    assert config.fill_lease == 60.0
    assert UpstreamConfig.parse("hub=https://example.com").fill_lease == 30.0


@pytest.mark.parametrize(
    "value, message",
    [
        ("no-equals-sign", "PREFIX=URL"),
        ("hub=ftp://example.com", "http(s)"),
        ("hub=https://example.com/some/path", "must not have a path"),
        ("Hub=https://example.com", "not a repository name prefix"),
        ({"prefix": "hub"}, "url is required"),
        ({"prefix": "hub", "url": "https://example.com", "colour": "red"}, "unknown keys colour"),
        ({"prefix": "hub", "url": "https://example.com", "username": "u"}, "both username and password"),
        ({"prefix": "hub", "url": "https://example.com", "tag_ttl": "soon"}, "not a duration"),
        ({"prefix": "hub", "url": "https://example.com", "timeout": 0}, "timeout must be more than 0"),
        ({"prefix": "hub", "url": "https://example.com", "fill_lease": 0}, "fill_lease must be more than 0"),
        ({"prefix": "hub", "url": "https://example.com", "private_redirects": "sometimes"}, "one of auto, allow"),
        ({"prefix": "hub", "url": "https://example.com", "min_body_rate": "fast"}, "min_body_rate must be"),
    ],
)
def test_invalid_proxies_are_refused_with_a_reason(value, message):
    with pytest.raises(ConfigError, match=r"proxies\[0\]: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        Config.from_dict({"proxies": [value]})


def test_two_proxies_with_one_prefix_are_refused():
    with pytest.raises(ConfigError, match="two proxies have the prefix 'hub'"):
        Config.from_dict({"proxies": ["hub=https://a.example", "hub/=https://b.example"]})


def test_config_round_trips_through_json_for_worker_processes():
    config = Config.from_dict(
        {
            "proxies": [
                "hub=https://u:p@registry-1.docker.io",
                {"prefix": "", "url": "http://127.0.0.1:5001", "tag_ttl": 0},
            ]
        }
    )
    again = Config.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again.proxies == config.proxies


def test_the_twistd_option_is_repeatable(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "twisted", "plugins"))
    try:
        import ociregistry_plugin
    finally:
        sys.path.pop(0)
    options = ociregistry_plugin.Options()
    options.parseOptions(["--proxy", "hub=https://registry-1.docker.io", "--proxy", "ghcr=https://ghcr.io"])
    config_file = tmp_path / "config.yaml"
    config_file.write_text("proxies: [{prefix: quay, url: 'https://quay.io'}]\n")
    assert [p.prefix for p in Config.load(str(config_file)).proxies] == ["quay"]
    config = Config.load(str(config_file), proxies=options["proxy"])
    assert [(p.prefix, p.url) for p in config.proxies] == [
        ("hub", "https://registry-1.docker.io"),
        ("ghcr", "https://ghcr.io"),
    ]


# -- names ---------------------------------------------------------------------------


def _proxy(*specs) -> ProxyRegistry:
    class Local:
        storage = None

    upstreams = [Upstream(UpstreamConfig.parse(spec), client=None) for spec in specs]
    return ProxyRegistry(Local(), upstreams)


def test_longest_prefix_wins_and_a_mirror_takes_the_rest():
    proxy = _proxy("hub=https://registry-1.docker.io", "hub/team=http://127.0.0.1:5001", "=http://127.0.0.1:5002")
    route = proxy.route(Name("hub/team/app"))
    assert (route.upstream.config.url, route.remote) == ("http://127.0.0.1:5001", Name("app"))
    route = proxy.route(Name("hub/alpine"))
    assert (route.upstream.config.url, route.remote) == ("https://registry-1.docker.io", Name("library/alpine"))
    assert proxy.route(Name("hub/bitnami/redis")).remote == Name("bitnami/redis")
    assert proxy.route(Name("hubby/app")).upstream.config.url == "http://127.0.0.1:5002"
    assert proxy.route(Name("hubby/app")).remote == Name("hubby/app")


def test_names_outside_every_prefix_are_local():
    proxy = _proxy("hub=https://registry-1.docker.io")
    assert proxy.route(Name("hub")) is None
    assert proxy.route(Name("team/app")) is None


def test_every_registry_method_is_decided_by_the_proxy():
    """
    A new Registry method must be routed (or refused) explicitly, not slip through to local storage: every
    public method is declared by IRegistry, which the proxy implements itself, or is one of the primitives
    ILocalRegistry adds, which only the proxy and its fills call, on the local registry.
    """
    public = {n for n, f in inspect.getmembers(Registry, inspect.isfunction) if not n.startswith("_")}
    operations = set(IRegistry.names(all=True))
    primitives = set(registry_operations(ILocalRegistry)) - operations
    assert not public - operations - primitives, f"undeclared: {sorted(public - operations - primitives)}"
    missing = {n for n in public & operations if n not in ProxyRegistry.__dict__}
    assert not missing, f"ProxyRegistry does not decide about {sorted(missing)}"
    assert not primitives & set(ProxyRegistry.__dict__), "the proxy offers no storage primitive of its own"


def test_manifest_accept_rules():
    assert _upstream_accept(()) == _upstream_accept(("*/*",))
    assert manifests.OCI_INDEX in _upstream_accept(())
    assert _upstream_accept((manifests.DOCKER_MANIFEST,)) == (manifests.DOCKER_MANIFEST,)
    assert _acceptable(manifests.OCI_INDEX, ())
    assert not _acceptable(manifests.OCI_INDEX, (manifests.DOCKER_MANIFEST,))
    image = manifests.parse(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": manifests.OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "size": 2,
                    "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                },
                "layers": [],
            }
        ).encode(),
        None,
    )
    # An image answered to a client that takes no index may be one platform of a multi-arch tag.
    assert not _canonical((manifests.DOCKER_MANIFEST,), image)
    assert _canonical((manifests.DOCKER_MANIFEST, manifests.DOCKER_LIST), image)
    assert _canonical((), image)


# -- upstream auth ---------------------------------------------------------------------


def test_docker_hub_challenge():
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"'
    )
    [challenge] = parse_challenges([header])
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.docker.io/token"
    assert challenge.service == "registry.docker.io"
    assert challenge.scopes == ("repository:library/alpine:pull",)


def test_several_challenges_quoted_commas_and_basic():
    challenges = parse_challenges(['Basic realm="a, b"', 'Bearer realm="https://x/token", error="invalid_token"'])
    assert [(c.scheme, c.realm) for c in challenges] == [("basic", "a, b"), ("bearer", "https://x/token")]
    assert challenges[1].params["error"] == "invalid_token"
    assert parse_challenges(['Basic realm=registry, Bearer realm="https://t"'])[1].realm == "https://t"
    assert basic_authorization("user", "pass") == "Basic dXNlcjpwYXNz"


def test_tokens_are_cached_until_shortly_before_they_expire():
    clock = Clock()
    tokens = TokenCache(clock.seconds)
    tokens.put(("realm", "service", "scope"), "t1", 60)
    clock.advance(50)
    assert tokens.get(("realm", "service", "scope")) == "t1"
    clock.advance(6)  # within the margin before expiry
    assert tokens.get(("realm", "service", "scope")) is None
    tokens.put(("realm", "service", "scope"), "t2", None)  # no expires_in: 60 seconds, as the spec says
    clock.advance(54)
    assert tokens.get(("realm", "service", "scope")) == "t2"


def test_concurrent_requests_for_a_token_share_one_fetch():
    tokens = TokenCache(Clock().seconds)
    pending = Deferred()
    calls = []

    def fetcher():
        calls.append(1)
        return pending

    first = Deferred.fromCoroutine(tokens.fetch(("r", "s", "scope"), fetcher))
    second = Deferred.fromCoroutine(tokens.fetch(("r", "s", "scope"), fetcher))
    pending.callback(("the-token", 300))
    assert [first.result, second.result] == ["the-token", "the-token"]
    assert len(calls) == 1
    third = Deferred.fromCoroutine(tokens.fetch(("r", "s", "scope"), fetcher))
    assert third.result == "the-token" and len(calls) == 1


def test_retry_after_in_seconds_or_as_a_date():
    assert _retry_after("2", 0.0) == 2.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412475.0) == 5.0
    assert _retry_after("soon", 0.0) is None
    assert _retry_after(None, 0.0) is None
    assert _retry_after("²", 0.0) is None  # str.isdigit() says yes, float() says no
    assert _retry_after("9" * 5000, 0.0) == float("inf")  # longer than any wait


def test_tokens_live_an_hour_at_most_and_the_cache_is_bounded():
    clock = Clock()
    tokens = TokenCache(clock.seconds)
    for lifetime in (float("nan"), float("inf"), 1e18):
        tokens.put(("r", "s", "scope"), "t", lifetime)
        clock.advance(MAX_TOKEN_LIFETIME)
        assert tokens.get(("r", "s", "scope")) is None, lifetime
    for i in range(MAX_TOKENS + 10):
        tokens.put(("r", "s", f"repository:n{i}:pull"), "t", 300)
    assert len(tokens._tokens) == MAX_TOKENS
    assert tokens.get(("r", "s", "repository:n0:pull")) is None  # the oldest went first
    assert tokens.get(("r", "s", f"repository:n{MAX_TOKENS + 9}:pull")) == "t"


def test_a_challenge_header_with_endless_parameters_is_read_in_bounded_time():
    header = "Bearer " + ", ".join(f"k{i}=v" for i in range(20000))
    [challenge] = parse_challenges([header] * 100)[:1]
    assert len(challenge.params) <= 32
    assert len(parse_challenges([header] * 100)) <= 16


def test_redirects_to_other_schemes_and_from_https_to_http_are_not_followed():
    assert (
        redirect_target("https://r.example/v2/a/blobs/x", "https://cdn.example/b?sig=1")
        == "https://cdn.example/b?sig=1"
    )
    assert redirect_target("http://r.example/v2/a/blobs/x", "https://cdn.example/b") == "https://cdn.example/b"
    assert redirect_target("https://r.example/v2/a/blobs/x", "/v2/b") == "https://r.example/v2/b"
    for location in ("http://cdn.example/b", "file:///etc/passwd", "ftp://cdn.example/b"):
        with pytest.raises(UpstreamUnavailable):
            redirect_target("https://r.example/v2/a/blobs/x", location)


def test_which_addresses_a_redirect_or_token_realm_may_lead_to():
    guard = AddressGuard("registry.example", "auto")
    guard.resolved("registry.example", ["93.184.216.34"])  # a public upstream
    assert guard.admits("registry.example", "93.184.216.34")
    assert guard.admits("cdn.example", "151.101.1.1")
    for address in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "::ffff:127.0.0.1", "fd00::1"):
        assert not guard.admits("cdn.example", address), address
    assert guard.admits("registry.example", "10.1.2.3")  # the upstream's own name is what was configured
    guard.resolved("registry.example", ["10.0.0.5"])  # an upstream on a private network
    assert guard.admits("minio.internal", "10.0.0.6")
    deny = AddressGuard("127.0.0.1", "deny")
    deny.resolved("127.0.0.1", ["127.0.0.1"])
    assert deny.admits("127.0.0.1", "127.0.0.1") and not deny.admits("127.0.0.2", "127.0.0.2")
    assert AddressGuard("registry.example", "allow").admits("anything", "127.0.0.1")


def test_the_client_provides_its_interface():
    client = UpstreamClient(UpstreamConfig.parse("hub=https://registry-1.docker.io"), reactor=MemoryReactorClock())
    assert verifyObject(IUpstream, client)


# -- a client following a fill ----------------------------------------------------------


class _Writer:
    def __init__(self):
        self.data = b""

    def write(self, chunk):
        self.data += chunk
        return succeed(None)


def _fill(size: int) -> BlobFill:
    class Local:
        storage = None

    fill = BlobFill(Local(), upstream=None, name=Name("a"), remote_name=Name("a"), digest=Digest.of(b"x"))
    fill.size = size
    return fill


def test_a_live_client_gets_chunks_from_memory_but_not_the_last_byte_before_verification():
    fill, writer = _fill(10), _Writer()
    follower = fill.follow(0)
    assert verifyObject(IReader, follower)
    fill._chunk(writer, b"12345")
    assert follower.read(100).result == b"12345"
    fill._chunk(writer, b"67890")
    assert follower.read(3).result == b"678"
    assert follower.read(100).result == b"9"
    last = follower.read(100)
    assert not last.called  # held back until the digest is verified
    fill.complete = True
    fill._notify()
    assert last.result == b"0"
    assert follower.read(100).result == b""
    assert writer.data == b"1234567890"


def test_a_failed_fill_fails_its_clients():
    fill, writer = _fill(10), _Writer()
    follower = fill.follow(0)
    fill._chunk(writer, b"1234567890")
    assert follower.read(100).result == b"123456789"
    pending = follower.read(100)
    fill.error = UpstreamUnavailable("digest mismatch")
    fill._notify()
    assert isinstance(pending.result.value, FillFailed)
    pending.addErrback(lambda f: None)


@pytest_twisted.ensureDeferred
async def test_a_fill_takes_no_more_than_the_announced_size_or_the_upload_limit(tmp_path):
    announced, writer = _fill(10), _Writer()
    announced._chunk(writer, b"1234567890")
    with pytest.raises(UpstreamUnavailable, match="more than the 10 bytes it announced"):
        announced._chunk(writer, b"1")
    assert writer.data == b"1234567890"  # nothing past the announced size was written
    # Without an announced size, the local registry's upload limit is the bound: the fill writes through it.
    registry = Registry(FilesystemDriver(str(tmp_path)), max_upload_size=8)
    unannounced = BlobFill(registry, upstream=None, name=Name("a"), remote_name=Name("a"), digest=Digest.of(b"x"))
    incoming = await registry.receive_blob(Name("a"), Digest.of(b"x"))
    await unannounced._chunk(incoming, b"12345678")
    with pytest.raises(UpstreamUnavailable, match="more than max_upload_size"):
        unannounced._chunk(incoming, b"9")
    assert incoming.size == 8  # nothing past the limit was written
    await incoming.discard()


def test_a_client_that_falls_behind_stops_being_buffered():
    fill, writer = _fill(8 << 20), _Writer()
    follower = fill.follow(0)
    for _ in range(3):
        fill._chunk(writer, b"x" * (1 << 20))
    assert follower not in fill._live  # more than LIVE_LIMIT behind: it will read from storage
    assert follower._queued == 0
