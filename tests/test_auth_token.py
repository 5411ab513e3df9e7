"""
Token auth against real registry processes: the challenge, the built-in
``/token`` endpoint (GET with Basic or anonymous, POST password grant), the
JWT it signs (checked here with PyJWT and the key from the data directory),
every right and refusal with tokens, and a registry trusting an external
token server's certificate.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
import uuid
from urllib.parse import urlencode

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from auth_helpers import (
    PASSWORDS,
    RULES,
    basic,
    bearer,
    call,
    get_manifest,
    get_token,
    image,
    parse_challenge,
    push_image,
    sha256_digest,
    start_registry,
    write_htpasswd,
)
from proxy_helpers import TokenServer
from registry_process import RegistryProcess

pytestmark = pytest.mark.ociregistry_only

SERVICE = "test-service"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("token-auth")
    write_htpasswd(root / "htpasswd", PASSWORDS)
    process = start_registry(
        root, "  htpasswd: htpasswd\n  token: {service: test-service, issuer: test-issuer}\n" + RULES
    )
    process.key_path = root / "data" / "auth" / "token-key.pem"
    yield process
    process.stop()


def token_for(registry, user: str | None, *scopes: str) -> str:
    reply = get_token(registry.url, scopes, basic(user) if user else {})
    assert reply.status == 200, (reply.status, reply.body)
    return reply.json()["token"]


def decode(registry, token: str) -> dict:
    key = serialization.load_pem_private_key(registry.key_path.read_bytes(), None).public_key()
    return jwt.decode(token, key, algorithms=["ES256"], audience=SERVICE, issuer="test-issuer")


def access_of(registry, token: str) -> dict:
    return {(a["type"], a["name"]): sorted(a["actions"]) for a in decode(registry, token)["access"]}


def with_token(registry, user, scope):
    return bearer(token_for(registry, user, scope))


# ------------------------------------------------------------- challenge


def test_challenge_points_at_this_registrys_token_endpoint(registry):
    reply = call(registry.url, "GET", "/v2/")
    assert reply.status == 401
    scheme, params = parse_challenge(reply.headers["www-authenticate"])
    assert scheme == "bearer"
    assert params == {"realm": f"http://{registry.host}/token", "service": SERVICE}

    reply = call(registry.url, "GET", "/v2/team-a/app/manifests/v1")
    scheme, params = parse_challenge(reply.headers["www-authenticate"])
    assert params["scope"] == "repository:team-a/app:pull"
    assert reply.error_codes == ["UNAUTHORIZED"]

    reply = call(registry.url, "POST", "/v2/team-a/app/blobs/uploads/", b"")
    assert parse_challenge(reply.headers["www-authenticate"])[1]["scope"] == "repository:team-a/app:pull,push"
    reply = call(registry.url, "GET", "/v2/_catalog")
    assert parse_challenge(reply.headers["www-authenticate"])[1]["scope"] == "registry:catalog:*"


def test_basic_credentials_are_not_enough_in_token_mode(registry):
    reply = call(registry.url, "GET", "/v2/", headers=basic("olivia"))
    assert reply.status == 401
    assert reply.headers["www-authenticate"].startswith("Bearer ")


# ---------------------------------------------------------- the endpoint


def test_token_endpoint_grants_the_intersection(registry):
    reply = get_token(
        registry.url,
        ["repository:team-a/app:pull,push,delete", "repository:private/x:pull", "registry:catalog:*"],
        basic("bob"),
    )
    assert reply.status == 200
    body = reply.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert body["issued_at"].endswith("Z")
    assert reply.headers["content-type"] == "application/json"
    claims = decode(registry, body["token"])
    assert claims["sub"] == "bob"
    assert claims["iss"] == "test-issuer" and claims["aud"] == SERVICE
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] <= claims["iat"]
    assert claims["jti"]
    assert access_of(registry, body["token"]) == {
        ("repository", "team-a/app"): ["pull", "push"],
        ("registry", "catalog"): ["*"],
    }
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "ES256" and len(header["kid"].split(":")) == 12


def test_anonymous_token(registry):
    token = token_for(registry, None, "repository:public/base:pull,push", "repository:team-a/app:pull")
    assert decode(registry, token)["sub"] == ""
    assert access_of(registry, token) == {("repository", "public/base"): ["pull"]}


def test_token_endpoint_refuses_wrong_passwords(registry):
    reply = get_token(registry.url, ["repository:team-a/app:pull"], basic("bob", "wrong"))
    assert reply.status == 401
    assert reply.headers["www-authenticate"].startswith("Basic ")
    assert PASSWORDS["bob"] not in registry.log()
    assert get_token(registry.url, [], basic("bob"), service="another-service").status == 400


def test_admin_token_and_star(registry):
    token = token_for(registry, "olivia", "repository:private/secret:*")
    assert access_of(registry, token) == {("repository", "private/secret"): ["delete", "pull", "push"]}


def test_password_grant(registry):
    form = urlencode(
        {
            "grant_type": "password",
            "username": "alice",
            "password": PASSWORDS["alice"],
            "service": SERVICE,
            "scope": "repository:team-a/app:pull repository:public/x:push",
            "client_id": "test",
        }
    ).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    reply = call(registry.url, "POST", "/token", form, headers)
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300
    assert access_of(registry, body["access_token"]) == {
        ("repository", "team-a/app"): ["pull"],
        ("repository", "public/x"): ["push"],
    }
    wrong = urlencode({"grant_type": "password", "username": "alice", "password": "nope"}).encode()
    reply = call(registry.url, "POST", "/token", wrong, headers)
    assert reply.status == 401 and reply.json()["error"] == "invalid_grant"
    refresh = urlencode({"grant_type": "refresh_token", "refresh_token": "x"}).encode()
    reply = call(registry.url, "POST", "/token", refresh, headers)
    assert reply.status == 400 and reply.json()["error"] == "unsupported_grant_type"


def test_token_requests_are_bounded(registry):
    """A token request names a few scopes; 100,000 of them took 2.5 s of the reactor and made an 11 MB token."""
    many = " ".join(f"repository:public/r{i}:pull" for i in range(100_000))
    form = urlencode({"grant_type": "password", "username": "alice", "password": PASSWORDS["alice"], "scope": many})
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    started = time.monotonic()
    reply = call(registry.url, "POST", "/token", form.encode(), headers)
    assert reply.status == 413 and reply.json()["error"] == "invalid_request", reply.body[:200]
    assert time.monotonic() - started < 1.0
    scopes = [f"repository:public/r{i}:pull" for i in range(65)]
    form = urlencode({"grant_type": "password", "username": "alice", "password": PASSWORDS["alice"]})
    reply = call(registry.url, "POST", "/token", f"{form}&{urlencode({'scope': ' '.join(scopes)})}".encode(), headers)
    assert reply.status == 400 and reply.json()["error"] == "invalid_scope"
    reply = get_token(registry.url, scopes, basic("alice"))
    assert reply.status == 400 and reply.error_codes, reply.body
    assert get_token(registry.url, scopes[:64], basic("alice")).status == 200


# ---------------------------------------------------------------- rights


def test_setup_images(registry):
    for name in ("team-a/app", "public/base", "private/secret"):
        token = token_for(registry, "olivia", f"repository:{name}:pull,push")
        assert push_image(registry.url, name, "v1", bearer(token)).status == 201


def test_pull_with_tokens(registry):
    assert (
        get_manifest(registry.url, "team-a/app", "v1", with_token(registry, "bob", "repository:team-a/app:pull")).status
        == 200
    )
    assert (
        get_manifest(
            registry.url, "public/base", "v1", with_token(registry, None, "repository:public/base:pull")
        ).status
        == 200
    )
    # An anonymous token does not open team-a/app: 401, so the client may log in.
    reply = get_manifest(registry.url, "team-a/app", "v1", with_token(registry, None, "repository:team-a/app:pull"))
    assert reply.status == 401
    assert 'error="insufficient_scope"' in reply.headers["www-authenticate"]
    # carol logged in but may not pull there: 403.
    reply = get_manifest(registry.url, "team-a/app", "v1", with_token(registry, "carol", "repository:team-a/app:pull"))
    assert reply.status == 403 and reply.error_codes == ["DENIED"]
    # A token for another repository does not open this one; bob may have it, so 401 for a new token.
    reply = get_manifest(registry.url, "team-a/app", "v1", with_token(registry, "bob", "repository:team-a/x:pull"))
    assert reply.status == 401
    assert 'scope="repository:team-a/app:pull"' in reply.headers["www-authenticate"]


def test_push_with_tokens(registry):
    token = token_for(registry, "bob", "repository:team-a/pushed:pull,push")
    assert push_image(registry.url, "team-a/pushed", "v1", bearer(token)).status == 201
    pull_only = token_for(registry, "bob", "repository:team-a/pushed:pull")
    reply = push_image(registry.url, "team-a/pushed", "v2", bearer(pull_only))
    assert reply.status == 401 and 'error="insufficient_scope"' in reply.headers["www-authenticate"]
    carol = token_for(registry, "carol", "repository:team-a/pushed:pull,push")
    assert push_image(registry.url, "team-a/pushed", "v3", bearer(carol)).status == 403
    anonymous = token_for(registry, None, "repository:public/anon:pull,push")
    assert push_image(registry.url, "public/anon", "v1", bearer(anonymous)).status == 401


def test_delete_with_tokens(registry):
    manifest = image("team-a/app:v1")[2]
    path = f"/v2/team-a/app/manifests/{sha256_digest(manifest)}"
    bob = with_token(registry, "bob", "repository:team-a/app:delete")
    assert call(registry.url, "DELETE", path, headers=bob).status == 403
    assert (
        call(registry.url, "DELETE", path, headers=with_token(registry, None, "repository:team-a/app:delete")).status
        == 401
    )
    alice = with_token(registry, "alice", "repository:team-a/app:delete")
    assert call(registry.url, "DELETE", path, headers=alice).status == 202


def test_catalog_with_tokens(registry):
    def names(user):
        reply = call(registry.url, "GET", "/v2/_catalog", headers=with_token(registry, user, "registry:catalog:*"))
        assert reply.status == 200, reply.body
        return set(reply.json()["repositories"])

    assert {"team-a/app", "public/base", "private/secret"} <= names("olivia")
    assert "private/secret" not in names("bob") and "team-a/app" in names("bob")
    assert names("carol") == {n for n in names("olivia") if n.startswith("public/")}
    assert names(None) == names("carol")
    # A token without the catalog scope is not enough.
    reply = call(registry.url, "GET", "/v2/_catalog", headers=with_token(registry, "olivia", "repository:x/y:pull"))
    assert reply.status == 401


def challenged_scopes(reply) -> set[str]:
    """The scopes a 401's Bearer challenge asks for, each with its actions sorted (Distribution's order varies)."""
    scheme, params = parse_challenge(reply.headers["www-authenticate"])
    assert scheme == "bearer" and params.get("error") == "insufficient_scope", reply.headers["www-authenticate"]
    scopes = set()
    for scope in params["scope"].split():
        kind_and_name, _, actions = scope.rpartition(":")
        scopes.add(f"{kind_and_name}:{','.join(sorted(actions.split(',')))}")
    return scopes


def test_a_mount_needs_a_token_that_may_pull_its_source(registry):
    olivia = bearer(
        token_for(registry, "olivia", "repository:private/mine:pull,push", "repository:team-a/src:pull,push")
    )
    for name in ("private/mine", "team-a/src"):
        assert push_image(registry.url, name, "v1", olivia).status == 201
    bob = ("repository:team-a/dst:pull,push", "registry:catalog:*")

    # bob may pull team-a/src by the rules, but his token does not say so: 401, for a wider token.
    layer = image("team-a/src:v1")[1]
    mount = f"/v2/team-a/dst/blobs/uploads/?mount={sha256_digest(layer)}&from=team-a/src"
    token = with_token(registry, "bob", " ".join(bob))
    reply = call(registry.url, "POST", mount, b"", token)
    assert reply.status == 401 and reply.error_codes == ["UNAUTHORIZED"]
    assert challenged_scopes(reply) == {"repository:team-a/dst:pull,push", "repository:team-a/src:pull"}
    assert call(registry.url, "HEAD", f"/v2/team-a/dst/blobs/{sha256_digest(layer)}", headers=token).status == 404
    wider = with_token(registry, "bob", " ".join(bob) + " repository:team-a/src:pull")
    assert call(registry.url, "POST", mount, b"", wider).status == 201
    assert call(registry.url, "GET", f"/v2/team-a/dst/blobs/{sha256_digest(layer)}", headers=wider).body == layer

    # The rules do not let bob pull private/mine: no wider token would help, so an ordinary upload starts.
    secret = image("private/mine:v1")[1]
    mount = f"/v2/team-a/dst/blobs/uploads/?mount={sha256_digest(secret)}&from=private/mine"
    wanting = with_token(registry, "bob", " ".join(bob) + " repository:private/mine:pull")
    reply = call(registry.url, "POST", mount, b"", wanting)
    assert reply.status == 202 and reply.headers["location"].startswith("/v2/team-a/dst/blobs/uploads/")
    assert call(registry.url, "HEAD", f"/v2/team-a/dst/blobs/{sha256_digest(secret)}", headers=wanting).status == 404


def hmac_token(claims: dict, public_key) -> str:
    """The algorithm-confusion attack: HS256 keyed with the verifier's own public key."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    secret = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def test_bad_tokens_are_refused(registry):
    good = token_for(registry, "olivia", "repository:private/secret:pull")
    key = serialization.load_pem_private_key(registry.key_path.read_bytes(), None)
    claims = decode(registry, good)
    other_key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    cases = {
        "tampered": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
        "other key": jwt.encode(claims, other_key, algorithm="ES256"),
        "expired": jwt.encode(
            {**claims, "exp": now - 3600, "iat": now - 4000, "nbf": now - 4000}, key, algorithm="ES256"
        ),
        "wrong audience": jwt.encode({**claims, "aud": "elsewhere"}, key, algorithm="ES256"),
        "wrong issuer": jwt.encode({**claims, "iss": "mallory"}, key, algorithm="ES256"),
        "hmac with the public key": hmac_token(claims, key.public_key()),
        "no signature": jwt.encode(claims, None, algorithm="none"),
        "not a jwt": "abc.def",
    }
    path = "/v2/private/secret/manifests/v1"
    assert get_manifest(registry.url, "private/secret", "v1", bearer(good)).status == 200
    for what, token in cases.items():
        reply = call(registry.url, "GET", path, headers=bearer(token))
        assert reply.status == 401, what
        assert 'error="invalid_token"' in reply.headers["www-authenticate"], what
    assert good not in registry.log()


