"""
The HTTP API: a Klein app that parses requests, calls the `Registry`, and
writes responses.  No storage or business logic lives here.
"""

from __future__ import annotations

import re
import time
from urllib.parse import urlencode

from klein import Klein
from twisted.logger import Logger
from twisted.web.resource import Resource
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound
from werkzeug.routing import PathConverter

from ..auth import CATALOG, IAuthorizer, InsufficientScope, OpenAccess, delete, pull, push
from ..errors import (
    Denied,
    DigestInvalid,
    InsufficientStorage,
    ManifestUnknown,
    NotFound,
    RegistryError,
    TagInvalid,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Unsupported,
    UploadRangeInvalid,
)
from ..identity import Caller, Principal
from ..interfaces import IRegistry
from ..listing import REFERRERS_PAGE
from ..manifest import OCI_INDEX
from ..reference import Digest, Name, Tag, parse_reference
from ..registry import UploadStatus, upload_location
from ..storage.interfaces import StorageFull, StorageUnavailable
from .body import body_of, declared_length, read_small_body
from .context import client_of, context_of, noted_user
from .responses import json_body, next_link, number, page_size, parse_range, send_reader

log = Logger()

API_VERSION = (b"Docker-Distribution-Api-Version", b"registry/2.0")
_CONTENT_RANGE = re.compile(r"(?:bytes )?([0-9]+)-([0-9]+)(?:/(?:[0-9]+|\*))?")


def _arg(request, name: str) -> str | None:
    values = request.args.get(name.encode())
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


def _lookup_reference(text: str):
    """A reference to look up: a tag that cannot exist is simply not found (404), as the conformance suite expects."""
    try:
        return parse_reference(text)
    except TagInvalid:
        raise ManifestUnknown(text) from None


def _header(request, name: str) -> str | None:
    # By a bytes name: twisted.web decodes values as UTF-8 for a str name, and fails on other bytes.
    value = request.getHeader(name.encode("ascii"))
    if value is None:
        return None
    return value.decode("latin-1")


def _set(request, **headers) -> None:
    for key, value in headers.items():
        request.setHeader(key.replace("_", "-").encode(), str(value).encode())


def _content_length(request) -> int | None:
    return declared_length(request)


def _accepted_types(request) -> tuple[str, ...]:
    """The media types of every ``Accept`` header, in order, without parameters (a proxy forwards them)."""
    types = []
    for value in request.requestHeaders.getRawHeaders(b"accept", []):
        for item in value.decode("latin-1").split(","):
            media_type = item.split(";", 1)[0].strip().lower()
            if media_type and media_type not in types:
                types.append(media_type)
    return tuple(types)


def _etag_matches(request, digest: Digest) -> bool:
    wanted = _header(request, "If-None-Match")
    if not wanted:
        return False
    tags = {t.strip().removeprefix("W/").strip('"') for t in wanted.split(",")}
    return "*" in tags or str(digest) in tags


class _NameConverter(PathConverter):
    """A repository name in a route: anything up to the route's suffix, validated by `Name.parse`."""

    regex = ".+?"
    part_isolating = False  # a name spans several path segments


def caller_of(request, principal: Principal) -> Caller:
    """
    Who asks, and from where, as the registry's operations are told it
    (see `oci_registry.identity`): the principal its authorizer returned
    and the request's facts, with a new id for the request (what ties the
    events one request caused together, as in Distribution's notifications).
    """
    noted_user(request, principal.name)
    context = context_of(request)
    return Caller(
        principal=principal,
        addr=context.origin.client,  # behind a trusted proxy, the address it reports
        host=context.origin.host,
        method=request.method.decode("ascii", "replace"),
        useragent=_header(request, "User-Agent"),
        request_id=context.request_id,
    )


