"""
The registry's log as an operator's tools read it: ``--log-format json``
writes one JSON object per line with stable fields, the access line of a
request carries its method, path, status, sizes, duration, user, client,
user agent and request id, and every line logged while a request is
handled carries that request's id, which the client gets back in
``X-Request-ID``.  The text format's access line carries the same facts.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re

import pytest

from auth_helpers import start_registry, write_htpasswd
from registry_process import RegistryProcess
from test_startup import assert_fails_at_once, twistd, wait_for

pytestmark = pytest.mark.ociregistry_only

AGENT = "log-test/1.0"
ACCESS_FIELDS = {
    "time",
    "level",
    "event",
    "namespace",
    "method",
    "path",
    "protocol",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "user",
    "client",
    "user_agent",
    "request_id",
    "error",
}


def call(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    """(status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"User-Agent": AGENT, **(headers or {})})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def alice(password: str = "right") -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()}


def json_lines(registry) -> list[dict]:
    """Every line of the log, each parsed as JSON (a line that is not JSON fails the test)."""
    lines = []
    for line in registry.log().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    return lines


def requests_of(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line["namespace"] == "oci_registry.access" and line["user_agent"] == AGENT]


@pytest.fixture
def json_registry(tmp_path):
    write_htpasswd(tmp_path / "htpasswd", {"alice": "right"})
    registry = start_registry(
        tmp_path, "  htpasswd: htpasswd\n  admins: [alice]\n", extra_args=["--log-format", "json"]
    )
    yield registry
    registry.stop()