# ------------------------------------------------------- external server


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """A registry trusting tokens signed by a key whose certificate it is given (RSA, like many token servers)."""
    root = tmp_path_factory.mktemp("external-token")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token-server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (root / "token-server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    process = start_registry(
        root,
        "  token:\n    realm: https://auth.example.com/token\n    service: registry\n"
        "    issuer: auth.example.com\n    public_key: token-server.pem\n",
    )
    process.signing_key = key
    yield process
    process.stop()


def external_token(external, access, **overrides):
    now = int(time.time())
    claims = {
        "iss": "auth.example.com",
        "sub": "someone",
        "aud": "registry",
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "access": access,
        **overrides,
    }
    return jwt.encode(claims, external.signing_key, algorithm="RS256")


def test_external_challenge_and_no_token_endpoint(external):
    reply = call(external.url, "GET", "/v2/x/y/tags/list")
    assert reply.status == 401
    _, params = parse_challenge(reply.headers["www-authenticate"])
    assert params == {"realm": "https://auth.example.com/token", "service": "registry", "scope": "repository:x/y:pull"}
    assert call(external.url, "GET", "/token").status == 404


def test_external_tokens_are_trusted(external):
    push = external_token(external, [{"type": "repository", "name": "ext/app", "actions": ["pull", "push"]}])
    assert push_image(external.url, "ext/app", "v1", bearer(push)).status == 201
    assert get_manifest(external.url, "ext/app", "v1", bearer(push)).status == 200
    pull = external_token(external, [{"type": "repository", "name": "ext/app", "actions": ["pull"]}])
    reply = push_image(external.url, "ext/app", "v2", bearer(pull))
    assert reply.status == 401 and 'error="insufficient_scope"' in reply.headers["www-authenticate"]
    assert call(external.url, "GET", "/v2/", headers=bearer(pull)).status == 200
    catalog = external_token(external, [{"type": "registry", "name": "catalog", "actions": ["*"]}])
    assert call(external.url, "GET", "/v2/_catalog", headers=bearer(catalog)).json()["repositories"] == ["ext/app"]
    everything = external_token(external, [{"type": "repository", "name": "ext/app", "actions": ["*"]}])
    manifest = image("ext/app:v1")[2]
    assert (
        call(
            external.url, "DELETE", f"/v2/ext/app/manifests/{sha256_digest(manifest)}", headers=bearer(everything)
        ).status
        == 202
    )


