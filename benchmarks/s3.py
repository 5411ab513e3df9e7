"""
The object store of ``--s3``: one SeaweedFS server on 127.0.0.1 for the
whole run (started by the tests' launcher, ``tests/seaweedfs_process.py``),
a bucket of its own for each registry run.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import shutil
import tempfile
import urllib.parse
from typing import NoReturn

from .client import CLIENT_ERRORS, Connection
from .common import Unavailable, log
from .shared import SeaweedFSProcess, descendants, proc_cpu_seconds, proc_status_kib


def sigv4_headers(
    access_key: str,
    secret_key: str,
    region: str,
    method: str,
    host: str,
    path: str,
    query: list[tuple[str, str]],
    payload: bytes,
) -> list[tuple[str, str]]:
    """
    AWS Signature Version 4 headers for one S3 request with ``payload`` as
    its body: the few lines of ``oci_registry/storage/sigv4.py`` this script
    needs (it must not import the package).  ``path`` is unencoded.
    """

    def quote(text: str, safe: str) -> str:
        return urllib.parse.quote(text, safe=safe)

    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(payload).hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical_query = "&".join(f"{quote(k, '~')}={quote(v, '~')}" for k, v in sorted(query))
    canonical = "\n".join(
        [
            method,
            quote(path, "/~"),
            canonical_query,
            "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
            signed,
            payload_hash,
        ]
    )
    scope = f"{date}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return [
        ("x-amz-content-sha256", payload_hash),
        ("x-amz-date", amz_date),
        (
            "Authorization",
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}",
        ),
    ]


class S3Server(SeaweedFSProcess):
    """
    SeaweedFS with its data and logs under ``root``, in a process group of
    its own, requests signed by ``sigv4_headers``.  Each registry run gets a
    bucket of its own (and a fresh key prefix in it), deleted after the run:
    SeaweedFS then drops the bucket's volumes, so a long run does not fill
    the disk.
    """

    ACCESS_KEY = "ociregistry-bench"
    SECRET_KEY = "ociregistry-bench-secret"
    REGION = "us-east-1"
    identity = "bench"
    own_process_group = True
    request_errors = CLIENT_ERRORS

    def __init__(self, binary: str, root: str):
        super().__init__(binary, tempfile.mkdtemp(prefix="seaweedfs-", dir=root))
        self._buckets = 0

    def signed_request(
        self, method: str, path: str, body: bytes = b"", timeout: float = 10.0, query: list[tuple[str, str]] = ()
    ) -> tuple[int, bytes]:
        """One signed request (``path`` is ``/bucket[/key]``, unencoded) on a new connection."""
        host = f"127.0.0.1:{self.port}"
        headers = sigv4_headers(self.ACCESS_KEY, self.SECRET_KEY, self.REGION, method, host, path, list(query), body)
        target = urllib.parse.quote(path, safe="/~")
        if query:
            target += "?" + "&".join(
                f"{urllib.parse.quote(k, safe='~')}={urllib.parse.quote(v, safe='~')}" for k, v in sorted(query)
            )
        with Connection("127.0.0.1", self.port, timeout=timeout) as c:
            status, _, data = c.request(method, target, headers, body=body or None)
        return status, data

    def exited(self) -> NoReturn:
        raise Unavailable(f"SeaweedFS exited: {self.log_tail()[-500:].strip()}")

    def not_ready(self, timeout: float, last: object) -> NoReturn:
        raise Unavailable(
            f"SeaweedFS did not take a bucket and an object within {timeout:.0f}s "
            f"(last: {last}): {self.log_tail()[-500:]}"
        )

    def warn(self, message: str) -> None:
        log(f"warning: {message}")

    def start(self, timeout: float = 60.0) -> None:
        self.spawn()
        try:
            self.create_bucket("bench-ready", timeout, try_timeout=2)
        except Unavailable:
            self.stop()
            raise

    def new_bucket(self) -> str:
        """A new bucket, ready for writes (see ``create_bucket``), so that the registry does not measure that."""
        self._buckets += 1
        name = f"bench-{self._buckets}-{os.urandom(4).hex()}"
        self.create_bucket(name, 30.0, try_timeout=2)
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (SeaweedFS's default allows a non-empty one)."""
        if not self.alive():
            return
        try:
            status, body = self.signed_request("DELETE", f"/{name}", timeout=60)
            if status not in (200, 204, 404):
                log(f"warning: could not delete the S3 bucket {name}: HTTP {status} {body[:200]!r}")
        except CLIENT_ERRORS as e:
            log(f"warning: could not delete the S3 bucket {name}: {e}")

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(p) for p in descendants(self.process.pid)) if self.alive() else 0.0

    def rss_mib(self) -> float | None:
        value = proc_status_kib(self.process.pid, "VmHWM") if self.alive() else None
        return round(value / 1024, 1) if value is not None else None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class S3Place:
    """Where one registry run stores: a bucket of the server and a key prefix in it."""

    def __init__(self, server: S3Server, bucket: str, prefix: str):
        self.server, self.bucket, self.prefix = server, bucket, prefix
