"""
Bearer tokens as the Docker registry token specification has them: JWTs
signed with ES256 (or RS256 and the like, for keys from elsewhere) carrying
``iss``, ``sub``, ``aud``, ``exp``, ``nbf``, ``iat``, ``jti`` and
``access: [{"type", "name", "actions"}]``.

`TokenIssuer` signs them (the built-in ``/token`` endpoint); `TokenVerifier`
checks signature, issuer, audience and lifetime, for tokens of the built-in
endpoint or of an external token server whose public key or certificate is
configured.  Only asymmetric algorithms are accepted, chosen by the type of
the configured key, so a token cannot pick ``none`` or an HMAC keyed with a
public key.  The ``kid`` header is the libtrust key ID that CNCF
Distribution computes, so a Distribution registry configured with our
certificate or key can check our tokens too.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import attr
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.logger import Logger

from .rules import ACTIONS

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

log = Logger()

LEEWAY = 30  # seconds of clock skew tolerated on exp and nbf


@attr.s(auto_attribs=True, frozen=True)
class Access:
    """One entry of a scope or of a token's ``access`` claim."""

    type: str
    name: str
    actions: tuple[str, ...]

    def to_claim(self) -> dict:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def parse_scope(text: str) -> list[Access]:
    """
    ``repository:team-a/app:pull,push registry:catalog:*`` -> `Access` values.
    The name is everything between the first and the last colon (so a name
    with a port, ``repository:host:5000/app:pull``, survives); a resource
    class (``repository(plugin)``) is dropped; malformed items are skipped.
    """
    found = []
    for item in text.split():
        kind, _, rest = item.partition(":")
        name, _, actions = rest.rpartition(":")
        kind = kind.split("(", 1)[0]
        if not kind or not name:
            continue
        wanted = tuple(a for a in dict.fromkeys(actions.split(",")) if a)
        found.append(Access(kind, name, wanted))
    return found


def format_scope(scopes) -> str:
    """The ``scope`` of a challenge, from ``(type, name, actions)`` tuples."""
    return " ".join(f"{kind}:{name}:{','.join(actions)}" for kind, name, actions in scopes)


def covers(granted: list[Access], scope) -> bool:
    """Whether a token's ``granted`` access includes every action of ``scope``."""
    kind, name, wanted = scope
    have: set[str] = set()
    for access in granted:
        if access.type == kind and access.name == name:
            have |= set(access.actions)
    if "*" in have:
        return True
    if kind == "repository" and "*" in wanted:
        return set(ACTIONS) <= have
    return set(wanted) <= have


# ------------------------------------------------------------------- keys


