"""
Upstreams for the pull-through cache tests: real registry processes (the
reference registry and ociregistry) behind real auth, plus the small
servers a real deployment has around a registry:

- `TokenServer`: a Docker token server issuing ES256 JWTs with an ``x5c``
  certificate chain, which the reference registry's ``auth: token`` checks
  against its ``rootcertbundle``.  Anonymous users may pull; users with a
  password may pull and push.  It records every token request.
- `Edge`: what sits in front of Docker Hub: a reverse proxy to a registry
  that can answer blob GETs with a 307 to an "object store" (`BlobStore`,
  reading the reference registry's files and refusing requests that carry
  an ``Authorization`` header, as S3 refuses presigned URLs with one) and
  can rate limit with 429 + ``Retry-After``.

`upstream_requests` reads a registry's access log (both registries log
``"METHOD PATH HTTP/1.1" STATUS`` lines) to count what the proxy asked.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import http.server
import json
import os
import re
import threading
import time
import urllib.parse
import uuid

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from image_builder import MEDIA_TYPE_OCI_MANIFEST, HTTPResponse, http_request, sha256_digest

PROXY_AGENT = "ociregistry-proxy"
SERVICE = "test-upstream"
ISSUER = "test-token-server"
_ACCESS = re.compile(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3})[^\n]*' + PROXY_AGENT)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that hangs up is not a test failure


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _ThreadedServer:
    handler: type
    host = "127.0.0.1"

    def start(self):
        self._server = _QuietServer((self.host, 0), self.handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class _TokenHandler(_Handler):
    def do_GET(self):
        owner: TokenServer = self.server.owner
        parts = urllib.parse.urlsplit(self.path)
        if parts.path != "/token":
            return self.reply(404)
        query = urllib.parse.parse_qs(parts.query)
        user = None
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if owner.users.get(user) != password:
                owner.requests.append(("refused", user, query.get("scope", [])))
                return self.reply(
                    401,
                    b'{"details": "wrong credentials"}',
                    {"WWW-Authenticate": 'Basic realm="token"', "Content-Type": "application/json"},
                )
        scopes = query.get("scope", [])
        owner.requests.append(("issued", user, scopes))
        access = []
        for scope in scopes:
            kind, rest = scope.split(":", 1)
            name, _, actions = rest.rpartition(":")
            allowed = {"pull", "push", "delete", "*"} if user else {"pull"}
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a in allowed]})
        token = owner.sign(user or "", access)
        body = json.dumps(
            {
                "token": token,
                "access_token": token,
                "expires_in": owner.expires_in,
                "issued_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            }
        ).encode()
        self.reply(200, body, {"Content-Type": "application/json"})


class TokenServer(_ThreadedServer):
    """A Docker registry token server on 127.0.0.1 (see the module docstring)."""

    handler = _TokenHandler

    def __init__(self, directory, users: dict[str, str], expires_in: int = 300):
        self.users = dict(users)
        self.expires_in = expires_in
        self.requests: list[tuple] = []  # ("issued" | "refused", user or None, scopes)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = os.path.join(str(directory), "token-cert.pem")
        with open(self.cert_path, "wb") as f:
            f.write(self._cert.public_bytes(serialization.Encoding.PEM))

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def reference_auth(self) -> str:
        """The reference registry's config section trusting this server."""
        return (
            f"auth: {{token: {{realm: '{self.realm}', service: {SERVICE}, issuer: {ISSUER}, "
            f"rootcertbundle: '{self.cert_path}'}}}}\n"
        )

    def ociregistry_auth(self) -> str:
        """ociregistry's config section trusting this server (docs/auth.md, external token server)."""
        return (
            f"auth: {{token: {{realm: '{self.realm}', service: {SERVICE}, issuer: {ISSUER}, "
            f"public_key: '{self.cert_path}'}}}}\n"
        )

    def sign(self, subject: str, access: list) -> str:
        der = base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
        header = {"typ": "JWT", "alg": "ES256", "x5c": [der]}
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + self.expires_in,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def bearer(self, name: str, actions: str = "pull,push") -> dict:
        """Headers for a test's own request to the upstream, as user ``pusher``."""
        token = self.sign("pusher", [{"type": "repository", "name": name, "actions": actions.split(",")}])
        return {"Authorization": f"Bearer {token}"}

    def issued(self) -> list[tuple]:
        return [r for r in self.requests if r[0] == "issued"]


