"""
Helpers for the auth tests: htpasswd files, registry processes with an
``auth`` section, HTTP calls with Basic or Bearer credentials, a tiny image
to push, and a self-signed TLS certificate.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import bcrypt

from registry_process import RegistryProcess, free_port

HTPASSWD = shutil.which("htpasswd")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"

# Users of the test htpasswd file and their passwords.
PASSWORDS = {
    "alice": "alice-secret",  # team-a, may delete in team-a, may push to public
    "bob": "bob-secret",  # team-a
    "carol": "carol-secret",  # no team: may pull shared/*
    "olivia": "olivia-secret",  # ops: admin
}

RULES = """\
  realm: test-registry
  groups:
    team-a: [alice, bob]
    ops: [olivia]
  admins: ["@ops"]
  access:
    - repository: "public/**"
      pull: [anonymous]
      push: [alice]
    - repository: "team-a/**"
      pull: ["@team-a"]
      push: ["@team-a"]
      delete: [alice]
    - repository: "shared/*"
      pull: [authenticated]
"""


def write_htpasswd(path, users: dict[str, str], cost: int = 5) -> None:
    """An htpasswd file with bcrypt hashes: made by ``htpasswd -B`` when installed, else by the bcrypt module."""
    lines = []
    for user, password in users.items():
        if HTPASSWD:
            out = subprocess.run(
                [HTPASSWD, "-nbB", "-C", str(cost), user, password], check=True, capture_output=True, text=True
            ).stdout
            lines.append(out.strip())
        else:
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode().replace("$2b$", "$2y$", 1)
            lines.append(f"{user}:{hashed}")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def start_registry(root, auth_yaml: str, extra_args=(), extra_config: str = "") -> RegistryProcess:
    """A registry process whose config file (in ``root``) has ``auth_yaml`` as its auth section."""
    config = root / "config.yaml"
    config.write_text("auth:\n" + auth_yaml + extra_config)
    return RegistryProcess(str(root / "data"), config=str(config), extra_args=list(extra_args)).start()


# ---------------------------------------------------------------------- http


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def error_codes(self) -> list[str]:
        try:
            return [e["code"] for e in self.json()["errors"]]
        except (ValueError, KeyError, TypeError):
            return []


def basic(user: str, password: str | None = None) -> dict:
    password = PASSWORDS[user] if password is None else password
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def call(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    cafile: str | None = None,
    source: str | None = None,
) -> Reply:
    """One request on a fresh connection to ``base`` (http:// or https://), from the address ``source`` if given."""
    parts = urlsplit(base)
    source_address = (source, 0) if source else None
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=cafile)
        connection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=30, context=context, source_address=source_address
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30, source_address=source_address)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(base: str, name: str, data: bytes, headers: dict) -> Reply:
    """POST then PUT of one blob; the reply of the first request that failed, or of the PUT."""
    started = call(base, "POST", f"/v2/{name}/blobs/uploads/", b"", headers)
    if started.status != 202:
        return started
    location = started.headers["location"]
    separator = "&" if "?" in location else "?"
    return call(
        base,
        "PUT",
        f"{location}{separator}digest={sha256_digest(data)}",
        data,
        {**headers, "Content-Type": "application/octet-stream"},
    )


def image(seed: str) -> tuple[bytes, bytes, bytes]:
    """``(config, layer, manifest)`` of a one-layer OCI image, distinct per seed."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = f"layer of {seed}".encode() * 10
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256_digest(layer), "size": len(layer)}],
        },
        indent=2,
    ).encode()
    return config, layer, manifest


def push_image(base: str, name: str, tag: str, headers: dict, seed: str | None = None) -> Reply:
    """Push a small image; the reply of the first failing request, or of the manifest PUT."""
    config, layer, manifest = image(seed or f"{name}:{tag}")
    for blob in (config, layer):
        reply = push_blob(base, name, blob, headers)
        if reply.status != 201:
            return reply
    return call(base, "PUT", f"/v2/{name}/manifests/{tag}", manifest, {**headers, "Content-Type": OCI_MANIFEST})


def get_manifest(base: str, name: str, tag: str, headers: dict) -> Reply:
    return call(base, "GET", f"/v2/{name}/manifests/{tag}", None, {**headers, "Accept": OCI_MANIFEST})


def get_token(
    base: str, scopes=(), headers: dict | None = None, service: str | None = "test-service", cafile: str | None = None
) -> Reply:
    query = [("service", service)] if service else []
    query += [("scope", s) for s in scopes]
    return call(base, "GET", "/token?" + urlencode(query), None, headers, cafile=cafile)


def parse_challenge(value: str) -> tuple[str, dict]:
    """``Bearer realm="x",service="y"`` -> ``("bearer", {"realm": "x", "service": "y"})``."""
    scheme, _, rest = value.partition(" ")
    params = {}
    for part in _split_params(rest):
        key, _, val = part.partition("=")
        params[key.strip().lower()] = val.strip().strip('"')
    return scheme.lower(), params


def _split_params(text: str) -> list[str]:
    parts, current, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return parts


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


# ----------------------------------------------------------------------- tls


def self_signed_certificate(directory) -> tuple[str, str]:
    """``(key.pem, cert.pem)`` for 127.0.0.1 and localhost, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def tls_listen(port: int, key_path: str, cert_path: str) -> str:
    return f"ssl:{port}:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"


__all__ = ["free_port"]