def test_external_tokens_are_checked(external):
    access = [{"type": "repository", "name": "ext/app", "actions": ["pull"]}]
    for what, token in {
        "wrong issuer": external_token(external, access, iss="mallory"),
        "wrong audience": external_token(external, access, aud="other"),
        "expired": external_token(external, access, exp=int(time.time()) - 600),
        "unknown key": jwt.encode(
            {"iss": "auth.example.com", "aud": "registry", "exp": int(time.time()) + 60, "access": access},
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            algorithm="RS256",
        ),
    }.items():
        assert call(external.url, "GET", "/v2/ext/app/tags/list", headers=bearer(token)).status == 401, what


@pytest.fixture(scope="module", params=["ociregistry", "reference"])
def trusting(request, tmp_path_factory):
    """ociregistry, then the reference registry, trusting the same kind of external token server."""
    root = tmp_path_factory.mktemp(f"trusting-{request.param}")
    server = TokenServer(root, {}).start()
    if request.param == "reference":
        process = RegistryProcess(str(root / "data"), kind="reference", reference_config=server.reference_auth())
    else:
        (root / "config.yaml").write_text(server.ociregistry_auth())
        process = RegistryProcess(str(root / "data"), config=str(root / "config.yaml"))
    process.start()
    process.sign = server.sign
    yield process
    process.stop()
    server.stop()