def htpasswd_auth(directory, users: dict[str, str]) -> str:
    """A bcrypt htpasswd file for ``users`` and the reference registry's config section using it."""
    path = os.path.join(str(directory), "htpasswd")
    with open(path, "w") as f:
        f.writelines(
            f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
            for user, password in users.items()
        )
    return f"auth: {{htpasswd: {{realm: test-basic, path: '{path}'}}}}\n"


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- pushing to an upstream with credentials ------------------------------------


def push_blob(base_url: str, name: str, data: bytes, headers: dict) -> str:
    digest = sha256_digest(data)
    started = http_request("POST", f"{base_url}/v2/{name}/blobs/uploads/", b"", headers)
    assert started.status == 202, (started.status, started.body)
    location = urllib.parse.urljoin(base_url + "/", started.headers["location"])
    separator = "&" if "?" in location else "?"
    finished = http_request(
        "PUT",
        f"{location}{separator}digest={urllib.parse.quote(digest)}",
        data,
        {**headers, "Content-Type": "application/octet-stream"},
    )
    assert finished.status == 201, (finished.status, finished.body)
    return digest


def push_image(base_url: str, name: str, layout, image, tag: str | None = None, headers: dict | None = None) -> str:
    headers = dict(headers or {})
    for digest in image.blob_digests:
        push_blob(base_url, name, layout.read_blob(digest), headers)
    return push_manifest(
        base_url, name, tag or image.manifest_digest, image.manifest_bytes, MEDIA_TYPE_OCI_MANIFEST, headers
    )


def push_manifest(
    base_url: str, name: str, reference: str, data: bytes, media_type: str, headers: dict | None = None
) -> str:
    response = http_request(
        "PUT", f"{base_url}/v2/{name}/manifests/{reference}", data, {**(headers or {}), "Content-Type": media_type}
    )
    assert response.status == 201, (response.status, response.body)
    return response.headers["docker-content-digest"]


# -- counting what the proxy asked ------------------------------------------------


def upstream_requests(registry, method: str | None = None, contains: str = "", settle: float = 0.3) -> list[str]:
    """
    ``"METHOD PATH STATUS"`` for each request the proxy made to ``registry``
    (from its access log), optionally only ``method`` and paths containing
    ``contains``.  Waits ``settle`` seconds first: a log line is written when
    a response ends.
    """
    if settle:
        time.sleep(settle)
    found = []
    for m, path, status in _ACCESS.findall(registry.log()):
        if (method is None or m == method) and contains in path:
            found.append(f"{m} {path} {status}")
    return found


# -- what sits in front of a registry in the wild ---------------------------------


