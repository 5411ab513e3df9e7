"""
Helpers for the HTTP API tests (``test_api_*.py``), which are modelled on the
OCI distribution-spec conformance suite (``conformance/0[1-4]_*_test.go``).

Every request goes through treq, on a fresh connection each time
(``persistent=False``): the registry fixture is per module and ports may be
reused, so a pooled keep-alive connection could outlive its server.

``fetch`` sends one request and reads the whole body into a `Reply`;
``push_blob`` and ``push_image`` build the state a test needs; the
``assert_*`` helpers check the spec's error shape.  Nothing here assumes a
particular registry: the same helpers drive ociregistry and the reference
registry (``OCIREGISTRY_TEST_TARGET=reference``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import treq
from twisted.web.client import ResponseFailed

TARGET = os.environ.get("OCIREGISTRY_TEST_TARGET", "ociregistry")
REFERENCE = TARGET == "reference"

API_VERSION_HEADER = "Docker-Distribution-Api-Version"
API_VERSION = "registry/2.0"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

# What a client like containerd sends: every manifest type it understands.
# (The reference registry answers 404 to a GET of an OCI manifest whose
# Accept header does not name OCI types, so always send it.)
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

EMPTY_JSON = b"{}"

# A digest as the spec's grammar has it: algorithm ":" encoded.
DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


# ------------------------------------------------------------------ digests


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512_digest(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra) -> dict:
    """An OCI descriptor for ``data``; ``extra`` adds e.g. annotations or artifactType."""
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data), **extra}


def encode(document: dict) -> bytes:
    """
    Serialise a manifest the way a careful test does: not the compact form a
    registry would produce if it re-encoded it, so that any re-encoding by the
    registry changes the digest and fails the byte-for-byte comparisons.
    """
    return (json.dumps(document, indent=2) + "\n").encode()


# ------------------------------------------------------------ names and URLs


def unique_name(prefix: str = "repo") -> str:
    """A repository name no other test uses (the registry is shared by a module)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def unique_tag(prefix: str = "tag") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def url(registry, path: str) -> str:
    """An absolute URL for ``path`` (which starts with ``/``) on ``registry``."""
    return registry.url + path


def resolve(registry, location: str) -> str:
    """
    Resolve a ``Location`` or ``Link`` target against the registry URL as
    clients do: it may be absolute (the reference) or relative to the host.
    """
    assert location, "expected a Location"
    return urljoin(registry.url + "/", location)


def with_query(target: str, **params: str) -> str:
    """Append query parameters to a URL that may already have a query (``?_state=...``)."""
    query = "&".join(f"{key}={quote(str(value), safe=':')}" for key, value in params.items())
    return target + ("&" if "?" in target else "?") + query


def query_of(target: str) -> dict[str, str]:
    """The query parameters of a URL, decoded (last value wins)."""
    return {key: values[-1] for key, values in parse_qs(urlsplit(target).query, keep_blank_values=True).items()}


# ---------------------------------------------------------------- requests


@dataclass
class Reply:
    status: int
    headers: object  # twisted.web.http_headers.Headers
    body: bytes | None
    method: str
    url: str
    length: int | None = None  # the response's Content-Length, if it had one

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        if not values and name.lower() == "content-length" and self.length is not None:
            # Twisted's client keeps Content-Length out of the headers (except for HEAD).
            return str(self.length)
        return values[-1] if values else None

    def header_values(self, name: str) -> list[str]:
        return list(self.headers.getRawHeaders(name) or [])

    def json(self):
        assert self.body is not None, f"{self.method} {self.url}: no body"
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise AssertionError(f"{self.method} {self.url}: body is not JSON: {self.body[:200]!r}") from e

    def __repr__(self) -> str:
        body = self.body if self.body is None or len(self.body) < 300 else self.body[:300] + b"..."
        headers = {k.decode(): [v.decode("latin-1") for v in vs] for k, vs in self.headers.getAllRawHeaders()}
        headers.pop("Date", None)
        if self.length is not None and "Content-Length" not in headers:
            headers["Content-Length"] = [str(self.length)]
        return f"<Reply {self.method} {self.url} -> {self.status} {headers} {body!r}>"


