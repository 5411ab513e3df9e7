"""
The real ``skopeo`` client against registries with auth, over plain HTTP and
over TLS (a self-signed certificate made here, trusted through
``--cert-dir``/``--dest-cert-dir``/``--src-cert-dir``):

- Basic auth with an htpasswd file made by ``htpasswd -B``: ``skopeo login``
  and a push as a user with push rights, an anonymous pull where allowed,
  and refusals (401 anonymous, 403 for a user without the right);
- the same with token auth (the built-in ``/token`` endpoint).

Credentials go through ``--authfile`` files in a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from auth_helpers import (
    HTPASSWD,
    PASSWORDS,
    RULES,
    basic,
    call,
    free_port,
    self_signed_certificate,
    start_registry,
    tls_listen,
)
from image_builder import OCILayout

SKOPEO = shutil.which("skopeo")
TIMEOUT = 60

pytestmark = [
    pytest.mark.ociregistry_only,
    pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed"),
    pytest.mark.skipif(HTPASSWD is None, reason="htpasswd (apache2-utils) is not installed"),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    directory = tmp_path_factory.mktemp("skopeo-auth")
    (directory / "registries.conf").write_text("")
    environment = dict(os.environ)
    environment["CONTAINERS_REGISTRIES_CONF"] = str(directory / "registries.conf")
    environment["REGISTRY_AUTH_FILE"] = str(directory / "unused-auth.json")
    environment["TMPDIR"] = str(tmp_path_factory.mktemp("skopeo-tmp"))
    environment.pop("DOCKER_CONFIG", None)
    return environment


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """``(key, cert, cert_dir)``: a certificate for 127.0.0.1 and a directory skopeo trusts it from."""
    directory = tmp_path_factory.mktemp("tls")
    key, cert = self_signed_certificate(str(directory))
    cert_dir = directory / "certs"
    cert_dir.mkdir()
    shutil.copy(cert, cert_dir / "ca.crt")
    return key, cert, str(cert_dir)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    source = OCILayout(tmp_path_factory.mktemp("layout"))
    source.add_image("v1", layers=2, layer_size=64 << 10, seed="auth-e2e")
    return source


def _start(tmp_path_factory, tls, auth_yaml: str):
    root = tmp_path_factory.mktemp("registry")
    # The file made by the real htpasswd tool, bcrypt (-B).
    path = root / "htpasswd"
    subprocess.run([HTPASSWD, "-cbB", str(path), "alice", PASSWORDS["alice"]], check=True, capture_output=True)
    for user in ("bob", "carol", "olivia"):
        subprocess.run([HTPASSWD, "-bB", str(path), user, PASSWORDS[user]], check=True, capture_output=True)
    assert path.read_text().count(":$2y$") == 4
    key, cert, _ = tls
    tls_port = free_port()
    process = start_registry(root, auth_yaml, extra_args=["--listen", tls_listen(tls_port, key, cert)])
    process.tls_host = f"127.0.0.1:{tls_port}"
    return process


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory, tls):
    process = _start(tmp_path_factory, tls, "  htpasswd: htpasswd\n" + RULES)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory, tls):
    process = _start(tmp_path_factory, tls, "  htpasswd: htpasswd\n  token: {service: skopeo-test}\n" + RULES)
    yield process
    process.stop()


class Skopeo:
    def __init__(self, env, directory):
        self.env = env
        self.directory = directory

    def authfile(self, name: str) -> str:
        path = os.path.join(self.directory, f"{name}-auth.json")
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write('{"auths": {}}')
        return path

    def __call__(self, *args, check=True, stdin: str | None = None) -> subprocess.CompletedProcess:
        command = [SKOPEO, "--insecure-policy", *map(str, args)]
        result = subprocess.run(
            command, env=self.env, capture_output=True, timeout=TIMEOUT, input=stdin, check=False, text=True
        )
        if check and result.returncode != 0:
            pytest.fail(f"{' '.join(command)} exited with {result.returncode}:\n{result.stderr[-3000:]}")
        return result

    def login(self, host: str, user: str, password: str | None = None, tls_args=("--tls-verify=false",), check=True):
        return self(
            "login",
            "--authfile",
            self.authfile(user),
            *tls_args,
            "-u",
            user,
            "--password-stdin",
            host,
            stdin=PASSWORDS[user] if password is None else password,
            check=check,
        )

    def copy(self, source: str, destination: str, user: str | None, *tls_args: str, check=True):
        return self(
            "copy",
            "--quiet",
            "--retry-times",
            "0",
            "--authfile",
            self.authfile(user or "anonymous"),
            *tls_args,
            source,
            destination,
            check=check,
        )


@pytest.fixture
def skopeo(env, tmp_path):
    return Skopeo(env, str(tmp_path))


PLAIN = ("--src-tls-verify=false", "--dest-tls-verify=false")


def refused(result, *words: str) -> bool:
    text = result.stderr.lower()
    return result.returncode != 0 and any(w in text for w in words)


# ------------------------------------------------------------------ basic


def test_basic_login_push_and_pull(basic_registry, skopeo, layout, tmp_path):
    host = basic_registry.host
    wrong = skopeo.login(host, "alice", "not-the-password", check=False)
    assert refused(wrong, "unauthorized", "401", "invalid username/password"), wrong.stderr
    skopeo.login(host, "alice")
    skopeo.copy(layout.reference("v1"), f"docker://{host}/team-a/app:v1", "alice", *PLAIN)
    skopeo.copy(layout.reference("v1"), f"docker://{host}/public/app:v1", "alice", *PLAIN)
    pulled = OCILayout(tmp_path / "pulled")
    skopeo.copy(f"docker://{host}/team-a/app:v1", pulled.reference("v1"), "alice", *PLAIN)
    assert pulled.resolve("v1")["digest"] == layout.resolve("v1")["digest"]


def test_basic_anonymous_pull_only_where_allowed(basic_registry, skopeo, layout, tmp_path):
    host = basic_registry.host
    skopeo.login(host, "olivia")
    skopeo.copy(layout.reference("v1"), f"docker://{host}/public/anon:v1", "olivia", *PLAIN)
    skopeo.copy(layout.reference("v1"), f"docker://{host}/team-a/anon:v1", "olivia", *PLAIN)
    pulled = OCILayout(tmp_path / "pulled")
    skopeo.copy(f"docker://{host}/public/anon:v1", pulled.reference("v1"), None, *PLAIN)
    result = skopeo.copy(f"docker://{host}/team-a/anon:v1", pulled.reference("v2"), None, *PLAIN, check=False)
    assert refused(result, "unauthorized", "authentication required", "401"), result.stderr
    result = skopeo.copy(layout.reference("v1"), f"docker://{host}/public/anon:v2", None, *PLAIN, check=False)
    assert refused(result, "unauthorized", "authentication required", "401"), result.stderr


def test_basic_user_without_the_right_is_denied(basic_registry, skopeo, layout, tmp_path):
    host = basic_registry.host
    skopeo.login(host, "carol")
    result = skopeo.copy(layout.reference("v1"), f"docker://{host}/team-a/carol:v1", "carol", *PLAIN, check=False)
    assert refused(result, "denied", "403"), result.stderr
    skopeo.login(host, "bob")
    result = skopeo.copy(layout.reference("v1"), f"docker://{host}/public/bob:v1", "bob", *PLAIN, check=False)
    assert refused(result, "denied", "403"), result.stderr


def test_basic_over_tls(basic_registry, skopeo, layout, tls, tmp_path):
    _, cert, cert_dir = tls
    host = basic_registry.tls_host
    untrusted = skopeo.login(host, "alice", tls_args=(), check=False)
    assert refused(untrusted, "certificate", "x509"), untrusted.stderr
    skopeo.login(host, "alice", tls_args=("--cert-dir", cert_dir))
    skopeo.copy(layout.reference("v1"), f"docker://{host}/team-a/tls:v1", "alice", "--dest-cert-dir", cert_dir)
    pulled = OCILayout(tmp_path / "pulled")
    skopeo.copy(f"docker://{host}/team-a/tls:v1", pulled.reference("v1"), "alice", "--src-cert-dir", cert_dir)
    assert pulled.resolve("v1")["digest"] == layout.resolve("v1")["digest"]
    result = skopeo.copy(
        f"docker://{host}/team-a/tls:v1", pulled.reference("v2"), None, "--src-cert-dir", cert_dir, check=False
    )
    assert refused(result, "unauthorized", "authentication required", "401"), result.stderr
    # The same registry, seen with Python's TLS client and the certificate as the only trust anchor.
    reply = call(f"https://{host}", "GET", "/v2/team-a/tls/tags/list", headers=basic("alice"), cafile=cert)
    assert reply.status == 200 and reply.json()["tags"] == ["v1"]


# ------------------------------------------------------------------ token


def test_token_login_push_and_pull(token_registry, skopeo, layout, tmp_path):
    host = token_registry.host
    wrong = skopeo.login(host, "bob", "not-the-password", check=False)
    assert refused(wrong, "unauthorized", "401", "invalid username/password"), wrong.stderr
    skopeo.login(host, "bob")
    skopeo.copy(layout.reference("v1"), f"docker://{host}/team-a/tok:v1", "bob", *PLAIN)
    pulled = OCILayout(tmp_path / "pulled")
    skopeo.copy(f"docker://{host}/team-a/tok:v1", pulled.reference("v1"), "bob", *PLAIN)
    assert pulled.resolve("v1")["digest"] == layout.resolve("v1")["digest"]
    assert "token for bob granting repository:team-a/tok:pull,push" in token_registry.log()


def test_token_refusals(token_registry, skopeo, layout, tmp_path):
    host = token_registry.host
    skopeo.login(host, "alice")
    skopeo.copy(layout.reference("v1"), f"docker://{host}/public/tok:v1", "alice", *PLAIN)
    pulled = OCILayout(tmp_path / "pulled")
    skopeo.copy(f"docker://{host}/public/tok:v1", pulled.reference("v1"), None, *PLAIN)
    result = skopeo.copy(f"docker://{host}/team-a/tok-private:v1", pulled.reference("v2"), None, *PLAIN, check=False)
    assert refused(result, "unauthorized", "authentication required", "401"), result.stderr
    skopeo.login(host, "carol")
    result = skopeo.copy(layout.reference("v1"), f"docker://{host}/team-a/carol:v1", "carol", *PLAIN, check=False)
    assert refused(result, "denied", "403"), result.stderr


def test_token_over_tls(token_registry, skopeo, layout, tls, tmp_path):
    _, cert, cert_dir = tls
    host = token_registry.tls_host
    skopeo.login(host, "alice", tls_args=("--cert-dir", cert_dir))
    skopeo.copy(layout.reference("v1"), f"docker://{host}/team-a/tls:v1", "alice", "--dest-cert-dir", cert_dir)
    pulled = OCILayout(tmp_path / "pulled")
    skopeo.copy(f"docker://{host}/team-a/tls:v1", pulled.reference("v1"), "alice", "--src-cert-dir", cert_dir)
    assert pulled.resolve("v1")["digest"] == layout.resolve("v1")["digest"]
    result = skopeo.copy(
        f"docker://{host}/team-a/tls:v1", pulled.reference("v2"), None, "--src-cert-dir", cert_dir, check=False
    )
    assert refused(result, "unauthorized", "authentication required", "401"), result.stderr
    # Over TLS the challenge names this registry's own https token endpoint.
    reply = call(f"https://{host}", "GET", "/v2/", cafile=cert)
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == f'Bearer realm="https://{host}/token",service="skopeo-test"'
