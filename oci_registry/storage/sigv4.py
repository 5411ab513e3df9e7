"""
AWS Signature Version 4 for S3: signed request headers and presigned URLs.

Small and dependency-free so the S3 client can run on Twisted's own HTTP
client (see ``docs/storage.md`` for why not botocore).  It follows
https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-authenticating-requests.html
and is checked against the worked examples published there
(``tests/test_s3_signing.py``) and against a real S3 server with signature
checking on.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from urllib.parse import quote

import attr

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Credentials:
    access_key: str
    secret_key: str = attr.ib(repr=False)
    session_token: str | None = attr.ib(default=None, repr=False)


def uri_encode(text: str, slash: bool = True) -> str:
    """Percent-encode everything but the unreserved characters (and ``/`` in paths)."""
    return quote(text, safe="/~" if slash else "~")


def canonical_query(query: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{uri_encode(k, False)}={uri_encode(v, False)}" for k, v in sorted(query))


@functools.lru_cache(maxsize=16)
def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """
    The key a day's requests are signed with: four HMACs, derived once per
    day, region and service (and secret), not for every request.
    """
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _signature(credentials, amz_date, region, service, method, path, query, headers, payload_hash):
    """The signature and signed-header list for a canonical request at ``amz_date`` (``YYYYMMDDTHHMMSSZ``)."""
    date = amz_date[:8]
    canonical_headers = sorted((k.lower(), " ".join(str(v).split())) for k, v in headers.items())
    signed = ";".join(k for k, _ in canonical_headers)
    canonical = "\n".join(
        [
            method,
            uri_encode(path),
            canonical_query(query),
            "".join(f"{k}:{v}\n" for k, v in canonical_headers),
            signed,
            payload_hash,
        ]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = signing_key(credentials.secret_key, date, region, service)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), signed, scope


def sign_headers(
    credentials: Credentials,
    region: str,
    method: str,
    host: str,
    path: str,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    payload_hash: str,
    now: datetime | None = None,
    service: str = "s3",
) -> dict[str, str]:
    """
    The headers to send: ``headers`` (all of which are signed) plus ``Host``,
    ``x-amz-date``, ``x-amz-content-sha256``, the session token if any and
    ``Authorization``.  ``path`` is the unencoded path (``/bucket/key``).
    """
    amz_date = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    signed_headers = dict(headers)
    signed_headers["host"] = host
    signed_headers["x-amz-date"] = amz_date
    signed_headers["x-amz-content-sha256"] = payload_hash
    if credentials.session_token:
        signed_headers["x-amz-security-token"] = credentials.session_token
    signature, signed, scope = _signature(
        credentials, amz_date, region, service, method, path, query, signed_headers, payload_hash
    )
    signed_headers["Authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return signed_headers


def presign(
    credentials: Credentials,
    region: str,
    method: str,
    host: str,
    path: str,
    expires: int,
    query: Sequence[tuple[str, str]] = (),
    now: datetime | None = None,
    service: str = "s3",
) -> str:
    """The query string (without ``?``) of a presigned URL for ``path`` on ``host``."""
    amz_date = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    params = list(query) + [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{credentials.access_key}/{scope}"),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    if credentials.session_token:
        params.append(("X-Amz-Security-Token", credentials.session_token))
    signature, _, _ = _signature(
        credentials, amz_date, region, service, method, path, params, {"host": host}, UNSIGNED_PAYLOAD
    )
    return canonical_query(params) + f"&X-Amz-Signature={signature}"
