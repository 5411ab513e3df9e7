"""
Starting and stopping the daemon, as an operator sees it: a registry that
cannot start says why in one line and exits at once with a non-zero status
(2: the configuration cannot work, 1: anything else), never a traceback nor
a process that stays up serving nothing; one that can says "listening" only
once it is; SIGTERM stops it (and its workers) with status 0.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from registry_process import REPOSITORY_ROOT, RegistryProcess, free_port, registry_environment

pytestmark = pytest.mark.ociregistry_only

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
CLI = [sys.executable, "-m", "oci_registry.cli"]


def run(command, cwd, timeout=30, env=None, **kwargs) -> tuple[int, str]:
    """Run to the end; status and output (stdout and stderr, in order).  A process still up after ``timeout`` fails."""
    result = subprocess.run(
        command,
        check=False,
        cwd=cwd,
        env=env or registry_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        **kwargs,
    )
    return result.returncode, result.stdout.decode(errors="replace")


def twistd(cwd, *args, twistd_args=(), timeout=30, **kwargs) -> tuple[int, str]:
    return run([*TWISTD, "-n", "--pidfile=", *twistd_args, "ociregistry", *args], cwd, timeout, **kwargs)


def assert_fails_at_once(status: int, output: str, expected_status: int, cause: str) -> None:
    """
    Exit ``expected_status``; exactly one line says ``cause`` (a regular
    expression); no traceback, no "listening".
    """
    lines = [line for line in output.splitlines() if re.search(cause, line)]
    assert status == expected_status, output
    assert len(lines) == 1, output
    assert "Traceback" not in output and "listening on" not in output, output


def write(path, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return str(path)


# ------------------------------------------------------ configuration errors


def config_cases(tmp_path) -> dict[str, tuple[list[str], str]]:
    """Name -> (options, what the one line says)."""
    (tmp_path / "a-file").write_text("")
    return {
        "unknown key": (
            ["-c", write(tmp_path / "u.yaml", "colour: blue\n")],
            r"^ociregistry: unknown config keys: colour$",
        ),
        "bad yaml": (
            ["-c", write(tmp_path / "y.yaml", "listen: [tcp:5000\n")],
            r"^ociregistry: cannot read config .*y\.yaml: .* at line 2, column 1",
        ),
        "missing file": (["-c", str(tmp_path / "absent.yaml")], r"^ociregistry: cannot read config .*absent\.yaml"),
        "unknown endpoint": (
            ["-c", write(tmp_path / "l.yaml", "listen: tcpp:5000\n")],
            r"^ociregistry: listen: cannot use 'tcpp:5000': Unknown endpoint type: 'tcpp'$",
        ),
        "listen not a string": (["-c", write(tmp_path / "n.yaml", "listen: 5000\n")], r"^ociregistry: listen must be"),
        "missing certificate": (
            ["--listen", f"ssl:{free_port()}:interface=127.0.0.1:privateKey={tmp_path}/k.pem:certKey={tmp_path}/c.pem"],
            r"^ociregistry: listen: cannot use 'ssl:.*No such file or directory",
        ),
        "bad s3 settings": (
            [
                "-c",
                write(
                    tmp_path / "s.yaml",
                    "storage: {s3: {bucket: b, access_key: a, secret_key: s, endpoint: 'ftp://x'}}\n",
                ),
            ],
            r"^ociregistry: storage: S3 endpoint must be an http\(s\) URL, not 'ftp://x'$",
        ),
        "s3 without keys": (
            ["-c", write(tmp_path / "k.yaml", "storage: {s3: {bucket: b}}\n")],
            r"^ociregistry: storage: s3 storage needs access_key and secret_key",
        ),
        "bad auth section": (
            ["-c", write(tmp_path / "a.yaml", "auth: {userz: x}\n")],
            r"^ociregistry: auth: unknown keys: userz$",
        ),
        "infinite size": (
            ["-c", write(tmp_path / "i.yaml", "max_upload_size: inf\n")],
            r"^ociregistry: max_upload_size: not a size: 'inf'",
        ),
        "size too large for a float": (
            ["-c", write(tmp_path / "f.yaml", "max_header_size: 1e400\n")],
            r"^ociregistry: max_header_size: not a size: '1e400'",
        ),
        "negative size": (
            ["-c", write(tmp_path / "ns.yaml", "max_body_memory: -1MiB\n")],
            r"^ociregistry: max_body_memory: not a size: '-1MiB'",
        ),
        "negative duration": (
            ["-c", write(tmp_path / "nd.yaml", "gc_interval: -1h\n")],
            r"^ociregistry: gc_interval: not a duration: '-1h'",
        ),
        "duration not a number": (
            ["-c", write(tmp_path / "nan.yaml", "client_timeout: nan\n")],
            r"^ociregistry: client_timeout: not a duration: 'nan'",
        ),
        "negative count": (
            ["-c", write(tmp_path / "nc.yaml", "max_connections: -1\n")],
            r"^ociregistry: max_connections must not be negative$",
        ),
        "empty listen list": (
            ["-c", write(tmp_path / "el.yaml", "listen: []\n")],
            r"^ociregistry: listen: no endpoint given",
        ),
        "data dir under a file": (
            ["-d", str(tmp_path / "a-file" / "data")],
            r"cannot use data directory .*a-file/data as .*: Not a directory$",
        ),
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_config_errors_are_one_line_and_status_2(tmp_path, workers):
    env = {k: v for k, v in registry_environment().items() if not k.startswith(("OCIREGISTRY_S3_", "AWS_"))}
    for name, (options, cause) in config_cases(tmp_path).items():
        options = [*options, "--workers", str(workers)]
        if workers > 1 and name in ("unknown endpoint", "missing certificate"):
            cause = r"^ociregistry: workers > 1 needs tcp: or tcp6: listen endpoints, not '(tcpp|ssl):"
        if "--listen" not in options and "listen" not in name and "endpoint" not in name:
            options += ["--listen", f"tcp:{free_port()}:interface=127.0.0.1"]  # the option would win
        if "-d" not in options:
            options += ["-d", str(tmp_path / "data")]
        status, output = twistd(tmp_path, *options, env=env)
        try:
            assert_fails_at_once(status, output, 2, cause)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


@pytest.mark.parametrize("command", ["gc", "du"])
def test_cli_config_errors_are_one_line_and_status_2(tmp_path, command):
    env = {k: v for k, v in registry_environment().items() if not k.startswith(("OCIREGISTRY_S3_", "AWS_"))}
    for name, (options, cause) in config_cases(tmp_path).items():
        if "--listen" in options or "listen" in name or "endpoint" in name:
            continue  # the maintenance commands do not listen
        if name == "data dir under a file":
            cause = r"^ociregistry: storage unavailable: " + cause
        status, output = run([*CLI, command, *options], tmp_path, env=env)
        try:
            assert_fails_at_once(status, output, 2, cause)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


# ------------------------------------------------------------------ listening


@contextlib.contextmanager
def port_taken():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use_ends_start_up_at_once(tmp_path, workers):
    with port_taken() as port:
        started = time.monotonic()
        status, output = twistd(
            tmp_path,
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "-d",
            str(tmp_path / "d"),
            "--workers",
            str(workers),
        )
    assert_fails_at_once(
        status, output, 1, rf"cannot listen on tcp:{port}:interface=127\.0\.0\.1: Address already in use$"
    )
    assert time.monotonic() - started < 15


def test_a_unix_socket_that_cannot_be_made_ends_start_up(tmp_path):
    status, output = twistd(tmp_path, "--listen", f"unix:{tmp_path}/missing/s.sock", "-d", str(tmp_path / "d"))
    assert_fails_at_once(status, output, 1, r"cannot listen on unix:.*/missing/s\.sock: No such file or directory")


def test_listening_is_said_once_when_listening(tmp_path):
    registry = RegistryProcess(str(tmp_path / "data")).start()
    try:
        lines = [line for line in registry.log().splitlines() if "listening on" in line]
        assert len(lines) == 1 and f"tcp:{registry.port}:interface=127.0.0.1 with 1 worker(s)" in lines[0]
    finally:
        registry.stop()


# ------------------------------------------------------------------- stopping


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], check=False, capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def wait_for(predicate, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_stops_everything_with_status_0(tmp_path, workers):
    registry = RegistryProcess(str(tmp_path / "data"), extra_args=["--workers", str(workers)]).start()
    process = registry.process
    assert wait_for(lambda: len(children_of(process.pid)) == workers - 1)
    children = children_of(process.pid)
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0, registry.log()
    # The workers ended before the parent did.
    assert all(not os.path.exists(f"/proc/{child}") for child in children), registry.log()
    assert "Traceback" not in registry.log()


# -------------------------------------------------------- open files limit


@contextlib.contextmanager
def open_files_soft_limit(soft: int):
    """Children started meanwhile inherit a lower soft limit than the hard one."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield before[1]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def open_files_limits(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no open files limit")