def test_json_lines_have_every_field(json_registry):
    blob = os.urandom(3000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    port = json_registry.port
    pushed = call(port, "POST", f"/v2/logs/app/blobs/uploads/?digest={digest}", blob, alice())
    assert pushed[0] == 201
    pulled = call(port, "GET", f"/v2/logs/app/blobs/{digest}", headers={**alice(), "X-Request-ID": "trace-42"})
    assert pulled[0] == 200 and pulled[2] == blob
    missing = call(port, "GET", "/v2/logs/app/manifests/nope", headers=alice())
    assert missing[0] == 404
    assert wait_for(lambda: len(requests_of(json_lines(json_registry))) >= 3)

    lines = json_lines(json_registry)
    for line in lines:
        assert {"time", "level", "event", "namespace"} <= set(line), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line
        assert line["level"] in ("debug", "info", "warn", "error", "critical"), line
    push, pull, miss = requests_of(lines)
    for line, (status, headers, _) in zip((push, pull, miss), (pushed, pulled, missing), strict=True):
        assert set(line) >= ACCESS_FIELDS, line
        assert line["request_id"] == headers["x-request-id"], (line, headers)
        assert line["status"] == status and line["level"] == "info"
        assert line["user"] == "alice" and line["client"] == "127.0.0.1" and line["user_agent"] == AGENT
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
        assert line["error"] is None and line["protocol"] == "HTTP/1.1"
    assert (push["method"], push["path"]) == ("POST", f"/v2/logs/app/blobs/uploads/?digest={digest}")
    assert (push["bytes_in"], push["bytes_out"]) == (len(blob), 0)
    assert (pull["method"], pull["bytes_in"], pull["bytes_out"]) == ("GET", 0, len(blob))
    assert pull["request_id"] == "trace-42"
    assert miss["bytes_out"] == len(missing[2])
    assert len({push["request_id"], miss["request_id"]}) == 2 and re.fullmatch(r"[0-9a-f]{32}", push["request_id"])


def test_every_line_of_a_request_carries_its_id(json_registry):
    status, headers, _ = call(json_registry.port, "GET", "/v2/", headers={**alice("wrong"), "X-Request-ID": "r-1"})
    assert status == 401 and headers["x-request-id"] == "r-1"
    assert wait_for(lambda: requests_of(json_lines(json_registry)))
    lines = [line for line in json_lines(json_registry) if line.get("request_id") == "r-1"]
    events = [line["event"] for line in lines]
    assert len(lines) == 2, events
    assert "failed login as alice from 127.0.0.1" in events[0]
    assert lines[1]["namespace"] == "oci_registry.access"
    # Lines logged outside any request carry no request id.
    assert all("request_id" not in line for line in json_lines(json_registry) if "listening on" in line["event"])


@pytest.mark.parametrize(
    "sent",
    ["x" * 129, "has space", 'quote"d', "", "\u00e9t\u00e9"],
    ids=["too long", "space", "quote", "empty", "not ascii"],
)
def test_an_unusable_request_id_is_replaced(json_registry, sent):
    status, headers, _ = call(json_registry.port, "GET", "/healthz", headers={"X-Request-ID": sent.encode("utf-8")})
    assert status == 200
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"]), headers


def test_a_usable_request_id_is_kept(json_registry):
    for sent in ("a" * 128, "0af7651916cd43dd8448eb211c80319c", "trace:1/2=3@host"):
        assert call(json_registry.port, "GET", "/healthz", headers={"X-Request-ID": sent})[1]["x-request-id"] == sent


def test_text_access_lines_have_duration_user_and_request_id(tmp_path):
    write_htpasswd(tmp_path / "htpasswd", {"alice": "right"})
    registry = start_registry(tmp_path, "  htpasswd: htpasswd\n  admins: [alice]\n")
    try:
        status, headers, body = call(registry.port, "GET", "/v2/", headers={**alice(), "X-Request-ID": "text-1"})
        assert status == 200
        assert wait_for(lambda: "id=text-1" in registry.log())
        (line,) = [line for line in registry.log().splitlines() if "id=text-1" in line]
        assert re.search(
            rf'\[oci_registry\.access#info\] 127\.0\.0\.1 alice "GET /v2/ HTTP/1\.1" 200 {len(body)} "{AGENT}"'
            r" in=0 \d+\.\dms id=text-1$",
            line,
        ), line
    finally:
        registry.stop()


def test_log_format_in_the_config_file(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("log_format: json\n")
    registry = RegistryProcess(str(tmp_path / "data"), config=str(config)).start()
    try:
        call(registry.port, "GET", "/v2/")
        assert wait_for(lambda: requests_of(json_lines(registry)))
    finally:
        registry.stop()
    lines = json_lines(registry)
    assert any("listening on" in line["event"] and line["level"] == "info" for line in lines)
    (warning,) = [line for line in lines if line["event"].startswith("no auth configured")]
    assert warning["level"] == "warn"


@pytest.mark.parametrize("option, value", [("--log-format", "xml"), ("--log-level", "loud")])
def test_a_bad_log_option_is_one_line_and_status_2(tmp_path, option, value):
    status, output = twistd(tmp_path, option, value, "-d", str(tmp_path / "data"))
    key = option[2:].replace("-", "_")
    assert_fails_at_once(status, output, 2, rf"^ociregistry: {key}: must be .*{value!r}")


# ------------------------------------------------------------------ workers


class TwistdRegistry(RegistryProcess):
    """A registry started with options for twistd itself (``--logfile``, ``--logger``) before ``ociregistry``."""

    def __init__(self, data_dir: str, twistd_args=(), **kwargs):
        super().__init__(data_dir, **kwargs)
        self.twistd_args = list(twistd_args)

    def _command(self) -> list[str]:
        command = super()._command()
        at = command.index("ociregistry")
        return command[:at] + self.twistd_args + command[at:]

    def environment(self) -> dict:
        env = super().environment()
        env["PYTHONPATH"] = os.pathsep.join([self.dir, env["PYTHONPATH"]])  # the --logger module's folder
        return env


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_workers_log_to_the_parents_logfile(tmp_path, log_format):
    logfile = tmp_path / "registry.log"
    registry = TwistdRegistry(
        str(tmp_path / "data"),
        twistd_args=["--logfile", str(logfile)],
        extra_args=["--workers", "2", "--log-format", log_format],
    ).start()
    try:
        assert wait_for(lambda: "worker 1 serving" in logfile.read_text())
        sent = spread(registry.port)
    finally:
        registry.stop()
    text = logfile.read_text()
    if log_format == "json":
        lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
        access = [line for line in lines if line["namespace"] == "oci_registry.access" and line["user_agent"] == AGENT]
        assert sorted(line["request_id"] for line in access) == sorted(sent)  # one line per request
        assert {line["worker"] for line in access} == {0, 1}, access
        assert {line["worker"] for line in lines} == {0, 1}
    else:
        for request_id in sent:
            assert text.count(f"id={request_id}\n") == 1, text
        assert "[worker 1 oci_registry.access#info]" in text and "[oci_registry.access#info]" in text, text
    # Nothing went to the original stdout: not the workers' lines either.
    assert "worker 1 serving" not in registry.log() and "spread-" not in registry.log(), registry.log()
    assert "Traceback" not in text


def spread(port: int) -> list[str]:
    """Requests on new connections until each of the two processes has answered several (at most 400)."""
    ids = []
    for n in range(400):
        status, headers, _ = call(port, "GET", "/v2/", headers={"X-Request-ID": f"spread-{n}"})
        assert status == 200
        ids.append(headers["x-request-id"])
        if n >= 40:
            break
    return ids


LOGGER_MODULE = '''
import json
from twisted.logger import FileLogObserver, formatEvent

def observer():
    """What an operator might plug in: their own format, their own file."""
    out = open(__file__ + ".log", "a")
    return FileLogObserver(out, lambda event: "MINE " + json.dumps(
        {"worker": event.get("worker"), "id": event.get("request_id"), "text": formatEvent(event)}) + "\\n")
'''


def test_workers_log_to_the_operators_logger(tmp_path):
    registry = TwistdRegistry(str(tmp_path / "data"), extra_args=["--workers", "2"])
    with open(os.path.join(registry.dir, "mylogger.py"), "w") as f:
        f.write(LOGGER_MODULE)
    registry.twistd_args = ["--logger", "mylogger.observer"]
    output = os.path.join(registry.dir, "mylogger.py.log")
    registry.start()
    try:
        assert wait_for(lambda: os.path.exists(output) and "worker 1 serving" in open(output).read())
        sent = spread(registry.port)
    finally:
        registry.stop()
    lines = [json.loads(line[5:]) for line in open(output).read().splitlines()]
    access = [line for line in lines if line["id"] in sent and "GET /v2/" in line["text"]]
    assert sorted(line["id"] for line in access) == sorted(sent)
    assert {line["worker"] for line in access} == {None, 1}, access  # the parent's events, and worker 1's
    assert "worker 1 serving" not in registry.log()