class RegistryAPI:
    """
    The Distribution API over an `IRegistry`.  ``resource()`` gives an
    `IResource` to serve at the root of any `Site`.
    """

    app = Klein()
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False
    app.url_map.converters["name"] = _NameConverter

    def __init__(
        self,
        registry: IRegistry,
        max_uploads_per_client: int = 0,
        upload_expiry: float = 24 * 3600.0,
        authorizer: IAuthorizer | None = None,
    ):
        self.registry = registry
        self.auth = authorizer if authorizer is not None else OpenAccess()
        self.anonymous_mounts = isinstance(self.auth, OpenAccess)
        self.max_uploads_per_client = max_uploads_per_client
        self.upload_expiry = upload_expiry
        self._open_uploads: dict[str, dict[str, float]] = {}  # client -> upload id -> started

    def resource(self) -> Resource:
        return _APIResource(self.app.resource())

    def open_uploads(self) -> int:
        """Upload sessions started here and not finished, cancelled or expired yet (for the metrics)."""
        cutoff = time.time() - self.upload_expiry
        return sum(1 for sessions in self._open_uploads.values() for started in sessions.values() if started >= cutoff)

    # ---------------------------------------------------------------- errors

    @app.handle_errors(RegistryError)
    def registry_error(self, request, failure):
        return self._error(request, failure.value)

    @app.handle_errors(StorageFull)
    def storage_full(self, request, failure):
        log.error("storage is full: {method} {uri} failed", method=request.method, uri=request.uri)
        return self._error(request, InsufficientStorage())

    @app.handle_errors(StorageUnavailable)
    def storage_unavailable(self, request, failure):
        # The driver logs the cause, once per outage; the client learns no more than this.
        return self._error(request, Unavailable("storage unavailable", headers={"Retry-After": "10"}))

    @app.handle_errors(HTTPException)
    def http_error(self, request, failure):
        if isinstance(failure.value, MethodNotAllowed):
            return self._error(request, Unsupported(f"{request.method.decode()} is not allowed here"))
        if isinstance(failure.value, RouteNotFound):
            return self._error(request, NotFound(request.path.decode("utf-8", "replace")))
        error = RegistryError(failure.value.description)
        error.status = failure.value.code
        return self._error(request, error)

    @app.handle_errors(Exception)
    def unexpected(self, request, failure):
        log.failure("error handling {method} {uri}", failure, method=request.method, uri=request.uri)
        return self._error(request, RegistryError("internal error"))

    def _error(self, request, error: RegistryError) -> bytes:
        request.setResponseCode(error.status)
        for key, value in error.headers.items():
            request.setHeader(key.encode(), str(value).encode())
        return json_body(request, {"errors": [{"code": error.code, "message": error.message, "detail": error.detail}]})

    # ------------------------------------------------------------------ base

    @app.route("/v2/", methods=["GET", "HEAD"])
    async def base(self, request):
        noted_user(request, (await self.auth.authorize(request, [])).name)
        return json_body(request, {})

    # ----------------------------------------------------------------- blobs

    @app.route("/v2/<name:name>/blobs/<digest>", methods=["GET", "HEAD"])
    async def get_blob(self, request, name, digest):
        name, digest = Name.parse(name), Digest.parse(digest)
        caller = caller_of(request, await self.auth.authorize(request, [pull(name)]))
        info = await self.registry.stat_blob(name, digest, head=request.method == b"HEAD", caller=caller)
        _set(request, Docker_Content_Digest=digest, ETag=f'"{digest}"', Accept_Ranges="bytes")
        if _etag_matches(request, digest):
            request.setResponseCode(304)
            return b""
        if request.method == b"GET":
            url = await self.registry.blob_redirect(name, digest, caller=caller)
            if url:
                request.setResponseCode(307)
                _set(request, Location=url, Content_Length=0)
                return b""
        _set(request, Content_Type="application/octet-stream", Cache_Control="max-age=31536000")
        span = parse_range(_header(request, "Range"), info.size)
        start, end = span if span is not None else (0, info.size - 1)
        length = end - start + 1
        if span is not None:
            request.setResponseCode(206)
            _set(request, Content_Range=f"bytes {start}-{end}/{info.size}")
        _set(request, Content_Length=length)
        if request.method == b"HEAD" or length == 0:
            return b""
        reader = await self.registry.open_blob(name, digest, start, length, caller=caller)
        await send_reader(request, reader, length)
        return None

    @app.route("/v2/<name:name>/blobs/<digest>", methods=["DELETE"])
    async def delete_blob(self, request, name, digest):
        name, digest = Name.parse(name), Digest.parse(digest)
        caller = caller_of(request, await self.auth.authorize(request, [delete(name)]))
        await self.registry.delete_blob(name, digest, caller=caller)
        request.setResponseCode(202)
        _set(request, Content_Length=0)
        return b""

    # --------------------------------------------------------------- uploads

    @app.route("/v2/<name:name>/blobs/uploads/", methods=["POST"])
    async def start_upload(self, request, name):
        name = Name.parse(name)
        caller = caller_of(request, await self.auth.authorize(request, [push(name)]))
        mount, source = _arg(request, "mount"), _arg(request, "from")
        if mount is not None:
            mount = Digest.parse(mount)
            if source and await self._may_mount_from(request, caller.principal, name, Name.parse(source)):
                if await self.registry.mount_blob(name, mount, Name.parse(source), caller=caller):
                    return self._blob_created(request, name, mount)
            elif not source and self.anonymous_mounts and await self.registry.adopt_blob(name, mount, caller=caller):
                # Mount with no "from": the registry finds the blob itself
                # (only without access control: it would reveal other repositories' blobs).
                return self._blob_created(request, name, mount)
        digest = _arg(request, "digest")
        if digest is not None:
            digest = Digest.parse(digest)
            await self.registry.put_blob(name, digest, body_of(request), _content_length(request), caller=caller)
            return self._blob_created(request, name, digest)
        client = self._admit_upload(request)
        status = await self.registry.start_upload(name, caller=caller)
        self._open_uploads.setdefault(client, {})[status.id] = time.time()
        request.setResponseCode(202)
        return self._upload_headers(request, status)

    async def _may_mount_from(self, request, principal: Principal, name: Name, source: Name) -> bool:
        """
        Whether a mount may read from ``source``: it needs pull there, as a
        pull would.  A token lacking that scope gets 401 insufficient_scope
        (the client may fetch a wider one, as CNCF Distribution asks); any
        other refusal starts an ordinary upload instead.
        """
        try:
            await self.auth.authorize(request, [push(name), pull(source)], principal)
        except InsufficientScope:
            raise
        except (Denied, Unauthorized):
            return False
        return True

    def _admit_upload(self, request) -> str:
        """Per-client cap on open upload sessions (429 past it); expired sessions do not count."""
        client = client_of(request)
        sessions = self._open_uploads.get(client, {})
        cutoff = time.time() - self.upload_expiry
        for upload_id in [u for u, started in sessions.items() if started < cutoff]:
            del sessions[upload_id]
        if self.max_uploads_per_client and len(sessions) >= self.max_uploads_per_client:
            raise TooManyRequests(
                f"{len(sessions)} upload sessions are open from {client}", headers={"Retry-After": "60"}
            )
        return client

    def _close_upload(self, upload_id: str) -> None:
        for client, sessions in list(self._open_uploads.items()):
            if sessions.pop(upload_id, None) is not None:
                if not sessions:
                    del self._open_uploads[client]
                return

    @app.route("/v2/<name:name>/blobs/uploads/<upload_id>", methods=["GET"])
    async def upload_status(self, request, name, upload_id):
        name = Name.parse(name)
        caller = caller_of(request, await self.auth.authorize(request, [push(name)]))
        status = await self.registry.upload_status(name, upload_id, caller=caller)
        request.setResponseCode(204)
        return self._upload_headers(request, status)

    @app.route("/v2/<name:name>/blobs/uploads/<upload_id>", methods=["PATCH"])
    async def patch_upload(self, request, name, upload_id):
        name = Name.parse(name)
        caller = caller_of(request, await self.auth.authorize(request, [push(name)]))
        start, length = self._chunk_range(request)
        status = await self.registry.append_upload(
            name, upload_id, body_of(request), start=start, length=length, caller=caller
        )
        request.setResponseCode(202)
        return self._upload_headers(request, status)

    @app.route("/v2/<name:name>/blobs/uploads/<upload_id>", methods=["PUT"])
    async def finish_upload(self, request, name, upload_id):
        name = Name.parse(name)
        caller = caller_of(request, await self.auth.authorize(request, [push(name)]))
        raw = _arg(request, "digest")
        if raw is None:
            raise DigestInvalid("the digest query parameter is required")
        digest = Digest.parse(raw)
        start, length = self._chunk_range(request)
        try:
            if start is None and length is not None:
                # The last chunk (or the whole blob) and the finish in one step: a small blob is stored once.
                await self.registry.finish_upload(name, upload_id, digest, body_of(request), caller=caller)
            else:
                await self.registry.append_upload(
                    name, upload_id, body_of(request), start=start, length=length, caller=caller
                )
                await self.registry.finish_upload(name, upload_id, digest, caller=caller)
        finally:
            self._close_upload(upload_id)
        return self._blob_created(request, name, digest)

    @app.route("/v2/<name:name>/blobs/uploads/<upload_id>", methods=["DELETE"])
    async def cancel_upload(self, request, name, upload_id):
        name = Name.parse(name)
        caller = caller_of(request, await self.auth.authorize(request, [push(name)]))
        await self.registry.cancel_upload(name, upload_id, caller=caller)
        self._close_upload(upload_id)
        request.setResponseCode(204)
        return b""

    def _chunk_range(self, request) -> tuple[int | None, int | None]:
        """The chunk's start from ``Content-Range``, checked against ``Content-Length``."""
        length = _content_length(request)
        header = _header(request, "Content-Range")
        if not header:
            return None, length
        match = _CONTENT_RANGE.fullmatch(header.strip())
        if match is None:
            raise UploadRangeInvalid(f"malformed Content-Range {header!r}")
        start, end = number(match.group(1)), number(match.group(2))
        if end < start or (length is not None and length != end - start + 1):
            raise UploadRangeInvalid(f"Content-Range {header!r} does not match Content-Length {length}")
        return start, end - start + 1

    def _upload_headers(self, request, status: UploadStatus) -> bytes:
        _set(
            request,
            Location=upload_location(status.name, status.id),
            Range=status.range,
            Docker_Upload_UUID=status.id,
            Content_Length=0,
        )
        if self.registry.min_chunk_length:
            _set(request, OCI_Chunk_Min_Length=self.registry.min_chunk_length)
        return b""

    def _blob_created(self, request, name: Name, digest: Digest) -> bytes:
        request.setResponseCode(201)
        _set(request, Location=f"/v2/{name}/blobs/{digest}", Docker_Content_Digest=digest, Content_Length=0)
        return b""

    # ------------------------------------------------------------- manifests

    @app.route("/v2/<name:name>/manifests/<reference>", methods=["GET", "HEAD"])
    async def get_manifest(self, request, name, reference):
        name, reference = Name.parse(name), _lookup_reference(reference)
        caller = caller_of(request, await self.auth.authorize(request, [pull(name)]))
        head = request.method == b"HEAD"
        stored = await self.registry.get_manifest(
            name, reference, head=head, accept=_accepted_types(request), caller=caller
        )
        _set(
            request,
            Content_Type=stored.media_type,
            Docker_Content_Digest=stored.digest,
            ETag=f'"{stored.digest}"',
            Content_Length=stored.size,
        )
        if _etag_matches(request, stored.digest):
            request.setResponseCode(304)
            return b""
        return stored.data or b""

    @app.route("/v2/<name:name>/manifests/<reference>", methods=["PUT"])
    async def put_manifest(self, request, name, reference):
        name, reference = Name.parse(name), parse_reference(reference)
        caller = caller_of(request, await self.auth.authorize(request, [push(name)]))
        # distribution-spec 1.1+: PUT /manifests/<digest>?tag=a&tag=b tags it too.
        tags = tuple(Tag.parse(t.decode("utf-8", "replace")) for t in request.args.get(b"tag", []))
        data = await read_small_body(request, self.registry.max_manifest_size)
        pushed = await self.registry.put_manifest(
            name, reference, data, _header(request, "Content-Type"), tags, caller=caller
        )
        request.setResponseCode(201)
        _set(
            request,
            Location=f"/v2/{name}/manifests/{pushed.digest}",
            Docker_Content_Digest=pushed.digest,
            Content_Length=0,
        )
        if tags:
            request.responseHeaders.setRawHeaders(b"OCI-Tag", [str(t).encode() for t in tags])
        if pushed.subject is not None:
            _set(request, OCI_Subject=pushed.subject)
        return b""

    @app.route("/v2/<name:name>/manifests/<reference>", methods=["DELETE"])
    async def delete_manifest(self, request, name, reference):
        name, reference = Name.parse(name), _lookup_reference(reference)
        caller = caller_of(request, await self.auth.authorize(request, [delete(name)]))
        await self.registry.delete_manifest(name, reference, caller=caller)
        request.setResponseCode(202)
        _set(request, Content_Length=0)
        return b""

    # ------------------------------------------------------------- discovery

    @app.route("/v2/<name:name>/tags/list", methods=["GET"])
    async def list_tags(self, request, name):
        name = Name.parse(name)
        caller = caller_of(request, await self.auth.authorize(request, [pull(name)]))
        n, last = _arg(request, "n"), _arg(request, "last") or None
        tags = await self.registry.list_tags(name, page_size(n), last, caller=caller)
        if tags.next is not None:
            _set(request, Link=next_link(f"/v2/{name}/tags/list", n, tags.next))
        return json_body(request, {"name": str(name), "tags": tags.entries})

    @app.route("/v2/_catalog", methods=["GET"])
    async def catalog(self, request):
        principal = await self.auth.authorize(request, [CATALOG])
        caller = caller_of(request, principal)
        n, last = _arg(request, "n"), _arg(request, "last") or None
        names, more = await self._visible_repositories(principal, caller, page_size(n), last)
        if more:
            _set(request, Link=next_link("/v2/_catalog", n, names[-1]))
        return json_body(request, {"repositories": names})

    async def _visible_repositories(
        self, principal: Principal, caller: Caller, limit: int, last: str | None
    ) -> tuple[list[str], bool]:
        """
        Up to ``limit`` repositories after ``last`` that the request may see,
        and whether more follow.  The catalog is read a page at a time until
        the page is full: a caller who may see few repositories costs the
        reading of those hidden from it (never named in a ``Link`` either).
        """
        if limit <= 0:
            return [], False
        names: list[str] = []
        for _ in range(1 << 40):  # ends: each turn moves past what it read
            found = await self.registry.catalog(limit + 1 - len(names), last, caller=caller)
            names += await self.auth.filter_repositories(principal, found.entries)
            if len(names) > limit or found.next is None:
                break
            last = found.next
        return names[:limit], len(names) > limit

    @app.route("/v2/<name:name>/referrers/<digest>", methods=["GET"])
    async def referrers(self, request, name, digest):
        name, digest = Name.parse(name), Digest.parse(digest)
        caller = caller_of(request, await self.auth.authorize(request, [pull(name)]))
        artifact_type = _arg(request, "artifactType") or None
        n, last = _arg(request, "n"), _arg(request, "last") or None
        limit = min(page_size(n), REFERRERS_PAGE) if n else REFERRERS_PAGE
        found = await self.registry.referrers(name, digest, artifact_type, last, limit, caller=caller)
        if artifact_type is not None:
            _set(request, OCI_Filters_Applied="artifactType")
        if found.next is not None:
            query = {"n": n} if n else {}
            query["last"] = found.next
            if artifact_type is not None:
                query["artifactType"] = artifact_type
            _set(request, Link=f'</v2/{name}/referrers/{digest}?{urlencode(query)}>; rel="next"')
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found.entries}
        return json_body(request, index, content_type=OCI_INDEX)


class _APIResource(Resource):
    """Sets the headers every response carries, then hands over to Klein."""

    isLeaf = True

    def __init__(self, klein_resource):
        super().__init__()
        self._klein = klein_resource

    def render(self, request):
        request.setHeader(*API_VERSION)
        # Routes are absolute (/v2/...): the same whether this resource is a
        # Site's root or the child "v2" of an application's own root.
        request.prepath = []
        request.postpath = request.path.split(b"/")[1:]
        return self._klein.render(request)
