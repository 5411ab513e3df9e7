"""
Start real registry processes on 127.0.0.1: ociregistry through
``twistd -n ociregistry``, or the reference registry (CNCF Distribution,
``docker-registry`` from apt).  The tests use it to check that what they
assert is what the spec and the reference do; benchmarks/ uses it too, to
start the registries it measures (their S3 settings, worker counts and
process groups are its own: see ``RegistryProcess``'s class attributes and
hooks).  Standard library only, so that both can import it.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import NoReturn

REFERENCE_BINARY = shutil.which("docker-registry") or shutil.which("registry")
REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def registry_environment(base: dict | None = None) -> dict:
    """The environment for a registry process (``base``, or this one's): this checkout's code first on the path."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPOSITORY_ROOT, env.get("PYTHONPATH")]))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- /proc


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (at most 1000)."""
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
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmHWM``, ``VmRSS``), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the process


class RegistryProcess:
    """
    A registry listening on 127.0.0.1; ``kind`` is "ociregistry" or "reference".

    Its files (log, the reference's config.yml) go in ``directory`` (a new
    temporary one by default).  A subclass adjusts it through the class
    attributes and the hooks below; the tests use it as it is.
    """

    # Start it in a session of its own and signal its whole process group
    # (so that ``--workers`` children go with it), instead of the process alone.
    own_process_group = False
    probe_timeout = 1.0  # seconds for each GET /v2/ while waiting for it to answer
    stop_timeout = 10.0  # seconds for it to exit after the stop signal, before SIGKILL
    reference_log = "{level: warn}"  # the reference's ``log`` section

    def __init__(
        self,
        data_dir: str,
        kind: str = "ociregistry",
        extra_args=(),
        config: str | None = None,
        reference_config: str = "",
        *,
        python: str = sys.executable,
        directory: str | None = None,
    ):
        self.data_dir = data_dir
        self.kind = kind
        self.reference_config = reference_config  # more top-level YAML for the reference, e.g. an auth section
        self.extra_args = list(extra_args)
        self.config = config
        self.python = python
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.dir = directory or tempfile.mkdtemp(prefix="ociregistry-log-")
        self.log_path = os.path.join(self.dir, "registry.log")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # hooks

    def environment(self) -> dict:
        """The process's environment."""
        return registry_environment()

    def reference_storage(self) -> str:
        """The reference's ``storage`` section (a YAML flow mapping)."""
        return f"{{filesystem: {{rootdirectory: {self.data_dir}}}, delete: {{enabled: true}}}}"

    def unavailable(self, reason: str) -> NoReturn:
        """This registry cannot run here (the tests skip)."""
        import pytest

        pytest.skip(reason)

    def exited_at_start(self) -> NoReturn:
        """The process exited before it answered."""
        raise RuntimeError(f"registry exited with {self.process.returncode}:\n{self.log()}")

    def did_not_answer(self, timeout: float) -> NoReturn:
        """No answer within ``timeout`` seconds (the process is stopped by then)."""
        raise RuntimeError(f"registry did not start within {timeout}s:\n{self.log()}")

    # starting and stopping

    def _command(self) -> list[str]:
        if self.kind == "reference":
            config = os.path.join(self.dir, "config.yml")
            with open(config, "w") as f:
                f.write(
                    "version: 0.1\n"
                    f"log: {self.reference_log}\n"
                    f"storage: {self.reference_storage()}\n"
                    f"http: {{addr: '127.0.0.1:{self.port}'}}\n" + self.reference_config
                )
            return [REFERENCE_BINARY, "serve", config]
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
        if self.config:
            command += ["--config", self.config]
        return command + self.extra_args

    def start(self, timeout: float = 20.0) -> RegistryProcess:
        """Start it and wait until ``GET /v2/`` answers 200 (or 401, with auth on), for ``timeout`` seconds."""
        if self.kind == "reference" and REFERENCE_BINARY is None:
            self.unavailable("the reference registry (apt-get install docker-registry) is not installed")
        self.port = self.port or free_port()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                cwd=self.dir,
                start_new_session=self.own_process_group,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.exited_at_start()
            if self.answers():
                return self
            time.sleep(0.05)
        self.stop()
        self.did_not_answer(timeout)

    def answers(self) -> bool:
        """One ``GET /v2/`` on loopback (never through a proxy): 200, or 401 when auth is on."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.probe_timeout)
        try:
            connection.request("GET", "/v2/")
            return connection.getresponse().status in (200, 401)
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def _signal(self, process: subprocess.Popen, sig: int) -> None:
        if not self.own_process_group:
            process.send_signal(sig)
            return
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig``, and SIGKILL after ``stop_timeout`` seconds."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            self._signal(process, sig)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._signal(process, signal.SIGKILL)
                process.wait(10)
        if self.own_process_group:  # workers left behind in the group, if the parent died first
            self._signal(process, signal.SIGKILL)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # what it logged and what it uses

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, size: int = 20000) -> str:
        """The last ``size`` bytes of the log."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - size))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The process and its children (its workers)."""
        return descendants(self.process.pid) if self.process else []

    def peak_rss_mib(self) -> tuple[float | None, list[float]]:
        """The largest VmHWM over its processes, and each one's."""
        values = [v / 1024 for v in (proc_status_kib(p, "VmHWM") for p in self.pids()) if v is not None]
        return (max(values) if values else None), values

    def cpu_seconds(self) -> float:
        """CPU seconds of its live processes."""
        return sum(proc_cpu_seconds(p) for p in self.pids())
