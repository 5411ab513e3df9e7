"""
An HTTP proxy in front of the tests' S3 server that counts the requests
passing through it, so that a test can assert how many storage requests an
operation costs.

    proxy = CountingProxy(s3_server.port).start()
    settings = s3_server.settings(endpoint=proxy.endpoint)
    ...
    with proxy.counting() as seen:
        do_something()
    assert seen.total <= 2 and seen.lists == 0

Requests are forwarded as they came, ``Host`` header included, so the
signatures the registry computed for the proxy's address still verify.
It listens on loopback only, in a thread of the test process.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import socketserver
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler

import attr

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@attr.s(auto_attribs=True, frozen=True)
class Seen:
    """One request the proxy forwarded."""

    method: str
    key: str  # the path below the bucket, without the query
    query: str

    @property
    def is_list(self) -> bool:
        """A listing: ListObjectsV2 (``list-type``) or ListMultipartUploads (``uploads`` on the bucket)."""
        params = urllib.parse.parse_qs(self.query, keep_blank_values=True)
        if self.method != "GET":
            return False
        return "list-type" in params or ("uploads" in params and self.key.count("/") <= 1)


class Tally:
    """What passed through the proxy while `CountingProxy.counting` was open."""

    def __init__(self, requests: list[Seen]):
        self.requests = requests

    @property
    def total(self) -> int:
        return len(self.requests)

    @property
    def lists(self) -> int:
        return sum(1 for r in self.requests if r.is_list)

    def by_method(self) -> dict[str, int]:
        counts = collections.Counter("LIST" if r.is_list else r.method for r in self.requests)
        return dict(sorted(counts.items()))

    def __repr__(self) -> str:
        lines = [f"{r.method} {r.key}{'?' + r.query if r.query else ''}" for r in self.requests]
        return f"<{self.total} requests {self.by_method()}:\n  " + "\n  ".join(lines) + ">"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # An answer goes out in two writes (headers, body): with Nagle's algorithm
    # the second waits for the client's delayed ACK of the first, 40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format, *args):
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        seen = Seen(self.command, urllib.parse.unquote(path), query)
        self.server.proxy.record(seen)
        self.server.proxy.hold_if_asked(seen)
        upstream = getattr(self.server.local, "connection", None)
        if upstream is None:
            upstream = self.server.local.connection = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            upstream.request(self.command, self.path, body=body if length else None, headers=headers)
            response = upstream.getresponse()
        except (OSError, http.client.HTTPException):
            upstream.close()
            self.server.local.connection = None
            self.send_error(502)
            return
        data = response.read()
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        if self.command == "HEAD":
            self.send_header("Content-Length", response.getheader("Content-Length") or "0")
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, proxy: CountingProxy, upstream_port: int):
        self.proxy = proxy
        self.upstream_port = upstream_port
        self.local = threading.local()
        super().__init__(("127.0.0.1", 0), _Handler)


class CountingProxy:
    """Forwards to the S3 server on ``upstream_port`` and records every request."""

    def __init__(self, upstream_port: int):
        self._server = _Server(self, upstream_port)
        self._lock = threading.Lock()
        self._recording: list[Seen] | None = None
        self._holds: list[Hold] = []
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CountingProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="counting-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record(self, seen: Seen) -> None:
        with self._lock:
            if self._recording is not None:
                self._recording.append(seen)

    @contextlib.contextmanager
    def counting(self):
        """Record the requests made inside the block into the `Tally` it gives."""
        tally = Tally([])
        with self._lock:
            self._recording = tally.requests
        try:
            yield tally
        finally:
            with self._lock:
                self._recording = None

    def hold_if_asked(self, seen: Seen) -> None:
        with self._lock:
            hold = next((h for h in self._holds if h.matches(seen)), None)
        if hold is not None:
            hold.arrived.set()
            hold.released.wait(30)

    @contextlib.contextmanager
    def holding(self, matches):
        """
        Hold back the requests ``matches(seen)`` accepts until the block
        ends: the `Hold` it gives tells when the first one arrived.
        """
        hold = Hold(matches)
        with self._lock:
            self._holds.append(hold)
        try:
            yield hold
        finally:
            with self._lock:
                self._holds.remove(hold)
            hold.released.set()


class Hold:
    """Requests held at the proxy (`CountingProxy.holding`)."""

    def __init__(self, matches):
        self.matches = matches
        self.arrived = threading.Event()
        self.released = threading.Event()
