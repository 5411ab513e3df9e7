"""
The registries under test: ociregistry (one column per worker count) and
the reference, each a process group on a fresh data directory (or an S3
bucket of its own), sampled through /proc for their RSS and CPU.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING

from .client import Connection, HTTPError
from .columns import run_label
from .common import Unavailable, log

if TYPE_CHECKING:
    from .s3 import S3Place

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
                    "accesskey": self.s3.server.ACCESS_KEY,
                    "secretkey": self.s3.server.SECRET_KEY,
                    "region": self.s3.server.REGION,
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
                self.s3.server.REGION,
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
            env["OCIREGISTRY_S3_ACCESS_KEY"] = self.s3.server.ACCESS_KEY
            env["OCIREGISTRY_S3_SECRET_KEY"] = self.s3.server.SECRET_KEY
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