async def fetch(
    method: str, target: str, body: bytes | None = None, headers: dict | None = None, broken_body_ok: bool = False
) -> Reply:
    """
    Send one request and read the whole response.  ``body=None`` sends no
    body; ``b""`` sends ``Content-Length: 0``; any other body is sent with
    its ``Content-Length`` (a ``Content-Length`` in ``headers`` only states
    that, and must match).  ``body`` may also be a Twisted body producer
    (one of unknown length goes out with ``Transfer-Encoding: chunked``).
    A header whose value is a list is sent as one header line per value.
    ``broken_body_ok`` tolerates a response whose body cannot be read in
    full (the reference registry's 416 answers declare the blob's length but
    send a shorter body), leaving ``body`` None.
    """
    headers = dict(headers or {})
    for key in [k for k in headers if k.lower() == "content-length"]:
        # Twisted's client sends Content-Length for every body itself; don't send it twice.
        assert body is not None and headers.pop(key) == str(len(body)), "Content-Length must match the body"
    response = await treq.request(
        method,
        target,
        data=body,
        headers={k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in headers.items()},
        persistent=False,
        allow_redirects=False,
    )
    try:
        content = await treq.content(response)
    except ResponseFailed:
        if not broken_body_ok:
            raise
        content = None
    headers = response.headers
    if headers.getRawHeaders("Content-Encoding") == [""]:
        # treq's gzip decoding agent adds an empty Content-Encoding to every response.
        headers.removeHeader("Content-Encoding")
    length = response.length if isinstance(response.length, int) else None
    return Reply(response.code, headers, content, method, target, length)


async def get(registry, path: str, **kw) -> Reply:
    return await fetch("GET", url(registry, path), **kw)


async def head(registry, path: str, **kw) -> Reply:
    return await fetch("HEAD", url(registry, path), **kw)


async def get_manifest(
    registry, name: str, reference: str, method: str = "GET", accept: str | list[str] | None = MANIFEST_ACCEPT
) -> Reply:
    """GET (or ``method``) a manifest; ``accept`` as a list sends one ``Accept`` line per item."""
    headers = {"Accept": accept} if accept else {}
    return await fetch(method, url(registry, f"/v2/{name}/manifests/{reference}"), headers=headers)


async def assert_manifest_body(registry, name: str, references, body: bytes) -> None:
    """A GET of the manifest by each of ``references`` (tags, digests) answers 200 with exactly ``body``."""
    for reference in references:
        reply = await get_manifest(registry, name, reference)
        assert reply.status == 200, reply
        assert reply.body == body


async def put_manifest(registry, name: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST) -> Reply:
    return await fetch("PUT", url(registry, f"/v2/{name}/manifests/{reference}"), body, {"Content-Type": media_type})


# ------------------------------------------------------------------ uploads


async def start_upload(registry, name: str) -> Reply:
    """POST /v2/<name>/blobs/uploads/: 202 and a session ``Location``."""
    reply = await fetch("POST", url(registry, f"/v2/{name}/blobs/uploads/"), b"")
    assert reply.status == 202, reply
    assert reply.header("Location"), reply
    return reply


async def mount(registry, name: str, digest: str, source: str | None = None) -> Reply:
    """POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<source> (no ``from`` when ``source`` is None)."""
    params = {"mount": digest} if source is None else {"mount": digest, "from": source}
    return await fetch("POST", with_query(url(registry, f"/v2/{name}/blobs/uploads/"), **params), b"")


async def push_blob(registry, name: str, data: bytes) -> str:
    """
    Push ``data`` as a blob the way every registry supports: POST to open a
    session, then PUT ``?digest=`` with the whole body.  Returns the digest.
    """
    session = await start_upload(registry, name)
    digest = sha256_digest(data)
    reply = await fetch(
        "PUT",
        with_query(resolve(registry, session.header("Location")), digest=digest),
        data,
        {"Content-Type": "application/octet-stream"},
    )
    assert reply.status == 201, reply
    assert reply.header("Docker-Content-Digest") == digest, reply
    return digest


async def push_blobs(registry, name: str, *blobs: bytes) -> list[str]:
    return [await push_blob(registry, name, blob) for blob in blobs]


@dataclass
class Image:
    """What ``push_image`` pushed: the manifest bytes and the blobs it references."""

    name: str
    reference: str
    manifest: bytes
    digest: str
    config: bytes
    layers: list[bytes]
    media_type: str
    reply: Reply  # the manifest PUT's answer


def image_manifest(
    config: bytes, layers: list[bytes], *, docker: bool = False, config_media_type: str | None = None, **extra
) -> bytes:
    """An image manifest (OCI, or Docker schema 2 with ``docker=True``) for these blobs, serialised."""
    if docker:
        document = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor(config_media_type or DOCKER_CONFIG, config),
            "layers": [descriptor(DOCKER_LAYER, layer) for layer in layers],
        }
    else:
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(config_media_type or OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
        }
    document.update(extra)
    return encode(document)


