"""
The cache policy: `ProxyRegistry` serves repositories under a configured
prefix from an upstream registry, keeping what it fetched in the registry's
own storage as ordinary content, and hands every other name to the local
`Registry`.

- Blobs and manifests by digest never change: once stored they are served
  without asking the upstream again.
- A tag is served from storage for ``tag_ttl`` seconds after it was last
  checked; then an upstream ``HEAD`` (free of Docker Hub's pull limit) says
  whether it still points at the same digest.  A new digest moves the local
  tag; an upstream 404 removes it and is a 404.
- When the upstream is unreachable, times out, answers 5xx or keeps rate
  limiting, what is cached is served anyway (with a log line); what is not
  is 503 ``UNAVAILABLE``.
- Pushes and deletes under a proxied prefix are 405 ``UNSUPPORTED``.
- One blob is fetched once however many clients ask for it at the same time
  (`oci_registry.proxy.fill`), in this process and in every other on the
  same storage (worker processes, replicas on one bucket): the fetch is
  claimed in storage (`oci_registry.proxy.claim`), and the others wait for
  it.  Concurrent requests for the same manifest share one upstream request
  within one process.
- Bytes served from a proxied repository come from its upstream, verified
  against their digest, and from nowhere else: from that repository's own
  cache, or from a blob this same upstream sent before (for another
  repository) once it confirms the repository holds it too.  A blob stored
  for a local repository, or sent by another upstream, is fetched again: an
  upstream that answers a HEAD with 200 proves nothing, and would otherwise
  read what others pushed privately by guessing or learning its digest.
- A part of a blob (a ``Range``) is served only once the whole blob is
  verified; a whole blob is streamed as it arrives, all but its last byte
  before it is verified (`oci_registry.proxy.fill`).
"""

from __future__ import annotations

import time

import attr
from twisted.logger import Logger
from zope.interface import Interface, implementer

from .. import manifest as manifests
from ..errors import (
    BlobUnknown,
    Denied,
    InsufficientStorage,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    RegistryError,
    TooLarge,
    Unavailable,
    Unsupported,
)
from ..identity import Caller
from ..interfaces import ILocalRegistry, IRegistry
from ..listing import REFERRERS_PAGE, Page, page_of, referrer_digest, referrer_entry
from ..reference import DEFAULT_ALGORITHM, Digest, Name, Tag
from ..registry import BlobInfo, PushedManifest, StoredManifest, UploadStatus
from ..storage.interfaces import StorageFull
from .claim import FillClaims
from .client import IUpstream, UpstreamClient, UpstreamDenied, UpstreamError, UpstreamNotFound, UpstreamUnavailable
from .config import UpstreamConfig
from .fill import BlobFill, _Signal

log = Logger()

BLOB_TYPE, MANIFEST_TYPE = "blob", "manifest"  # the ``type`` of what an `IProxyObserver` is told about


class IProxyObserver(Interface):
    """What the cache did, for metrics; called on the reactor thread, it must return at once."""

    def read(kind, hit):
        """A read of a proxied ``kind`` (blob, manifest) was served from the cache (``hit``) or the upstream."""

    def pulled(kind, size):
        """``size`` bytes of ``kind`` were fetched from an upstream."""

    def upstream_failed(kind):
        """A request to an upstream for ``kind`` failed (unreachable, 5xx, refused, an answer not stored)."""

    def stale(kind):
        """A cached ``kind`` was served because the upstream could not say whether it is current."""


@implementer(IProxyObserver)
class _Unobserved:
    def read(self, kind, hit):
        pass

    def pulled(self, kind, size):
        pass

    def upstream_failed(self, kind):
        pass

    def stale(self, kind):
        pass


#: Every manifest type we store, for requests where the client's choice does not matter.
ALL_MANIFEST_TYPES = (
    manifests.OCI_INDEX,
    manifests.DOCKER_LIST,
    manifests.OCI_MANIFEST,
    manifests.DOCKER_MANIFEST,
    manifests.OCI_ARTIFACT,
)