class _EdgeHandler(_Handler):
    def _forward(self):
        edge: Edge = self.server.owner
        edge.requests.append((self.command, self.path))
        edge.headers.append(dict(self.headers))
        if edge.failing:
            return self.reply(edge.failing, b"upstream connect error", {"Content-Type": "text/plain"})
        if "/manifests/" in self.path and edge.rate_limit > 0:
            edge.rate_limit -= 1
            return self.reply(
                429,
                b'{"errors": [{"code": "TOOMANYREQUESTS"}]}',
                {"Retry-After": str(edge.retry_after), "Content-Type": "application/json"},
            )
        blob = re.fullmatch(r"/v2/.+/blobs/(sha256:[a-f0-9]{64})", self.path)
        if blob and self.command == "GET" and edge.store is not None and "Authorization" in self.headers:
            # Like Docker Hub: the registry checks the token, then sends the client to object storage.
            check = self._upstream("HEAD")
            if check.status != 200:
                return self.reply(
                    check.status,
                    b"",
                    {k: v for k, v in check.getheaders() if k.lower() in ("www-authenticate", "content-type")},
                )
            return self.reply(307, b"", {"Location": f"{edge.store.url}/blobs/{blob.group(1)}?signature=test"})
        response = self._upstream(self.command)
        body = response.read()
        headers = {
            k: v
            for k, v in response.getheaders()
            if k.lower() not in ("content-length", "connection", "transfer-encoding")
        }
        self.send_response(response.status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header(
            "Content-Length", str(len(body) if self.command != "HEAD" else response.getheader("Content-Length", "0"))
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _upstream(self, method: str):
        edge: Edge = self.server.owner
        connection = http.client.HTTPConnection("127.0.0.1", edge.registry.port, timeout=30)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        connection.request(method, self.path, body=body, headers=headers)
        return connection.getresponse()

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward


class Edge(_ThreadedServer):
    """A reverse proxy in front of ``registry``: redirects blob GETs to ``store``, rate limits on demand."""

    handler = _EdgeHandler

    def __init__(self, registry, store: BlobStore | None = None):
        self.registry = registry
        self.store = store
        self.rate_limit = 0  # answer this many manifest requests with 429
        self.failing = 0  # answer everything with this status (a 5xx from a broken backend)
        self.retry_after = 1
        self.requests: list[tuple] = []
        self.headers: list[dict] = []  # of each request, in the order of requests


class _StoreHandler(_Handler):
    def do_GET(self):
        store: BlobStore = self.server.owner
        match = re.fullmatch(r"/blobs/sha256:([a-f0-9]{64})\?signature=test", self.path)
        store.requests.append((self.path, self.headers.get("Authorization")))
        if match is None:
            return self.reply(404)
        if "Authorization" in self.headers:
            return self.reply(
                400, b"<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>"
            )
        hex_ = match.group(1)
        path = os.path.join(store.root, "docker", "registry", "v2", "blobs", "sha256", hex_[:2], hex_, "data")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return self.reply(404)
        if not store.rate and store.stall_after is None:
            return self.reply(200, data, {"Content-Type": "application/octet-stream"})
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        block = 256 << 10
        for offset in range(0, len(data), block):
            if store.stall_after is not None and offset >= store.stall_after:
                time.sleep(5)  # a connection that goes quiet, as over a bad WAN link
                return
            self.wfile.write(data[offset : offset + block])
            if store.rate:
                time.sleep(block / store.rate)


class BlobStore(_ThreadedServer):
    """Object storage for a reference registry's blobs: presigned-URL style, no Authorization header allowed."""

    handler = _StoreHandler

    def __init__(self, root: str):
        self.root = root
        self.rate = 0  # bytes per second to send blobs at (0: as fast as possible)
        self.stall_after: int | None = None  # go quiet after this many bytes of a blob
        self.requests: list[tuple] = []


# -- an upstream that does what a test says ------------------------------------------


class _ScriptedHandler(_Handler):
    def _handle(self):
        owner: ScriptedUpstream = self.server.owner
        owner.requests.append((self.command, self.path, dict(self.headers)))
        for method, pattern, action in owner.routes:
            match = pattern.fullmatch(self.path)
            if match and method in (self.command, "*"):
                try:
                    action(self, match)
                except (BrokenPipeError, ConnectionError, TimeoutError, OSError):
                    owner.broken += 1  # the proxy hung up on us, as it should
                return
        self.reply(404, b'{"errors": [{"code": "NAME_UNKNOWN"}]}', {"Content-Type": "application/json"})

    do_GET = do_HEAD = _handle

    # Building blocks for the routes' actions.

    def start_body(self, status: int = 200, headers: dict | None = None, length: int | None = None) -> None:
        """Status and headers; with no ``length``, a chunked body follows (use `chunk`)."""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.flush()

    def send(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        self.server.owner.sent += len(data)

    def chunk(self, data: bytes) -> None:
        self.send(b"%x\r\n%s\r\n" % (len(data), data))

    def stall(self, seconds: float = 30.0) -> None:
        """Go quiet (until the test ends, at most ``seconds``)."""
        self.server.owner.release.wait(seconds)


class ScriptedUpstream(_ThreadedServer):
    """
    A small registry on ``host`` that answers as the test's routes say, to
    play an upstream that stalls, lies or never ends.  ``on(method, regex,
    action)`` adds a route (``action(handler, match)``, first match wins; a
    request no route takes is a 404); ``release`` ends every stall.
    """

    handler = _ScriptedHandler

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.routes: list[tuple] = []
        self.requests: list[tuple] = []  # (method, path, headers)
        self.release = threading.Event()
        self.sent = 0  # body bytes written by send/chunk
        self.broken = 0  # responses cut short by the other end

    def on(self, method: str, pattern: str, action) -> ScriptedUpstream:
        self.routes.insert(0, (method, re.compile(pattern), action))
        return self

    def reset(self) -> None:
        self.routes.clear()
        self.requests.clear()
        self.sent = self.broken = 0

    def paths(self, method: str | None = None) -> list[str]:
        return [path for m, path, _ in self.requests if method is None or m == method]

    def stop(self) -> None:
        self.release.set()
        super().stop()


def serve(status: int = 200, body: bytes = b"", headers: dict | None = None):
    """A route action answering ``body`` at once."""
    return lambda handler, match: handler.reply(status, body, headers)


__all__ = [
    "BlobStore",
    "Edge",
    "HTTPResponse",
    "ScriptedUpstream",
    "TokenServer",
    "basic",
    "htpasswd_auth",
    "push_image",
    "push_manifest",
    "serve",
    "upstream_requests",
]