def image_config(seed: str) -> bytes:
    return encode(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {"Labels": {"seed": seed}},
        }
    )


async def push_image(
    registry,
    name: str,
    reference: str | None = None,
    *,
    seed: str | None = None,
    layers: int = 1,
    docker: bool = False,
    **extra,
) -> Image:
    """
    Push a config, ``layers`` layer blobs and an image manifest referencing
    them to ``name``, under ``reference`` (a tag; by default the manifest's
    own digest).  ``seed`` makes the content unique; ``extra`` goes into the
    manifest (``annotations``, ``subject``, ``artifactType``...).
    """
    seed = seed or uuid.uuid4().hex
    config = image_config(seed)
    layer_blobs = [f"layer {i} of {seed}\n".encode() * 3 for i in range(layers)]
    await push_blobs(registry, name, config, *layer_blobs)
    manifest = image_manifest(config, layer_blobs, docker=docker, **extra)
    digest = sha256_digest(manifest)
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    reply = await put_manifest(registry, name, reference or digest, manifest, media_type)
    assert reply.status == 201, reply
    return Image(name, reference or digest, manifest, digest, config, layer_blobs, media_type, reply)


async def push_index(
    registry, name: str, reference: str | None, manifests: list[Image], *, docker: bool = False, **extra
) -> tuple[bytes, str, Reply]:
    """Push an OCI index (or Docker manifest list) of already-pushed images."""
    media_type = DOCKER_LIST if docker else OCI_INDEX
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": len(image.manifest),
                "platform": {"architecture": arch, "os": "linux"},
            }
            for image, arch in zip(manifests, ["amd64", "arm64", "s390x", "ppc64le", "riscv64", "386"], strict=False)
        ],
    }
    document.update(extra)
    body = encode(document)
    digest = sha256_digest(body)
    reply = await put_manifest(registry, name, reference or digest, body, media_type)
    assert reply.status == 201, reply
    return body, digest, reply


# ------------------------------------------------------------------ checks


def assert_api_version(reply: Reply) -> None:
    assert reply.header(API_VERSION_HEADER) == API_VERSION, reply


def assert_error(reply: Reply, status: int, *codes: str) -> dict:
    """
    ``reply`` is an error of ``status`` whose JSON body has the spec's shape,
    ``{"errors": [{"code", "message", "detail"?}, ...]}``, and (if ``codes``
    are given) its first error's code is one of ``codes``.  HEAD answers have
    no body, so only the status is checked for them.
    """
    assert reply.status == status, reply
    assert_api_version(reply)
    if reply.method == "HEAD":
        assert not reply.body, reply
        return {}
    error = assert_error_shape(reply)
    if codes:
        assert error["code"] in codes, reply
    return error


def assert_error_shape(reply: Reply) -> dict:
    """The body is ``{"errors": [...]}`` with a code and a message in every entry; returns the first."""
    content_type = reply.header("Content-Type") or ""
    assert content_type.split(";")[0].strip() == "application/json", reply
    document = reply.json()
    assert isinstance(document, dict) and isinstance(document.get("errors"), list), reply
    assert document["errors"], reply
    for error in document["errors"]:
        assert isinstance(error, dict), reply
        assert isinstance(error.get("code"), str) and error["code"], reply
        assert re.fullmatch(r"[A-Z_]+", error["code"]), reply
        assert isinstance(error.get("message", ""), str), reply
    return document["errors"][0]


def assert_digest_header(reply: Reply, digest: str) -> None:
    assert reply.header("Docker-Content-Digest") == digest, reply


def parse_link(value: str) -> tuple[str, str]:
    """A ``Link: <target>; rel="next"`` header -> (target, rel)."""
    match = re.fullmatch(r'\s*<([^>]*)>\s*;\s*rel="?([^";]+)"?\s*', value)
    assert match, f"malformed Link header {value!r}"
    return match.group(1), match.group(2)


def next_link(registry, reply: Reply) -> str | None:
    """The absolute URL of the next page from a ``Link`` header, or None if there is none."""
    value = reply.header("Link")
    if value is None:
        return None
    target, rel = parse_link(value)
    assert rel == "next", reply
    return resolve(registry, target)


def parse_range(value: str | None) -> tuple[int, int]:
    """An upload ``Range: 0-<end>`` header (no ``bytes=`` unit) -> (start, end)."""
    assert value is not None, "expected a Range header"
    match = re.fullmatch(r"(\d+)-(\d+)", value)
    assert match, f"malformed upload Range header {value!r}"
    return int(match.group(1)), int(match.group(2))