class Upstream:
    """A configured upstream at run time: where its names come from, and its client."""

    def __init__(self, config: UpstreamConfig, client: IUpstream):
        self.config = config
        self.client = client

    def __repr__(self) -> str:
        return f"<Upstream {self.config.prefix or '(mirror)'} -> {self.config.url}>"

    def remote_name(self, name: Name) -> Name | None:
        """The upstream's name for local ``name``, or None when ``name`` is not under this prefix."""
        prefix = self.config.prefix
        if not prefix:
            rest = name.value
        elif name.value.startswith(prefix + "/"):
            rest = name.value[len(prefix) + 1 :]
        else:
            return None
        if self.config.default_namespace and "/" not in rest:
            rest = f"{self.config.default_namespace}/{rest}"
        return Name(rest)


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Route:
    upstream: Upstream
    remote: Name  # the name upstream

    @property
    def client(self) -> IUpstream:
        return self.upstream.client


class _Coalescer:
    """Runs one call per key at a time; callers with the same key share its result."""

    def __init__(self):
        self._running: dict = {}

    async def run(self, key, call):
        running = self._running.get(key)
        if running is not None:
            return await running.wait()
        self._running[key] = signal = _Signal()
        try:
            value = await call()
        except BaseException as e:
            del self._running[key]
            signal.fail(e)
            raise
        del self._running[key]
        signal.fire(value)
        return value


def _upstream_accept(accept: tuple) -> tuple:
    """What to ask the upstream for: the client's types, or all of ours when it named none (or ``*/*``)."""
    if not accept or "*/*" in accept:
        return ALL_MANIFEST_TYPES
    return tuple(accept)


def _acceptable(media_type: str, accept: tuple) -> bool:
    return not accept or "*/*" in accept or media_type in accept


def _canonical(accept: tuple, parsed) -> bool:
    """
    Whether an answer for a tag is what every client gets.  A client that
    takes no index type may be given one platform's manifest instead of the
    tag's index (Docker Hub does that): such an answer is served and cached
    by digest, but does not move the tag.
    """
    if not accept or "*/*" in accept or parsed.is_index:
        return True
    return any(t in accept for t in manifests.INDEX_TYPES)