def test_the_catalog_scope_opens_no_repository(trusting):
    """A mount reads ``from``: it needs pull there, whatever else the token holds (a catalog scope lists names)."""
    owner = bearer(trusting.sign("owner", [{"type": "repository", "name": "private/app", "actions": ["pull", "push"]}]))
    assert push_image(trusting.url, "private/app", "v1", owner).status == 201
    layer = image("private/app:v1")[1]
    blob = f"/v2/bob/x/blobs/{sha256_digest(layer)}"
    mount = f"/v2/bob/x/blobs/uploads/?mount={sha256_digest(layer)}&from=private/app"
    bob = [{"type": "repository", "name": "bob/x", "actions": ["pull", "push"]}]
    catalog = [{"type": "registry", "name": "catalog", "actions": ["*"]}]
    for access in (bob + catalog, bob):
        token = bearer(trusting.sign("bob", access))
        reply = call(trusting.url, "POST", mount, b"", token)
        assert reply.status == 401 and reply.error_codes == ["UNAUTHORIZED"], (reply.status, reply.body)
        assert challenged_scopes(reply) == {"repository:bob/x:pull,push", "repository:private/app:pull"}
        assert call(trusting.url, "GET", blob, headers=token).status == 404
    reply = call(trusting.url, "GET", "/v2/private/app/manifests/v1", headers=bearer(trusting.sign("bob", catalog)))
    assert reply.status == 401
    wider = bearer(trusting.sign("bob", [*bob, {"type": "repository", "name": "private/app", "actions": ["pull"]}]))
    assert call(trusting.url, "POST", mount, b"", wider).status == 201
    assert call(trusting.url, "GET", blob, headers=wider).body == layer