def test_open_files_limit_raised_to_the_hard_limit(tmp_path):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard <= 256:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    registry = RegistryProcess(str(tmp_path / "data"), extra_args=["--workers", "2"])
    with open_files_soft_limit(256):
        registry.start()
    try:
        assert wait_for(lambda: len(children_of(registry.process.pid)) == 1)
        (worker,) = children_of(registry.process.pid)
        assert open_files_limits(registry.process.pid) == (hard, hard)
        assert wait_for(lambda: f"worker 1 serving; open files limit {hard}" in registry.log())
        assert open_files_limits(worker) == (hard, hard)
        assert f"with 2 worker(s); open files limit {hard}" in registry.log()
    finally:
        registry.stop()


# ------------------------------------------------------------ data directory


def python_for(user: str) -> tuple[list[str], dict] | None:
    """
    A Python command and environment ``user`` can run this checkout with: the
    tests' own interpreter, or the system one of the same version with the
    same packages, when the former lives where the user cannot read it.
    """
    import site

    env = registry_environment()
    candidates = [(sys.executable, env)]
    same = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin:/usr/local/bin")
    if same:
        path = os.pathsep.join([REPOSITORY_ROOT, *site.getsitepackages()])
        candidates.append((same, {**env, "PYTHONPATH": path}))
    probe = "import encodings.idna, twisted, klein, bcrypt, yaml, oci_registry.service"
    for python, environ in candidates:
        try:
            ok = subprocess.run(
                [python, "-c", probe], check=False, env=environ, user=user, capture_output=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if ok.returncode == 0:
            return [python, "-c", "from twisted.scripts.twistd import run; run()"], environ
    return None


@pytest.fixture
def nobody():
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    python = python_for("nobody")
    if python is None:
        pytest.skip("no Python that user nobody can run this checkout with")
    top = tempfile.mkdtemp(prefix="ociregistry-uid-")  # /tmp, not the tests' 0700 tmp_path
    os.chmod(top, 0o755)
    yield user, top, python
    shutil.rmtree(top, ignore_errors=True)


def start_dropping_privileges(nobody, data_dir: str, **kwargs) -> subprocess.Popen:
    user, top, (command, env) = nobody
    port = free_port()
    process = subprocess.Popen(
        [
            *command,
            "-n",
            "--pidfile=",
            f"--uid={user.pw_uid}",
            f"--gid={user.pw_gid}",
            "ociregistry",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "-d",
            data_dir,
        ],
        cwd=top,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    process.port = port
    return process


def test_data_directory_made_by_the_user_twistd_switches_to(nobody):
    """``--uid``/``--gid``: a data directory that does not exist is created as that user, and pushes work."""
    user, top, _ = nobody
    os.chown(top, user.pw_uid, user.pw_gid)
    data = os.path.join(top, "data")
    process = start_dropping_privileges(nobody, data)
    try:
        url = f"http://127.0.0.1:{process.port}"
        assert wait_for(lambda: _answers(url + "/v2/"), 20), _output(process)
        assert os.stat(data).st_uid == user.pw_uid
        blob = b"pushed as nobody"
        import hashlib

        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        request = urllib.request.Request(f"{url}/v2/uid/test/blobs/uploads/?digest={digest}", data=blob, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
        with urllib.request.urlopen(f"{url}/v2/uid/test/blobs/{digest}", timeout=10) as response:
            assert response.read() == blob
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_data_directory_the_user_cannot_write_stops_start_up(nobody):
    """``--uid``/``--gid`` with a data directory left by root: one line naming it and the user, status 2."""
    user, top, _ = nobody
    data = os.path.join(top, "data")
    os.makedirs(os.path.join(data, "blobs"))  # as root, 0755
    process = start_dropping_privileges(nobody, data)
    try:
        status = process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"still running: {_output(process)}") from None
    assert_fails_at_once(
        status, _output(process), 2, rf"cannot use data directory {re.escape(data)} as nobody \(uid {user.pw_uid}\)"
    )


def test_data_directory_this_user_cannot_read_stops_start_up(tmp_path):
    """Without ``--uid``: a data directory the registry's user cannot use is one line, status 2."""
    data = tmp_path / "data"
    data.mkdir()
    if os.geteuid() == 0:
        # Root reads anything: the registry runs as nobody instead (with --uid, or it cannot load Python here).
        try:
            user = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("no user nobody")
        python = python_for("nobody")
        if python is None:
            pytest.skip("no Python that user nobody can run this checkout with")
        top = tempfile.mkdtemp(prefix="ociregistry-uid-")
        os.chmod(top, 0o755)
        data = os.path.join(top, "data")
        os.mkdir(data, 0o700)  # root's
        command, env = python
        twistd_args = [f"--uid={user.pw_uid}", f"--gid={user.pw_gid}"]
    else:
        top = None
        os.chmod(data, 0)
        command, env, twistd_args = TWISTD, None, []
    try:
        status, output = run(
            [
                *command,
                "-n",
                "--pidfile=",
                *twistd_args,
                "ociregistry",
                "-d",
                str(data),
                "--listen",
                f"tcp:{free_port()}",
            ],
            top or tmp_path,
            env=env,
        )
        assert_fails_at_once(
            status, output, 2, rf"cannot use data directory {re.escape(str(data))} as .*Permission denied"
        )
    finally:
        if top:
            shutil.rmtree(top, ignore_errors=True)
        else:
            os.chmod(data, 0o700)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _output(process: subprocess.Popen) -> str:
    if process.poll() is None:
        return "(running)"
    return process.stdout.read().decode(errors="replace")