@implementer(IRegistry)
class ProxyRegistry:
    """
    An `IRegistry` whose names under configured prefixes are pull-through
    caches of upstream registries, and whose other names are the local
    `Registry`'s, passed to it as they are.  Every operation is decided
    here, explicitly: a read is served from the cache or the upstream, a
    push or delete under a prefix is refused (`_local_only`).
    """

    def __init__(self, local: ILocalRegistry, upstreams, clock=time.time, reactor=None):
        self.local = local
        # Longest prefix first; a mirror (prefix "") takes what no prefix does.
        self.upstreams = sorted(upstreams, key=lambda u: len(u.config.prefix), reverse=True)
        self._clock = clock
        self._reactor = reactor
        self.observer = _Unobserved()  # an `IProxyObserver` (the metrics) may take its place
        self._fills: dict[tuple[str, Digest], BlobFill] = {}  # by (upstream URL, digest)
        self._manifests = _Coalescer()
        self._claims: dict[str, FillClaims] = {}  # by upstream URL; none where the storage cannot claim
        if FillClaims.supported(self.storage):
            for upstream in self.upstreams:
                self._claims[upstream.config.url] = FillClaims(
                    self.storage, reactor, lease=upstream.config.fill_lease, clock=clock
                )

    @classmethod
    def from_config(cls, local: ILocalRegistry, configs, reactor=None) -> ProxyRegistry:
        return cls(
            local,
            [
                Upstream(config, UpstreamClient(config, reactor, max_manifest_size=local.max_manifest_size))
                for config in configs
            ],
            reactor=reactor,
        )

    @property
    def storage(self):
        """The local registry's storage, for what runs beside the registry (garbage collection, checks)."""
        return self.local.storage

    @property
    def max_manifest_size(self) -> int:
        return self.local.max_manifest_size

    @property
    def min_chunk_length(self) -> int | None:
        return self.local.min_chunk_length

    def route(self, name: Name) -> Route | None:
        for upstream in self.upstreams:
            remote = upstream.remote_name(name)
            if remote is not None:
                return Route(upstream, remote)
        return None

    def _local_only(self, name: Name) -> None:
        route = self.route(name)
        if route is not None:
            raise Unsupported(
                f"{name} is a pull-through cache of {route.upstream.config.url};"
                " it cannot be pushed to or deleted from",
                message="the repository is a read-only pull-through cache",
            )

    async def _ask(self, call, not_found: RegistryError, kind: str = BLOB_TYPE):
        """An upstream call with its failures turned into the registry's errors."""
        try:
            return await call
        except UpstreamNotFound:
            raise not_found from None
        except UpstreamDenied as e:
            self.observer.upstream_failed(kind)
            raise Denied(f"the upstream registry refused access: {e}") from None
        except UpstreamError as e:
            self.observer.upstream_failed(kind)
            raise Unavailable(f"the upstream registry is unavailable: {e}") from None
        except StorageFull:
            raise InsufficientStorage() from None

    # ------------------------------------------------------------------ blobs

    async def stat_blob(self, name: Name, digest: Digest, head: bool = False, caller: Caller | None = None) -> BlobInfo:
        """
        The blob's size.  For a GET (``head`` false) of a blob not cached yet,
        this starts fetching it, and answers as soon as the upstream has said
        how big it is; a HEAD only asks the upstream.
        """
        route = self.route(name)
        if route is None:
            return await self.local.stat_blob(name, digest, caller=caller)
        source = await self._blob_source(route, name, digest, fetch=not head)
        if not head:
            self.observer.read(BLOB_TYPE, source is None)
        if isinstance(source, BlobFill):
            return BlobInfo(digest, await self._ask(source.wait_size(), BlobUnknown(str(digest))))
        if isinstance(source, int):
            return BlobInfo(digest, source)
        return await self.local.stat_blob(name, digest)

    async def open_blob(
        self, name: Name, digest: Digest, offset: int = 0, length: int | None = None, caller: Caller | None = None
    ):
        """
        A reader from ``offset``; ``length``: how much the caller reads (None:
        to the end).  A blob on its way is followed as it arrives when the
        whole of it is asked for; a part of it only once it is verified
        (the client cannot check a part against the digest).
        """
        route = self.route(name)
        if route is None:
            return await self.local.open_blob(name, digest, offset, length, caller=caller)
        source = await self._blob_source(route, name, digest, fetch=True)
        if isinstance(source, BlobFill):
            size = await self._ask(source.wait_size(), BlobUnknown(str(digest)))
            if offset != 0 or (length is not None and length < size):
                await self._ask(source.wait_done(), BlobUnknown(str(digest)))
            elif not source.complete:
                return source.follow(offset)
        return await self.local.open_blob(name, digest, offset, length)

    async def _sent_by(self, upstream: Upstream, digest: Digest) -> bool:
        """Whether ``upstream`` sent this blob's bytes before (for any repository) and they are stored."""
        return await self.local.sent_by(digest, upstream.config.url)

    async def _blob_source(self, route: Route, name: Name, digest: Digest, fetch: bool):
        """
        None when the blob is stored and linked into ``name``; a `BlobFill`
        when it is on its way from this upstream (started here if need be);
        for a HEAD of a blob nobody is fetching, its size upstream.

        Stored bytes are linked into ``name`` only when this upstream sent
        them before, for another repository, and confirms (HEAD) that it
        holds them under ``name`` too: it proved it has them, so linking
        them reveals nothing it could not send itself.  Bytes stored for any
        other reason (pushed to a local repository, sent by another
        upstream) are never linked on an upstream's word: they are fetched.
        """
        try:
            await self.local.stat_blob(name, digest)
            return None
        except BlobUnknown:
            pass
        key = (route.upstream.config.url, digest)
        fill = self._fills.get(key)
        if fill is not None and fill.error is not None:
            fill = None  # failed, and on its way out: this request starts afresh
        if fill is not None and name in fill.names:
            return fill
        if fill is not None or await self._sent_by(route.upstream, digest):
            # This upstream sends (or sent) these bytes for another repository: link
            # them into this one once it confirms it holds the blob there too.
            size = await self._ask(route.client.head_blob(route.remote, digest), BlobUnknown(str(digest)))
            fill = self._fills.get(key)
            if fill is not None and not fill.done:
                fill.names.add(name)
                return fill
            if await self._sent_by(route.upstream, digest) and await self.local.adopt_blob(name, digest):
                return None
            if not fetch and size is not None:
                return size
        elif not fetch:
            size = await self._ask(route.client.head_blob(route.remote, digest), BlobUnknown(str(digest)))
            if size is not None:
                return size
        fill = self._fills.get(key)
        if fill is not None and not fill.done:
            fill.names.add(name)
            return fill
        fill = BlobFill(
            self.local,
            route.client,
            name,
            route.remote,
            digest,
            on_done=self._fill_done,
            claims=self._claims.get(route.upstream.config.url),
        )
        self._fills[key] = fill
        fill.start()
        return fill

    def _fill_done(self, fill: BlobFill) -> None:
        key = (fill.upstream.url, fill.digest)
        if self._fills.get(key) is fill:
            del self._fills[key]
        if fill.received:
            self.observer.pulled(BLOB_TYPE, fill.received)

    async def blob_redirect(self, name: Name, digest: Digest, caller: Caller | None = None) -> str | None:
        """
        The storage's URL for a stored blob.  For a proxied repository, never
        while the blob is being fetched: it is not there yet, or what is there
        is another repository's copy (the API asks right after `stat_blob`,
        which for a proxied repository that does not hold the blob has just
        started or joined the fetch).  A local repository's blob was verified
        when it was pushed, whatever a fill elsewhere is doing.
        """
        if self.route(name) is not None and any(f.digest == digest and not f.complete for f in self._fills.values()):
            return None
        return await self.local.blob_redirect(name, digest)

    async def delete_blob(self, name: Name, digest: Digest, caller: Caller | None = None) -> None:
        self._local_only(name)
        return await self.local.delete_blob(name, digest, caller=caller)

    async def mount_blob(
        self, name: Name, digest: Digest, source: Name, caller: Caller | None = None
    ) -> BlobInfo | None:
        self._local_only(name)
        return await self.local.mount_blob(name, digest, source, caller=caller)

    async def adopt_blob(self, name: Name, digest: Digest, caller: Caller | None = None) -> BlobInfo | None:
        self._local_only(name)
        return await self.local.adopt_blob(name, digest, caller=caller)

    # ---------------------------------------------------------------- uploads

    async def start_upload(self, name: Name, caller: Caller | None = None) -> UploadStatus:
        self._local_only(name)
        return await self.local.start_upload(name, caller=caller)

    async def upload_status(self, name: Name, upload_id: str, caller: Caller | None = None) -> UploadStatus:
        self._local_only(name)
        return await self.local.upload_status(name, upload_id, caller=caller)

    async def append_upload(
        self,
        name: Name,
        upload_id: str,
        body,
        start: int | None = None,
        length: int | None = None,
        caller: Caller | None = None,
    ) -> UploadStatus:
        self._local_only(name)
        return await self.local.append_upload(name, upload_id, body, start=start, length=length, caller=caller)

    async def finish_upload(
        self, name: Name, upload_id: str, digest: Digest, body=None, caller: Caller | None = None
    ) -> BlobInfo:
        self._local_only(name)
        return await self.local.finish_upload(name, upload_id, digest, body, caller=caller)

    async def put_blob(
        self, name: Name, digest: Digest, body, length: int | None = None, caller: Caller | None = None
    ) -> BlobInfo:
        self._local_only(name)
        return await self.local.put_blob(name, digest, body, length, caller=caller)

    async def cancel_upload(self, name: Name, upload_id: str, caller: Caller | None = None) -> None:
        self._local_only(name)
        return await self.local.cancel_upload(name, upload_id, caller=caller)

    # -------------------------------------------------------------- manifests

    async def put_manifest(
        self,
        name: Name,
        reference: Digest | Tag,
        data: bytes,
        content_type: str | None,
        tags: tuple = (),
        caller: Caller | None = None,
    ) -> PushedManifest:
        self._local_only(name)
        return await self.local.put_manifest(name, reference, data, content_type, tags, caller=caller)

    async def delete_manifest(
        self, name: Name, reference: Digest | Tag, caller: Caller | None = None
    ) -> tuple[Tag, ...]:
        self._local_only(name)
        return await self.local.delete_manifest(name, reference, caller=caller)

    async def get_manifest(
        self,
        name: Name,
        reference: Digest | Tag,
        head: bool = False,
        accept: tuple = (),
        caller: Caller | None = None,
    ) -> StoredManifest:
        """
        ``accept``: the client's Accept media types, forwarded upstream (a
        tag's answer may depend on them; see `_canonical`).
        """
        route = self.route(name)
        if route is None:
            return await self.local.get_manifest(name, reference, head=head, caller=caller)
        if isinstance(reference, Digest):
            try:
                stored = await self.local.get_manifest(name, reference, head=head)
            except ManifestUnknown:
                pass
            else:
                self.observer.read(MANIFEST_TYPE, True)
                return stored
            self.observer.read(MANIFEST_TYPE, False)
            # The digest pins the bytes, so any type the client did not name is fine too.
            wanted = tuple(dict.fromkeys(tuple(accept) + ALL_MANIFEST_TYPES))
            stored = await self._ask(
                self._fetch_manifest(route, name, reference, wanted), ManifestUnknown(str(reference)), MANIFEST_TYPE
            )
            return _for(stored, head)
        return await self._manifest_by_tag(route, name, reference, head, tuple(accept))

    async def _manifest_by_tag(self, route: Route, name: Name, tag: Tag, head: bool, accept: tuple) -> StoredManifest:
        cached = await self._cached_tag(name, tag, head)
        usable = cached if cached is not None and _acceptable(cached.media_type, accept) else None
        if usable is not None and await self._fresh(route, name, tag):
            self.observer.read(MANIFEST_TYPE, True)
            return usable
        try:
            if usable is not None:
                remote = await route.client.head_manifest(route.remote, tag, _upstream_accept(accept))
                if remote.digest == usable.digest:
                    await self._checked(name, tag)
                    self.observer.read(MANIFEST_TYPE, True)
                    return usable
                if remote.digest is not None:
                    moved = await self._retag(name, tag, remote.digest, head, accept)
                    if moved is not None:
                        self.observer.read(MANIFEST_TYPE, True)
                        return moved
            self.observer.read(MANIFEST_TYPE, False)
            stored = await self._fetch_manifest(route, name, tag, _upstream_accept(accept))
            return _for(stored, head)
        except UpstreamNotFound:
            if cached is not None:
                log.info(
                    "{name}:{tag} is gone from {url}: untagged here too",
                    name=str(name),
                    tag=str(tag),
                    url=route.upstream.config.url,
                )
                await self.local.remove_tag(name, tag)
            raise ManifestUnknown(str(tag)) from None
        except UpstreamDenied as e:
            self.observer.upstream_failed(MANIFEST_TYPE)
            raise Denied(f"the upstream registry refused access: {e}") from None
        except UpstreamError as e:
            self.observer.upstream_failed(MANIFEST_TYPE)
            if cached is None:
                raise Unavailable(f"the upstream registry is unavailable: {e}") from None
            self.observer.stale(MANIFEST_TYPE)
            log.warn(
                "serving cached {name}:{tag} ({digest}): upstream {url} unavailable: {error}",
                name=str(name),
                tag=str(tag),
                digest=str(cached.digest),
                url=route.upstream.config.url,
                error=str(e),
            )
            return cached

    async def _cached_tag(self, name: Name, tag: Tag, head: bool) -> StoredManifest | None:
        try:
            return await self.local.get_manifest(name, tag, head=head)
        except ManifestUnknown:
            return None

    async def _fresh(self, route: Route, name: Name, tag: Tag) -> bool:
        ttl = route.upstream.config.tag_ttl
        if ttl <= 0:
            return False
        checked = await self.local.tag_checked_at(name, tag)
        if checked is None:
            return False
        return 0 <= self._clock() - checked < ttl

    async def _checked(self, name: Name, tag: Tag) -> None:
        """Record that the upstream just confirmed the tag (state lives in storage, for every worker)."""
        await self.local.record_tag_check(name, tag, self._clock())

    async def _retag(self, name: Name, tag: Tag, digest: Digest, head: bool, accept: tuple) -> StoredManifest | None:
        """Move the tag to ``digest`` when that manifest is cached already (None when it is not)."""
        try:
            stored = await self.local.get_manifest(name, digest, head=head)
        except ManifestUnknown:
            return None
        if not _acceptable(stored.media_type, accept):
            return None
        await self.local.set_tag(name, tag, digest)
        await self._checked(name, tag)
        log.info("{name}:{tag} moved to {digest} upstream", name=str(name), tag=str(tag), digest=str(digest))
        return stored

    async def _fetch_manifest(self, route: Route, name: Name, reference: Digest | Tag, accept: tuple) -> StoredManifest:
        """GET the manifest upstream (one request for concurrent callers) and store it."""
        key = (str(name), str(reference), accept)
        return await self._manifests.run(key, lambda: self._fetch_and_store(route, name, reference, accept))

    async def _fetch_and_store(self, route, name, reference, accept) -> StoredManifest:
        """
        Store what the upstream sends, as the local registry checks a push:
        within ``max_manifest_size``, valid, and of the digest asked for (or
        announced); a big one parsed and hashed off the reactor thread.  Its
        blobs are not required: they are fetched when they are asked for.
        """
        fetched = await route.client.get_manifest(route.remote, reference, accept)
        if isinstance(reference, Digest):
            algorithm = reference.algorithm
        else:
            algorithm = fetched.digest.algorithm if fetched.digest else DEFAULT_ALGORITHM
        try:
            verified = await self.local.verify_manifest(fetched.data, fetched.media_type, algorithm)
        except TooLarge:
            raise UpstreamUnavailable(
                f"the upstream's manifest is larger than max_manifest_size ({self.local.max_manifest_size} bytes)"
            ) from None
        except ManifestInvalid as e:
            raise UpstreamUnavailable(f"the upstream sent a manifest this registry cannot store: {e.detail}") from None
        digest = verified.digest
        if isinstance(reference, Digest) and digest != reference:
            raise UpstreamUnavailable(f"the upstream sent a manifest with digest {digest} for {reference}")
        if isinstance(reference, Tag) and fetched.digest is not None and digest != fetched.digest:
            raise UpstreamUnavailable(
                f"the upstream's manifest has digest {digest}, not the {fetched.digest} it announced"
            )
        moves_tag = isinstance(reference, Tag) and _canonical(accept, verified.parsed)
        await self.local.store_manifest(name, verified, (reference,) if moves_tag else (), check_references=False)
        self.observer.pulled(MANIFEST_TYPE, len(verified.data))
        if moves_tag:
            await self._checked(name, reference)
        log.info(
            "cached manifest {name}@{digest} ({reference}) from {url}",
            name=str(name),
            digest=str(digest),
            reference=str(reference),
            url=route.upstream.config.url,
        )
        return StoredManifest(digest, verified.media_type, len(verified.data), verified.data)

    # -------------------------------------------------------------- discovery

    async def list_tags(
        self, name: Name, limit: int | None = None, last: str | None = None, caller: Caller | None = None
    ) -> Page:
        """The upstream's tags (its whole list, bounded in size, paged here); the cached ones when it is unavailable."""
        route = self.route(name)
        if route is None:
            return await self.local.list_tags(name, limit, last, caller=caller)
        try:
            tags = await route.client.list_tags(route.remote)
        except UpstreamNotFound:
            raise NameUnknown(str(name)) from None
        except UpstreamDenied as e:
            raise Denied(f"the upstream registry refused access: {e}") from None
        except UpstreamError as e:
            log.warn(
                "listing cached tags of {name}: upstream {url} unavailable: {error}",
                name=str(name),
                url=route.upstream.config.url,
                error=str(e),
            )
            return await self.local.list_tags(name, limit, last, caller=caller)
        return page_of([t for t in tags if last is None or t > last], limit)

    async def catalog(self, limit: int | None = None, last: str | None = None, caller: Caller | None = None) -> Page:
        """Local repositories and the cached ones (the upstreams' catalogs are not merged in)."""
        return await self.local.catalog(limit, last, caller=caller)

    async def referrers(
        self,
        name: Name,
        subject: Digest,
        artifact_type: str | None = None,
        last: str | None = None,
        limit: int = REFERRERS_PAGE,
        caller: Caller | None = None,
    ) -> Page:
        """
        The upstream's referrers with any cached ones, in digest order, a
        page at a time (the upstream's first answer, bounded in size, merged
        into each page of the cache's); only the cached ones when the
        upstream cannot say.
        """
        cached = await self.local.referrers(name, subject, artifact_type, last, limit, caller=caller)
        route = self.route(name)
        if route is None:
            return cached
        try:
            remote = await route.client.referrers(route.remote, subject)
        except UpstreamDenied as e:
            raise Denied(f"the upstream registry refused access: {e}") from None
        except UpstreamError as e:
            # 404 too: an upstream without the referrers API.
            log.info(
                "referrers of {name}@{subject} from cache only: {error}",
                name=str(name),
                subject=str(subject),
                error=str(e),
            )
            return cached
        if artifact_type is not None:
            remote = [d for d in remote if d.get("artifactType") == artifact_type]
        start = referrer_entry(last) if last else None
        end = referrer_entry(cached.next) if cached.next else None  # the cache's later pages hold the rest
        merged = {referrer_entry(str(d.get("digest"))): d for d in cached.entries}
        for descriptor in remote:
            key = referrer_entry(str(descriptor.get("digest")))
            if (start is None or key > start) and (end is None or key <= end):
                merged[key] = descriptor  # the upstream's word over the cache's
        keys = sorted(merged)
        if len(keys) > limit:
            return Page([merged[k] for k in keys[:limit]], referrer_digest(keys[limit - 1]))
        return Page([merged[k] for k in keys], cached.next)


def _for(stored: StoredManifest, head: bool) -> StoredManifest:
    return attr.evolve(stored, data=None) if head else stored