def libtrust_key_id(public_key) -> str:
    """The ``kid`` CNCF Distribution derives from a key: base32 of SHA-256 of the DER key, in 4-char groups."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(encoded[i : i + 4] for i in range(0, 48, 4))


def algorithm_for(private_key) -> str:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return {256: "ES256", 384: "ES384", 521: "ES512"}[private_key.curve.key_size]
    if isinstance(private_key, rsa.RSAPrivateKey):
        return "RS256"
    raise ValueError("token signing keys must be EC (P-256, P-384, P-521) or RSA")


def _algorithms_for(public_key) -> list[str]:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return ["ES256", "ES384", "ES512"]
    if isinstance(public_key, rsa.RSAPublicKey):
        return ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
    raise ValueError("token keys must be EC or RSA")


def load_or_create_signing_key(path: str):
    """
    The private key in ``path`` (PEM), made (EC P-256) on first use.  Several
    processes starting at once agree on one key: each writes its own temporary
    file and links it into place, and a loser reads the winner's key.
    """
    try:
        with open(path, "rb") as f:
            return _load_private_key(f.read(), path)
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    temporary = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            with open(path, "rb") as f:
                return _load_private_key(f.read(), path)
    finally:
        os.unlink(temporary)
    log.info("made a new token signing key in {path}", path=path)
    return key


def _load_private_key(data: bytes, path: str):
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path} is not an unencrypted PEM private key: {e}") from None
    algorithm_for(key)
    return key


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)


def load_public_keys(path: str) -> list[PublicKeyTypes]:
    """Every public key in a PEM file: certificates, public keys, or private keys (their public half)."""
    with open(path, "rb") as f:
        data = f.read()
    keys: list[PublicKeyTypes] = []
    for block in _PEM_BLOCK.finditer(data):
        label, pem = block.group(1), block.group(0)
        if label == b"CERTIFICATE":
            keys.append(x509.load_pem_x509_certificate(pem).public_key())
        elif label.endswith(b"PUBLIC KEY"):
            keys.append(serialization.load_pem_public_key(pem))
        elif label.endswith(b"PRIVATE KEY"):
            keys.append(serialization.load_pem_private_key(pem, password=None).public_key())
    if not keys:
        raise ValueError(f"{path} holds no PEM certificate or public key")
    for key in keys:
        _algorithms_for(key)
    return keys


# ----------------------------------------------------------------- tokens


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(int(timestamp), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@attr.s(auto_attribs=True, frozen=True)
class IssuedToken:
    token: str
    expires_in: int
    issued_at: str


class TokenIssuer:
    """Signs access tokens for one service (the ``aud``) as one issuer (the ``iss``)."""

    def __init__(self, private_key, issuer: str, service: str, expiry: float = 300.0, clock=time.time):
        self.private_key = private_key
        self.algorithm = algorithm_for(private_key)
        self.key_id = libtrust_key_id(private_key.public_key())
        self.issuer = issuer
        self.service = service
        self.expiry = int(expiry)
        self._clock = clock

    def issue(self, subject: str, access: list[Access]) -> IssuedToken:
        now = int(self._clock())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.expiry,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
            "access": [a.to_claim() for a in access],
        }
        token = jwt.encode(
            claims, self.private_key, algorithm=self.algorithm, headers={"kid": self.key_id, "typ": "JWT"}
        )
        return IssuedToken(token, self.expiry, rfc3339(now))


class InvalidToken(Exception):
    """A bearer token that is malformed, badly signed, expired or not for us. The message says which."""


@attr.s(auto_attribs=True, frozen=True)
class VerifiedToken:
    subject: str
    access: tuple[Access, ...]


class TokenVerifier:
    """Checks tokens signed by any of ``public_keys``, from ``issuer``, for ``audience``."""

    def __init__(self, public_keys: list, issuer: str, audience: str, clock=time.time, leeway: float = LEEWAY):
        self.keys = {libtrust_key_id(k): k for k in public_keys}
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self._clock = clock

    def verify(self, token: str) -> VerifiedToken:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidToken("malformed token") from None
        kid = header.get("kid")
        candidates = [self.keys[kid]] if kid in self.keys else list(self.keys.values())
        error = "signature does not verify"
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=_algorithms_for(key),
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway,
                    options={"require": ["exp", "iss", "aud"], "verify_iat": False},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise InvalidToken("token expired") from None
            except jwt.InvalidTokenError as e:
                error = str(e)
                if not isinstance(e, jwt.InvalidAlgorithmError):
                    raise InvalidToken(error) from None
                continue
            return VerifiedToken(str(claims.get("sub") or ""), _access_claim(claims.get("access")))
        raise InvalidToken(error)


def _access_claim(value) -> tuple[Access, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidToken("access claim is not a list")
    found = []
    for entry in value:
        if not isinstance(entry, dict):
            raise InvalidToken("access claim entries must be objects")
        kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions") or []
        if not isinstance(kind, str) or not isinstance(name, str) or not isinstance(actions, list):
            raise InvalidToken("malformed access claim entry")
        found.append(Access(kind, name, tuple(str(a) for a in actions)))
    return tuple(found)
