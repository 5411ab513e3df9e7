"""
Start real registry processes for the tests: ociregistry through
``twistd -n ociregistry``, or the reference registry (CNCF Distribution,
``docker-registry`` from apt) to check that a test asserts what the spec and
the reference do.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

REFERENCE_BINARY = shutil.which("docker-registry") or shutil.which("registry")
REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def registry_environment() -> dict:
    """The environment for a registry process: this checkout's code first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPOSITORY_ROOT, env.get("PYTHONPATH")]))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RegistryProcess:
    """A registry listening on 127.0.0.1; ``kind`` is "ociregistry" or "reference"."""

    def __init__(
        self,
        data_dir: str,
        kind: str = "ociregistry",
        extra_args=(),
        config: str | None = None,
        reference_config: str = "",
    ):
        self.data_dir = data_dir
        self.kind = kind
        self.reference_config = reference_config  # more top-level YAML for the reference, e.g. an auth section
        self.extra_args = list(extra_args)
        self.config = config
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = os.path.join(tempfile.mkdtemp(prefix="ociregistry-log-"), "registry.log")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _command(self) -> list[str]:
        if self.kind == "reference":
            config = os.path.join(os.path.dirname(self.log_path), "config.yml")
            with open(config, "w") as f:
                f.write(
                    "version: 0.1\n"
                    "log: {level: warn}\n"
                    f"storage: {{filesystem: {{rootdirectory: {self.data_dir}}}, delete: {{enabled: true}}}}\n"
                    f"http: {{addr: '127.0.0.1:{self.port}'}}\n" + self.reference_config
                )
            return [REFERENCE_BINARY, "serve", config]
        command = [
            sys.executable,
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
        if self.config:
            command += ["--config", self.config]
        return command + self.extra_args

    def start(self, timeout: float = 20.0) -> RegistryProcess:
        if self.kind == "reference" and REFERENCE_BINARY is None:
            import pytest

            pytest.skip("the reference registry (apt-get install docker-registry) is not installed")
        self.port = self.port or free_port()
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self._command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=registry_environment(),
            cwd=os.path.dirname(self.log_path),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"registry exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/v2/", timeout=1) as response:
                    if response.status == 200:
                        return self
            except urllib.error.HTTPError as e:
                if e.code == 401:  # up, with auth turned on
                    return self
                time.sleep(0.05)
            except Exception:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"registry did not start within {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""
