"""
The object store of ``--s3``: one SeaweedFS server on 127.0.0.1 for the
whole run, a bucket of its own for each registry run.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

from .client import Connection, HTTPError
from .common import Unavailable, log
from .shared import descendants, free_port, proc_cpu_seconds, proc_status_kib


def find_weed(python: str) -> str | None:
    """SeaweedFS's ``weed``: beside the registry's interpreter, beside this one, or on the PATH."""
    for directory in (os.path.dirname(python), os.path.dirname(sys.executable)):
        candidate = os.path.join(directory, "weed")
        if directory and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("weed")


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


class S3Server:
    """
    One SeaweedFS (``weed server -s3``: master, volume, filer and S3 gateway
    in one process) on 127.0.0.1, every port picked free, its data and logs
    under ``root``, with one identity so that signatures are checked as a
    real S3 would.  Each registry run gets a bucket of its own (and a fresh
    key prefix in it), deleted after the run: SeaweedFS then drops the
    bucket's volumes, so a long run does not fill the disk.
    """

    ACCESS_KEY = "ociregistry-bench"
    SECRET_KEY = "ociregistry-bench-secret"
    REGION = "us-east-1"

    def __init__(self, binary: str, root: str):
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="seaweedfs-", dir=root)
        self.log_path = os.path.join(self.dir, "weed.log")
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self._ports: list[int] = []
        self._buckets = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        config = os.path.join(self.dir, "s3.json")
        with open(config, "w") as f:
            json.dump(
                {
                    "identities": [
                        {
                            "name": "bench",
                            "credentials": [{"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                },
                f,
            )
        data, logs = os.path.join(self.dir, "data"), os.path.join(self.dir, "logs")
        os.makedirs(data)
        os.makedirs(logs)
        ports = {name: free_port() for name in ("master", "volume", "filer")}
        grpc = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        self._ports = [self.port, *ports.values(), *grpc.values()]
        return [
            self.binary,
            f"-logdir={logs}",
            "server",
            "-s3",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={grpc['master']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={grpc['volume']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={grpc['filer']}",
            f"-filer.localSocket={os.path.join(self.dir, 'filer.sock')}",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={grpc['s3']}",
            f"-s3.config={config}",
            f"-s3.localSocket={os.path.join(self.dir, 's3.sock')}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            # Small volumes, so that a bucket (a SeaweedFS collection) does
            # not reserve gigabytes; -volume.max=0 sizes by free disk space.
            "-master.volumeSizeLimitMB=256",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
        ]

    def request(
        self, method: str, path: str, body: bytes = b"", query: list[tuple[str, str]] = (), timeout: float = 10.0
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

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as logfile:
            self.process = subprocess.Popen(
                self.command(),
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                start_new_session=True,
            )
        try:
            self.create_bucket("bench-ready", timeout)
        except Unavailable:
            self.stop()
            raise

    def create_bucket(self, name: str, timeout: float = 30.0) -> None:
        """
        Create ``name`` and wait until an object can be written in it.  The
        S3 port answers before the filer and volume servers are ready, and a
        new bucket's first write also waits for volumes to be allocated: a
        registry started earlier would measure that.  A request sent too early
        can hang, so each try gives up soon.
        """
        deadline = time.monotonic() + timeout
        last: object = None
        for _ in range(10_000):
            if time.monotonic() > deadline:
                break
            if not self.alive():
                raise Unavailable(f"SeaweedFS exited: {self.log_tail()[-500:].strip()}")
            try:
                status, body = self.request("PUT", f"/{name}", timeout=2)
                if status in (200, 409):
                    status, body = self.request("PUT", f"/{name}/.ready", b"ok", timeout=2)
                    if status == 200:
                        return
                last = f"HTTP {status}: {body[:200]!r}"
            except (OSError, HTTPError) as e:
                last = e
            time.sleep(0.2)
        raise Unavailable(
            f"SeaweedFS did not take a bucket and an object within {timeout:.0f}s "
            f"(last: {last}): {self.log_tail()[-500:]}"
        )

    def new_bucket(self) -> str:
        self._buckets += 1
        name = f"bench-{self._buckets}-{os.urandom(4).hex()}"
        self.create_bucket(name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (SeaweedFS's default allows a non-empty one)."""
        if not self.alive():
            return
        try:
            status, body = self.request("DELETE", f"/{name}", timeout=60)
            if status not in (200, 204, 404):
                log(f"warning: could not delete the S3 bucket {name}: HTTP {status} {body[:200]!r}")
        except (OSError, HTTPError) as e:
            log(f"warning: could not delete the S3 bucket {name}: {e}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(p) for p in descendants(self.process.pid)) if self.alive() else 0.0

    def rss_mib(self) -> float | None:
        value = proc_status_kib(self.process.pid, "VmHWM") if self.alive() else None
        return round(value / 1024, 1) if value is not None else None

    def stop(self) -> None:
        # weed takes over 10 s to stop gracefully; its data is thrown away anyway.
        process, self.process = self.process, None
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                log(f"warning: SeaweedFS (pid {process.pid}) did not exit after SIGKILL")
        # The unix sockets weed opens beside some of its ports, in the system temp dir.
        for port in self._ports:
            for path in glob.glob(os.path.join(tempfile.gettempdir(), f"seaweedfs-*-{port}.sock")):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        self._ports = []

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, size: int = 20000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - size))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


class S3Place:
    """Where one registry run stores: a bucket of the server and a key prefix in it."""

    def __init__(self, server: S3Server, bucket: str, prefix: str):
        self.server, self.bucket, self.prefix = server, bucket, prefix
