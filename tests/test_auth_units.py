"""
Auth pieces in memory: htpasswd formats (against the real ``htpasswd``
tool), globs and rules, the configuration, rate limiting on a fake clock,
scopes, tokens, and the authorizers and the token endpoint without a socket.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ec
from treq.testing import StubTreq
from twisted.internet.defer import succeed
from twisted.logger import capturedLogs
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from oci_registry.auth import CATALOG, IAuthorizer, OpenAccess, delete, pull, push
from oci_registry.auth.basic import BasicAuthorizer
from oci_registry.auth.bearer import TokenAuthorizer
from oci_registry.auth.config import AuthConfig
from oci_registry.auth.htpasswd import HtpasswdFile, apr1_md5, hash_kind, parse_htpasswd, verify_hash
from oci_registry.auth.ratelimit import FailedLogins
from oci_registry.auth.rules import AccessPolicy, Glob, Identity, glob_to_regex
from oci_registry.auth.service import build_auth
from oci_registry.auth.state import AuthState, PasswordLogin
from oci_registry.auth.token_server import TokenRoute, TokenServer, grant
from oci_registry.auth.tokens import (
    Access,
    InvalidToken,
    TokenIssuer,
    TokenVerifier,
    covers,
    libtrust_key_id,
    load_or_create_signing_key,
    load_public_keys,
    parse_scope,
)
from oci_registry.config import Config, ConfigError
from oci_registry.errors import Denied, TooManyRequests, Unauthorized

HTPASSWD = shutil.which("htpasswd")
needs_htpasswd = pytest.mark.skipif(HTPASSWD is None, reason="htpasswd (apache2-utils) is not installed")


def messages(events) -> str:
    from twisted.logger import formatEvent

    return "\n".join(formatEvent(e) for e in events)


# ---------------------------------------------------------------- htpasswd


@needs_htpasswd
@pytest.mark.parametrize(
    "flag, kind", [("-B", "bcrypt"), ("-m", "apr1"), ("-2", "sha256-crypt"), ("-5", "sha512-crypt"), ("-s", "sha1")]
)
@pytest.mark.parametrize("password", ["pass", "ünïcödé and spaces", "x" * 80, ""])
def test_every_format_htpasswd_writes_is_verified(flag, kind, password):
    line = subprocess.run(
        [HTPASSWD, "-nb" + flag[1:], "user", password], capture_output=True, text=True, check=True
    ).stdout.strip()
    stored = line.split(":", 1)[1]
    assert hash_kind(stored) == kind
    assert verify_hash(stored, password.encode())
    assert not verify_hash(stored, ("!" + password).encode())  # (bcrypt reads only 72 bytes)


@needs_htpasswd
@pytest.mark.parametrize("flag, why", [("-d", "DES crypt"), ("-p", "plain-text")])
def test_weak_formats_are_refused_with_a_log_line(tmp_path, flag, why):
    out = subprocess.run(
        [HTPASSWD, "-nb" + flag[1:], "olduser", "pass"], capture_output=True, text=True, check=False
    ).stdout
    path = tmp_path / "htpasswd"
    path.write_text(out)
    with capturedLogs() as events:
        users = HtpasswdFile(str(path))
        assert users.lookup("olduser") is None
    text = messages(events)
    assert "olduser" in text and why in text and "htpasswd -B" in text
    assert "pass" not in text.replace("password", "").replace("passwd", "")


def test_apr1_matches_a_known_hash():
    assert apr1_md5(b"pass", b"JyxVUS20") == "$apr1$JyxVUS20$R0XAtkDDNZ7dvIp6Cbcop1"


def test_passwords_longer_than_1024_bytes_are_wrong_unhashed():
    from oci_registry.auth.htpasswd import MAX_PASSWORD, sha_crypt, verify_unknown

    longest, longer = b"x" * MAX_PASSWORD, b"x" * (MAX_PASSWORD + 1)
    assert verify_hash(sha_crypt(longest, b"salt", None, 512), longest)
    assert not verify_hash(sha_crypt(longer, b"salt", None, 512), longer)
    assert verify_unknown(longer, 31) is False  # at once: a cost-31 bcrypt would take days


def test_htpasswd_parsing():
    users, refused = parse_htpasswd("# comment\n\nalice:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\nbob:edZaZQiAV7Wz2\n")
    assert list(users) == ["alice"] and list(refused) == ["bob"]
    with pytest.raises(ValueError):
        parse_htpasswd("no colon here\n")


def test_htpasswd_file_reloads_on_change_and_keeps_users_when_broken(tmp_path):
    now = [0.0]
    path = tmp_path / "htpasswd"
    path.write_text("alice:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\n")  # "pass"
    users = HtpasswdFile(str(path), check_interval=1.0, clock=lambda: now[0])
    generation = users.generation
    path.write_text("alice:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\nbob:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\n")
    users.maybe_reload()
    assert users.lookup("bob") is None  # not looked at again within the interval
    now[0] = 1.5
    users.maybe_reload()
    assert users.lookup("bob") is not None and users.generation != generation
    path.write_text("this is not an htpasswd file\n")
    now[0] = 3.0
    with capturedLogs() as events:
        users.maybe_reload()
    assert "keeping the 2 users" in messages(events)
    assert users.lookup("bob") is not None
    with pytest.raises(ValueError):
        HtpasswdFile(str(tmp_path / "missing"))


def test_an_unknown_users_check_costs_what_the_costliest_bcrypt_hash_costs(tmp_path):
    import bcrypt

    path = tmp_path / "htpasswd"
    path.write_text("alice:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\n")
    users = HtpasswdFile(str(path), check_interval=0)
    assert users.dummy_cost == 5  # htpasswd -B's default, when no hash says more
    hashes = [bcrypt.hashpw(b"x", bcrypt.gensalt(cost)).decode().replace("$2b$", "$2y$") for cost in (4, 7)]
    path.write_text(f"alice:{hashes[0]}\nbob:{hashes[1]}\n")
    users.load()
    assert users.dummy_cost == 7
    path.write_text(f"alice:{hashes[0]}\n")
    users.load()
    assert users.dummy_cost == 4


# ------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    "pattern, name, matches",
    [
        ("team-a/**", "team-a/app", True),
        ("team-a/**", "team-a/x/y", True),
        ("team-a/**", "team-a", False),
        ("team-a/**", "team-ab/app", False),
        ("team-a/*", "team-a/app", True),
        ("team-a/*", "team-a/x/y", False),
        ("**", "anything/at/all", True),
        ("*/app", "x/app", True),
        ("*/app", "x/y/app", False),
        ("app?", "app1", True),
        ("a.b", "axb", False),
        ("lib/[x]", "lib/[x]", True),
        ("app?", "app/", False),
        ("*-*-*-x", "a-b-c-x", True),
        ("*-*-*-x", "a-b/c-x", False),
        ("**/cache/**", "a/b/cache/c/d", True),
        ("**/cache/**", "cache/c", False),
        ("a**b**c**d", "a/x/b/c//d", True),
        ("", "", True),
    ],
)
def test_globs(pattern, name, matches):
    assert bool(glob_to_regex(pattern).fullmatch(name)) is matches
    assert Glob(pattern).fullmatch(name) is matches
    assert Glob(pattern, regex_stars=-1).fullmatch(name) is matches  # without the regex


def test_globs_without_the_regex_agree_with_it():
    import random

    rng = random.Random(11)
    for _ in range(3000):
        pattern = "".join(rng.choice(["a", "b", "/", "-", "*", "**", "?"]) for _ in range(rng.randint(0, 7)))
        name = "".join(rng.choice("ab/-") for _ in range(rng.randint(0, 9)))
        expected = glob_to_regex(pattern).fullmatch(name) is not None
        assert Glob(pattern, regex_stars=-1).fullmatch(name) is expected, (pattern, name)


def test_a_glob_with_many_stars_takes_linear_time():
    import time

    glob = Glob("*-*-*-*-*-*x")  # its regex took over a second on this name, and longer the more stars
    started = time.monotonic()
    assert not glob.fullmatch(("a-" * 128)[:255])
    assert time.monotonic() - started < 0.1


POLICY_YAML = {
    "groups": {"team-a": ["alice", "bob"], "ops": ["olivia"]},
    "admins": ["root", "@ops"],
    "access": [
        {"repository": "public/**", "pull": ["anonymous"], "push": ["alice"]},
        {"repositories": ["team-a/**", "shared-a/*"], "pull": ["@team-a"], "push": ["@team-a"], "delete": ["alice"]},
        {"repository": "**", "pull": ["authenticated"]},
    ],
}


@pytest.fixture
def policy() -> AccessPolicy:
    return AuthConfig.parse(POLICY_YAML).policy()


def test_rights_add_up(policy):
    alice, bob, carol = policy.identity("alice"), policy.identity("bob"), policy.identity("carol")
    anonymous = policy.identity(None)
    assert alice.groups == {"team-a"}
    assert policy.actions(alice, "team-a/app") == {"pull", "push", "delete"}
    assert policy.actions(bob, "team-a/app") == {"pull", "push"}
    assert policy.actions(bob, "shared-a/app") == {"pull", "push"}
    assert policy.actions(carol, "team-a/app") == {"pull"}
    assert policy.actions(anonymous, "team-a/app") == frozenset()
    assert policy.actions(anonymous, "public/x") == {"pull"}
    assert policy.actions(alice, "public/x") == {"pull", "push"}
    assert policy.actions(policy.identity("olivia"), "anything") == {"pull", "push", "delete"}
    assert policy.actions(policy.identity("root"), "anything") == {"pull", "push", "delete"}
    assert policy.allows(alice, push("team-a/app")) and not policy.allows(bob, delete("team-a/app"))
    assert policy.allows(bob, ("repository", "team-a/app", ("*",))) is False
    assert policy.allows(alice, ("repository", "team-a/app", ("*",)))


def test_catalog_rights(policy):
    assert policy.may_catalog(policy.identity("carol"))
    assert policy.may_catalog(policy.identity(None))  # some anonymous pull exists
    closed = AuthConfig.parse({"access": [{"repository": "x/**", "pull": ["authenticated"]}]}).policy()
    assert not closed.may_catalog(closed.identity(None))
    assert closed.may_catalog(closed.identity("someone"))
    assert policy.may_pull(policy.identity(None), ["public/a", "team-a/b"]) == ["public/a"]


# ------------------------------------------------------------------ config


def test_config_errors_name_the_problem(tmp_path):
    cases = {
        "unknown keys: colour": {"colour": "blue"},
        "group @nobody": {"access": [{"repository": "x", "pull": ["@nobody"]}]},
        "unknown keys pul": {"access": [{"repository": "x", "pul": ["a"]}]},
        "needs a repository": {"access": [{"pull": ["a"]}]},
        "token.expiry": {"token": {"expiry": "5s"}},
        "token.realm": {"token": {"public_key": "k.pem"}},
        "do not apply": {"htpasswd": "h", "token": {"public_key": "k.pem", "realm": "https://x/token"}},
        "admins must be": {"admins": ["anonymous"]},
        "quotes": {"realm": 'a"b'},
    }
    for expected, section in cases.items():
        with pytest.raises(ConfigError) as error:
            Config.from_dict({"auth": section})
        message = str(error.value)
        assert message.startswith("auth: ")
        assert all(word in message for word in expected.split()), (expected, message)


def test_config_paths_and_round_trip(tmp_path):
    config_path = tmp_path / "etc" / "config.yaml"
    config_path.parent.mkdir()
    config_path.write_text(
        "auth:\n  htpasswd: users\n  token: {service: reg}\n  access:\n    - {repository: 'a/**', pull: [anonymous]}\n"
    )
    config = Config.load(str(config_path), data_dir=str(tmp_path / "data"))
    assert config.auth.htpasswd == str(tmp_path / "etc" / "users")
    assert config.auth.mode == "token" and config.auth.token.service == "reg"
    assert config.auth.source == str(config_path) and config.auth.source_key == "auth"
    again = Config.from_dict(json.loads(json.dumps(config.to_dict())))  # what worker processes get
    assert again.auth.to_dict() == config.auth.to_dict()
    assert again.auth.policy().actions(Identity(), "a/b") == {"pull"}
    assert Config.from_dict({}).auth is None and Config.from_dict({}).to_dict()["auth"] is None


def test_auth_in_a_file_of_its_own(tmp_path):
    (tmp_path / "auth.yaml").write_text("htpasswd: users\nadmins: [root]\n")
    (tmp_path / "config.yaml").write_text("auth: auth.yaml\n")
    config = Config.load(str(tmp_path / "config.yaml"))
    assert config.auth.source == str(tmp_path / "auth.yaml") and config.auth.source_key is None
    assert config.auth.htpasswd == str(tmp_path / "users")
    (tmp_path / "auth.yaml").write_text("htpasswd: users\nadmins: [root, admin2]\n")
    assert config.auth.reread().admins == ("root", "admin2")


# ------------------------------------------------------------ rate limits


def test_failed_logins_per_address_on_a_clock():
    now = [100.0]
    limiter = FailedLogins(limit=3, window=10.0, clock=lambda: now[0])
    for _ in range(2):
        limiter.failed("1.2.3.4")
    assert limiter.retry_after("1.2.3.4") is None
    limiter.failed("1.2.3.4")
    assert limiter.retry_after("1.2.3.4") == 10
    assert limiter.retry_after("5.6.7.8") is None
    now[0] = 106.5
    assert limiter.retry_after("1.2.3.4") == 4
    now[0] = 110.0
    assert limiter.retry_after("1.2.3.4") is None
    limiter.failed("1.2.3.4")  # the sliding window: two of the three are still recent
    assert limiter.retry_after("1.2.3.4") is None
    assert FailedLogins(limit=0).retry_after("x") is None


def test_checks_in_flight_count_towards_the_limit():
    now = [100.0]
    limiter = FailedLogins(limit=3, window=10.0, clock=lambda: now[0])
    assert [limiter.begin("1.2.3.4") for _ in range(3)] == [None, None, None]
    assert limiter.begin("1.2.3.4") == 1  # three in flight: refused, not counted
    assert limiter.begin("5.6.7.8") is None
    assert limiter.end("1.2.3.4", failed=False) is False  # a right password frees its place
    assert limiter.begin("1.2.3.4") is None
    assert [limiter.end("1.2.3.4", failed=True) for _ in range(3)] == [False, False, True]
    assert limiter.checking("1.2.3.4") == 0
    assert limiter.retry_after("1.2.3.4") == 10 and limiter.begin("1.2.3.4") == 10
    unlimited = FailedLogins(limit=0)
    assert all(unlimited.begin("x") is None for _ in range(100))


def test_the_failed_login_table_forgets_the_address_that_failed_least_recently(monkeypatch):
    from oci_registry.auth import ratelimit

    monkeypatch.setattr(ratelimit, "MAX_TRACKED", 3)
    limiter = FailedLogins(limit=1, window=60.0)
    for client in ("a", "b", "c"):
        limiter.failed(client)
    limiter.failed("a")  # a failed again: b is now the oldest
    limiter.failed("d")
    assert limiter.retry_after("b") is None
    assert all(limiter.retry_after(client) for client in ("a", "c", "d"))


@pytest_twisted.ensureDeferred
async def test_the_same_credentials_at_once_share_one_check(state):
    from twisted.internet.defer import Deferred

    jobs = []

    def run_blocking(f, *args):
        job = Deferred()
        jobs.append((job, f, args))
        return job

    login = PasswordLogin(state, run_blocking=run_blocking)
    state.limiter.configure(1, 60.0)
    right = [Deferred.fromCoroutine(login.login(request_with(), "alice", "pass")) for _ in range(5)]
    assert len(jobs) == 1  # five requests, one check; and the limit of one is not exceeded
    with pytest.raises(TooManyRequests):  # another password from that address while one is checked: refused
        await login.login(request_with(), "alice", "guess")
    hung_up = Deferred.fromCoroutine(login.login(request_with(), "alice", "pass"))
    hung_up.cancel()
    hung_up.addErrback(lambda _: None)
    job, f, args = jobs[0]
    job.callback(f(*args))
    assert [(await d).name for d in right] == ["alice"] * 5
    assert state.limiter.checking("10.0.0.1") == 0
    # A check counts until its thread is done, even when its only client hung up.
    first = Deferred.fromCoroutine(login.login(request_with(client="10.0.0.9"), "carol", "wrong"))
    first.cancel()
    first.addErrback(lambda _: None)
    assert state.limiter.checking("10.0.0.9") == 1
    job, f, args = jobs[1]
    job.callback(f(*args))
    assert state.limiter.checking("10.0.0.9") == 0 and state.limiter.retry_after("10.0.0.9") == 60


# ------------------------------------------------------------------ tokens


def test_scopes():
    assert parse_scope("repository:team-a/app:pull,push registry:catalog:*") == [
        Access("repository", "team-a/app", ("pull", "push")),
        Access("registry", "catalog", ("*",)),
    ]
    assert parse_scope("repository:localhost:5000/app:pull") == [Access("repository", "localhost:5000/app", ("pull",))]
    assert parse_scope("repository(plugin):x:pull junk") == [Access("repository", "x", ("pull",))]
    granted = [Access("repository", "a", ("pull",)), Access("repository", "a", ("push",))]
    assert covers(granted, push("a")) and not covers(granted, delete("a"))
    assert covers([Access("repository", "a", ("*",))], delete("a"))
    assert not covers(granted, pull("b"))


def test_tokens_round_trip_and_refusals(tmp_path):
    key = load_or_create_signing_key(str(tmp_path / "auth" / "key.pem"))
    assert oct(os.stat(tmp_path / "auth" / "key.pem").st_mode & 0o777) == "0o600"
    assert load_or_create_signing_key(str(tmp_path / "auth" / "key.pem")).private_numbers() == key.private_numbers()
    now = [1_700_000_000]
    issuer = TokenIssuer(key, "me", "svc", 300, clock=lambda: now[0])
    issued = issuer.issue("alice", [Access("repository", "a/b", ("pull",))])
    assert issued.issued_at == "2023-11-14T22:13:20Z" and issued.expires_in == 300
    verifier = TokenVerifier(load_public_keys(str(tmp_path / "auth" / "key.pem")), "me", "svc", clock=lambda: now[0])
    # PyJWT checks exp against the real clock: issue one for now.
    fresh = TokenIssuer(key, "me", "svc", 300).issue("alice", [Access("repository", "a/b", ("pull",))])
    verified = verifier.verify(fresh.token)
    assert verified.subject == "alice" and verified.access == (Access("repository", "a/b", ("pull",)),)
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(issued.token)
    with pytest.raises(InvalidToken):
        TokenVerifier([ec.generate_private_key(ec.SECP256R1()).public_key()], "me", "svc").verify(fresh.token)
    assert jwt.get_unverified_header(fresh.token)["kid"] == libtrust_key_id(key.public_key())


def test_libtrust_key_id_shape():
    kid = libtrust_key_id(ec.generate_private_key(ec.SECP256R1()).public_key())
    parts = kid.split(":")
    assert len(parts) == 12 and all(len(p) == 4 and p.isalnum() and p.isupper() or p.isdigit() for p in parts)


# ------------------------------------------------- authorizers in memory


def request_with(headers: dict | None = None, client: str = "10.0.0.1") -> DummyRequest:
    from twisted.internet.address import IPv4Address

    request = DummyRequest([b""])
    request.client = IPv4Address("TCP", client, 40000)
    for key, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(key, [value])
    return request


def basic_header(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def state(tmp_path):
    (tmp_path / "htpasswd").write_text(
        "alice:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\n"  # pass
        "carol:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\n"
    )
    section = {**POLICY_YAML, "htpasswd": str(tmp_path / "htpasswd"), "max_failed_logins": 2}
    return AuthState(AuthConfig.parse(section))


def sync_login(state):
    return PasswordLogin(state, run_blocking=lambda f, *args: succeed(f(*args)))


def test_authorizers_provide_the_interface(state):
    key = ec.generate_private_key(ec.SECP256R1())
    verifyObject(IAuthorizer, OpenAccess())
    verifyObject(IAuthorizer, BasicAuthorizer(state, sync_login(state)))
    verifyObject(IAuthorizer, TokenAuthorizer(TokenVerifier([key.public_key()], "i", "s"), "s", None, state))


@pytest_twisted.ensureDeferred
async def test_basic_authorizer_answers(state):
    authorizer = BasicAuthorizer(state, sync_login(state))
    await authorizer.authorize(request_with(basic_header("alice", "pass")), [push("team-a/app")])
    await authorizer.authorize(request_with(), [pull("public/x")])
    with pytest.raises(Unauthorized) as error:
        await authorizer.authorize(request_with(), [push("public/x")])
    assert error.value.headers == {"WWW-Authenticate": 'Basic realm="ociregistry"'}
    with pytest.raises(Denied):
        await authorizer.authorize(request_with(basic_header("carol", "pass")), [push("team-a/app")])
    with pytest.raises(Unauthorized):
        await authorizer.authorize(request_with(basic_header("alice", "nope")), [CATALOG])
    with pytest.raises(Unauthorized):
        await authorizer.authorize(request_with(basic_header("alice", "nope2")), [])
    with pytest.raises(TooManyRequests) as error:  # two failures from 10.0.0.1: limited
        await authorizer.authorize(request_with(basic_header("alice", "pass")), [])
    assert error.value.headers["Retry-After"] == "60"
    await authorizer.authorize(request_with(basic_header("alice", "pass"), client="10.0.0.2"), [])
    # Who the catalog is filtered for is what authorize returned: nothing is kept on the request.
    carol = await authorizer.authorize(request_with(basic_header("carol", "pass"), client="10.0.0.3"), [CATALOG])
    assert carol.name == "carol"
    names = await authorizer.filter_repositories(carol, ["public/a", "team-a/b", "other"])
    assert names == ["public/a", "team-a/b", "other"]  # "**" lets every user pull
    anonymous = await authorizer.authorize(request_with(client="10.0.0.3"), [CATALOG])
    assert anonymous.anonymous
    names = await authorizer.filter_repositories(anonymous, ["public/a", "team-a/b", "other"])
    assert names == ["public/a"]


def _attributes(request) -> set:
    return set(vars(request))


@pytest_twisted.ensureDeferred
async def test_who_a_request_comes_from_is_returned_not_stored_on_it(state):
    """authorize returns a Principal; later questions get it explicitly; the request object stays as it was."""
    authorizer = BasicAuthorizer(state, sync_login(state))
    request = request_with(basic_header("alice", "pass"))
    before = _attributes(request)
    alice = await authorizer.authorize(request, [push("team-a/app")])
    assert _attributes(request) == before
    assert (alice.name, alice.anonymous, alice.identity.groups) == ("alice", False, {"team-a"})
    # A second question about the same request (a mount's source) reuses who it is: no second login
    # (a request without credentials is alice's once she is the principal it is asked for).
    assert await authorizer.authorize(request_with(), [push("team-a/other")], alice) is alice
    with pytest.raises(Denied):
        await authorizer.authorize(request_with(), [push("other/x")], alice)
    # OpenAccess: anyone, anonymous.
    assert (await OpenAccess().authorize(request_with(), [push("x")])).anonymous

    key = ec.generate_private_key(ec.SECP256R1())
    issuer = TokenIssuer(key, "i", "s")
    tokens = TokenAuthorizer(TokenVerifier([key.public_key()], "i", "s"), "s", None)
    token = issuer.issue("bob", [Access("repository", "a/b", ("pull",)), Access("registry", "catalog", ("*",))])
    request = request_with({"Authorization": f"Bearer {token.token}"})
    before = _attributes(request)
    bob = await tokens.authorize(request, [CATALOG])
    assert _attributes(request) == before
    assert (bob.name, bob.token.subject) == ("bob", "bob")
    # With an external token server, the catalog scope shows every repository.
    assert await tokens.filter_repositories(bob, ["a/b", "c/d"]) == ["a/b", "c/d"]
    # A principal another authorizer returned holds no token: it is shown nothing.
    assert await tokens.filter_repositories(alice, ["a/b", "c/d"]) == []


@pytest_twisted.ensureDeferred
async def test_token_endpoint_in_memory(state, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = TokenIssuer(key, "ociregistry", "svc")
    server = TokenServer(state, sync_login(state), issuer)
    client = StubTreq(TokenRoute(OpenAccess_resource(), server))
    response = await client.get(
        "http://registry/token?service=svc&scope=repository:team-a/app:pull,push,delete",
        headers=basic_header("alice", "pass"),
    )
    assert response.code == 200
    body = json.loads(await response.content())
    claims = jwt.decode(body["token"], key.public_key(), algorithms=["ES256"], audience="svc")
    assert claims["access"] == [{"type": "repository", "name": "team-a/app", "actions": ["pull", "push", "delete"]}]
    response = await client.get("http://registry/somewhere-else")
    assert response.code == 200 and await response.content() == b"registry"
    for _ in range(2):
        response = await client.get("http://registry/token", headers=basic_header("alice", "bad"))
        assert response.code == 401
    response = await client.get("http://registry/token", headers=basic_header("alice", "pass"))
    assert response.code == 429
    assert json.loads(await response.content())["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert grant(state, state.identity(None), [Access("repository", "NOT/valid", ("pull",))]) == []


def OpenAccess_resource():
    from twisted.web.resource import Resource

    class Registry(Resource):
        isLeaf = True

        def render(self, request):
            return b"registry"

    return Registry()


# ------------------------------------------------------------ login pool


@pytest_twisted.ensureDeferred
async def test_the_login_pool_takes_a_bounded_number_of_checks():
    import threading

    from oci_registry.auth.pool import LoginPool
    from oci_registry.errors import Unavailable

    pool = LoginPool(threads=1, max_waiting=2)
    release = threading.Event()
    try:
        taken = [pool.run(release.wait, 10) for _ in range(3)]
        with pytest.raises(Unavailable) as refused:
            pool.run(release.wait, 10)
        assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
        taken[0].cancel()  # whoever asked stopped waiting: the check still holds its place until its thread is done
        taken[0].addErrback(lambda _: None)
        with pytest.raises(Unavailable):
            pool.run(release.wait, 10)
        release.set()
        assert await taken[1] is True and await taken[2] is True
        name = await pool.run(lambda: threading.current_thread().name)
        assert "ociregistry-login" in name
        assert pool.in_flight == 0
    finally:
        release.set()
        pool.stop()
    assert not pool.running


def test_the_login_pool_runs_with_the_auth_service(tmp_path):
    (tmp_path / "htpasswd").write_text("alice:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\n")
    auth = build_auth(Config.from_dict({"data_dir": str(tmp_path), "auth": {"htpasswd": str(tmp_path / "htpasswd")}}))
    service = auth.service()
    assert not auth.login_pool.running
    service.startService()
    try:
        assert auth.login_pool.running
    finally:
        service.stopService()
    assert not auth.login_pool.running
    assert build_auth(Config(data_dir=str(tmp_path))).service() is None


@pytest_twisted.ensureDeferred
async def test_logins_do_not_wait_for_the_reactors_thread_pool(tmp_path):
    """Every thread of the reactor's shared pool busy (slow transfers, say): a login is still checked at once."""
    import http.client
    import threading

    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    from oci_registry.compose import build

    (tmp_path / "htpasswd").write_text("alice:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\n")
    config = Config.from_dict(
        {"data_dir": str(tmp_path / "data"), "auth": {"htpasswd": str(tmp_path / "htpasswd"), "admins": ["alice"]}}
    )
    components = build(config, reactor)
    site = components.site
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    shared = reactor.getThreadPool()
    release = threading.Event()
    try:
        for _ in range(shared.max + 5):
            reactor.callInThread(release.wait, 20)
        # The client runs in a thread of its own (treq would resolve 127.0.0.1 in the shared pool).
        answered: Deferred = Deferred()

        def client():
            connection = http.client.HTTPConnection("127.0.0.1", port.getHost().port, timeout=10)
            try:
                connection.request("GET", "/v2/", headers=basic_header("alice", "pass"))
                result = connection.getresponse().status
            except OSError as e:
                result = e
            finally:
                connection.close()
            reactor.callFromThread(answered.callback, result)

        threading.Thread(target=client, daemon=True).start()
        assert await answered == 200
    finally:
        release.set()
        await port.stopListening()
        components.auth.login_pool.stop()


def test_build_auth_without_config_is_open(tmp_path):
    auth = build_auth(Config(data_dir=str(tmp_path)))
    assert isinstance(auth.authorizer, OpenAccess)
    with capturedLogs() as events:
        auth.announce()
    assert "open to anyone" in messages(events)


def test_build_auth_reports_unusable_files(tmp_path):
    config = Config.from_dict({"data_dir": str(tmp_path), "auth": {"htpasswd": str(tmp_path / "missing")}})
    with pytest.raises(ConfigError, match="missing"):
        build_auth(config)
