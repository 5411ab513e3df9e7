"""
Garbage collection: remove blobs no manifest references, expire abandoned
uploads, and optionally delete untagged manifests and old tags.

Mark and sweep, safe while the registry serves:

- every manifest revision in every repository is a root (unless untagged
  deletion or tag retention removed it first), and marks its own bytes and
  every blob it references (config, layers, artifact blobs).  A manifest
  that cannot be parsed marks every digest written in it.  Any read that
  fails for another reason than "not found" stops the run before it deletes
  anything (`GCAborted`);
- a blob is a candidate only when it is unmarked *and* its data, its
  ``referenced`` marker and every repository link to it are older than the
  grace period (default 24 hours), so a push whose manifest has not
  arrived yet is never broken;
- an upload session whose last activity is older than the upload expiry
  (default 24 hours) is deleted with its partial data.

The handshake with requests running meanwhile
---------------------------------------------

The mark is taken from a scan, and requests go on after it: a client may
HEAD an old unreferenced layer, skip its upload and push a manifest that
references it; upload it again in full into another repository; push a
manifest again by the same digest.  So every request that relies on a
stored blob staying where it is (a blob HEAD or GET, a mount, a finished
upload of bytes already stored, each blob of a manifest PUT, and the
manifest's own bytes) goes through `Keeper.keep`, and the sweep deletes a
candidate only through `_collect_blob`.  Each side writes its flag before
it reads the other's:

- the request: when the blob's data and its marker
  (``blobs/<alg>/<xx>/<hex>/referenced``) are both older than half the
  grace period, it writes the marker (random bytes), then checks that the
  data is still there.  Data missing but in quarantine is moved back;
  missing altogether, the request fails (``BLOB_UNKNOWN``,
  ``MANIFEST_BLOB_UNKNOWN``) before it writes any reference;
- the sweep: it reads the marker, checks the ages, moves the data to
  ``quarantine`` beside it, and reads the marker again.  Changed, the data
  goes back; unchanged, the old links go (through a quarantine of their
  own, so that a request finding one gone can put it back), then the
  quarantined bytes.

The links go before the bytes so that a link is never there without its
data: a blob HEAD whose link is younger than half the grace period is
answered from the link alone (`Keeper.fresh`; the link holds the size).
No sweep takes that blob: it needs every link older than the grace
period, and a link written after its scan was written by a request that
went through this handshake first (every link is written once the data
was checked and kept).

So either the sweep sees the request's marker, or the request sees the
data gone.  A request skips the marker while the data or the marker is
younger than half the grace period: a sweep never takes such a blob, as
long as it decides within a quarter of the grace period of its scan (it
stops sweeping past that, and the next run carries on).  The cost stays off
the hot path: fresh blobs cost nothing more, an old one one ``stat`` of its
marker, and one marker write per half grace period.

Garbage collection in a serving process yields to the reactor every few
milliseconds (`_Pace`), so that requests are served while it runs.

What a run holds does not grow with every path of the store: it walks
``repositories/`` and ``blobs/`` a page at a time where the storage can
(`IWalkPages`), judges one repository at a time (a few at once), and keeps
from the mark only the referenced digests, as bytes.  Unreferenced blobs,
and the repositories linking them (from a second walk), are what grows
with the garbage.  Files deleted once a blob is gone (link quarantines,
upstream records, stale fill claims) go many to a request where the
storage can (`IBatchDelete`: S3 DeleteObjects).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import attr
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import links, paths
from . import manifest as manifests
from .catalog import drop_if_empty, wait_and_relist
from .errors import DigestInvalid, ManifestInvalid
from .reference import ALGORITHMS, Digest, Name, Tag
from .storage.interfaces import (
    DestinationExists,
    IBatchDelete,
    IStorageDriver,
    IWalkPages,
    PathNotFound,
    StorageUnavailable,
    read_file,
    stat_file,
)
from .storage.priority import background
from .units import DAY

log = Logger()

PACE = 0.001  # seconds of work between two yields to the reactor
# While requests wait for their answer (`_Pace`): seconds of work, seconds
# waiting at most for them, and how often to look again meanwhile.
BUSY_SLICE = 0.0002
BUSY_WAIT = 0.05
BUSY_POLL = 0.001
LARGE_MANIFEST = 256 << 10  # bytes above which a manifest is parsed in a thread
PAGE = 1000  # paths per listing request, where the storage walks page by page
# Storage requests a run keeps going at once: repositories judged, manifests
# of one repository read, or unreferenced blobs collected at the same time.
# A run in a serving process (`scheduled`) keeps to one, so that the
# storage keeps answering the requests served meanwhile.
AT_ONCE = 8
DELETE_BATCH = 1000  # files per batched delete (S3 DeleteObjects takes 1,000 keys)
CLAIM_STALE = 600.0  # seconds after its lease ran out that a pull-through fill claim is deleted


class GCAborted(Exception):
    """A read failed: the run stopped before deleting anything."""


@attr.s(auto_attribs=True, frozen=True, kw_only=True)
class GCOptions:
    dry_run: bool = False
    grace: float = DAY  # seconds a new blob or link is safe
    upload_expiry: float = DAY  # seconds an idle upload session lives
    delete_untagged: bool = False
    keep_tags: int | None = None  # keep only the newest K tags matching tag_pattern
    tag_pattern: str = "*"


@attr.s(auto_attribs=True)
class GCReport:
    dry_run: bool = False
    blobs_removed: list = attr.Factory(list)  # (digest, size)
    manifests_removed: list = attr.Factory(list)  # (repository, digest)
    tags_removed: list = attr.Factory(list)  # (repository, tag)
    uploads_removed: list = attr.Factory(list)  # (repository, upload id, size)
    blobs_kept: int = 0
    claims_removed: int = 0  # pull-through fill claims whose lease ran out long ago

    @property
    def bytes_freed(self) -> int:
        return sum(size for _, size in self.blobs_removed) + sum(size for *_, size in self.uploads_removed)

    def to_json(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "blobs_removed": [{"digest": d, "size": s} for d, s in self.blobs_removed],
            "manifests_removed": [{"repository": r, "digest": d} for r, d in self.manifests_removed],
            "tags_removed": [{"repository": r, "tag": t} for r, t in self.tags_removed],
            "uploads_removed": [{"repository": r, "id": i, "size": s} for r, i, s in self.uploads_removed],
            "blobs_kept": self.blobs_kept,
            "claims_removed": self.claims_removed,
            "bytes_freed": self.bytes_freed,
        }


# ------------------------------------------------------ the requests' half


def _marker_bytes() -> bytes:
    return os.urandom(16).hex().encode()


async def _restore(storage: IStorageDriver, digest: Digest):
    """Move quarantined bytes back to the blob's data, unless data is there already; the data's stat after."""
    try:
        await storage.move(paths.blob_quarantine(digest), paths.blob_data(digest), replace=False)
    except (PathNotFound, DestinationExists):
        pass  # nothing in quarantine, or the data is back (restored or published again)
    return await stat_file(storage, paths.blob_data(digest))


class Keeper:
    """
    Keeps a stored blob from a sweep running now, for a request about to
    rely on it: see the module docstring.  ``grace`` is the registry's
    ``gc_grace``; ``clock`` gives seconds since the epoch.
    """

    def __init__(self, storage: IStorageDriver, grace: float = DAY, clock=time.time):
        self.storage = storage
        self.refresh = grace / 2
        self._clock = clock

    def fresh(self, mtime: float) -> bool:
        """
        Whether a blob's data, marker or link written at ``mtime`` is
        younger than half the grace period: no sweep takes a blob while
        one of them is (see the module docstring).
        """
        return self._clock() - mtime < self.refresh

    async def keep(self, digest: Digest, info):
        """
        ``info``: the `FileInfo` of the blob's data the caller just took, or
        None when there was none.  Fires with the data's `FileInfo` once no
        sweep can take it any more, or None when the blob is gone.  Costs
        nothing for data younger than half the grace period, and one
        ``stat`` for older data whose marker is.
        """
        if info is not None:
            if self.fresh(info.mtime):
                return info
            marker = await stat_file(self.storage, paths.blob_referenced(digest))
            if marker is not None and self.fresh(marker.mtime):
                return info
        elif (
            await self.storage.stat(paths.blob_quarantine(digest))
        ) is None:  # a full stat: S3 then tells a missing bucket
            return None
        await self.storage.write_bytes(paths.blob_referenced(digest), _marker_bytes())
        info = await stat_file(self.storage, paths.blob_data(digest))
        if info is None:
            info = await _restore(self.storage, digest)
        return info

    async def keep_link(self, name: Name, digest: Digest) -> bool:
        """
        For a request that found no link from ``name`` to the blob: True
        when a sweep had the link in quarantine and it is back (with the
        blob's data kept), False when the repository does not hold the blob.
        """
        # One read: on S3 a GET tells a missing bucket from a missing key, as a HEAD cannot.
        held = await read_file(self.storage, paths.layer_quarantine(name, digest))
        if held is None:
            return False
        if await self.keep(digest, await stat_file(self.storage, paths.blob_data(digest))) is None:
            return False
        await self.storage.write_bytes(paths.layer_link(name, digest), held.data)  # the link as it was
        return True


# ------------------------------------------------------------------- scan


class _Pace:
    """
    Yields to the reactor once ``PACE`` seconds of work went by without a
    pause.  The parts of a run that go on at once share it: once the time
    is up, each of them waits for the same turn of the reactor, so that a
    turn costs about ``PACE`` however many there are.

    ``busy`` (a run in a serving process: whether a request waits for its
    answer) makes the run give way to the requests served: while it says
    so, the run goes on only after ``BUSY_SLICE`` of work (or one storage
    request) and then waits until no request waits any more, for at most
    ``BUSY_WAIT`` seconds, so that it never stops for good under a steady
    load.  A storage request it sends is answered by the same reactor and
    storage as the requests served: without this, each of those shared its
    turns of the reactor with the run's own requests and answers.
    """

    def __init__(self, reactor=None, busy: Callable[[], bool] | None = None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self._busy = busy
        self._since = time.monotonic()
        self._waiting: list[Deferred] | None = None
        self._paused = 0.0

    def __call__(self):
        if self._waiting is None:
            worked = time.monotonic() - self._since
            if worked < PACE and (worked < BUSY_SLICE or self._busy is None or not self._busy()):
                return succeed(None)
            self._waiting = []
            self._paused = time.monotonic()
            self.reactor.callLater(0, self._resume)
        d: Deferred = Deferred()
        self._waiting.append(d)
        return d

    def _resume(self) -> None:
        if self._busy is not None and self._busy() and time.monotonic() - self._paused < BUSY_WAIT:
            self.reactor.callLater(BUSY_POLL, self._resume)
            return
        waiting, self._waiting = self._waiting or [], None
        self._since = time.monotonic()
        for d in waiting:
            d.callback(None)


def _no_pace():
    return succeed(None)


@attr.s(auto_attribs=True)
class _Repository:
    name: str
    revisions: set = attr.Factory(set)  # digests
    tags: dict = attr.Factory(dict)  # tag -> digest, or None when the link holds no digest
    layers: set = attr.Factory(set)  # digests
    quarantined_layers: set = attr.Factory(set)  # digests: link quarantines left behind
    uploads: set = attr.Factory(set)  # upload ids
    referrers: dict = attr.Factory(dict)  # referrer digest -> subject digest


# A run holds a digest for every blob and link of the store: as plain
# strings ("sha256:<hex>") or bytes, not `Digest` objects, because Python's
# cyclic garbage collector walks every container object on each full pass,
# and 100,000 of them made each pass stall the reactor for 50 ms or more.
# What lives for the whole run (the mark) is bytes: a digest's 32 (sha256)
# or 64 (sha512) bytes, about half the memory of its text.
_HEX = re.compile(r"[a-f0-9]+")
_ALGORITHM_OF_SIZE = {length // 2: algorithm for algorithm, length in ALGORITHMS.items()}


def _digest(algorithm: str, hex_: str) -> str | None:
    """``algorithm:hex`` when that is a digest this registry computes, else None."""
    if ALGORITHMS.get(algorithm) == len(hex_) and _HEX.fullmatch(hex_):
        return f"{algorithm}:{hex_}"
    return None


def _key(digest: str) -> bytes | None:
    """A digest as the mark holds it: its bytes (the length tells the algorithm), None when it has no hex."""
    try:
        return bytes.fromhex(digest.split(":", 1)[1])
    except (IndexError, ValueError):
        return None


def _unkey(key: bytes) -> str:
    return f"{_ALGORITHM_OF_SIZE[len(key)]}:{key.hex()}"


def _parsed(digest: str) -> Digest:
    algorithm, hex_ = digest.split(":", 1)
    return Digest(algorithm, hex_)


async def _read(storage: IStorageDriver, path: str) -> bytes | None:
    """The file's bytes, None when it is not there; any other failure stops the run."""
    try:
        return await storage.read_bytes(path)
    except PathNotFound:
        return None
    except Exception as e:
        raise GCAborted(f"could not read {path}: {e}") from e


async def _walk(storage: IStorageDriver, path: str):
    """The paths of every file below ``path``: a page at a time where the storage can (`IWalkPages`)."""
    if not IWalkPages.providedBy(storage):
        for found in await storage.walk(path):
            yield found
        return
    cursor = None
    while True:
        page, cursor = await storage.walk_page(path, cursor, PAGE)
        for found in page:
            yield found
        if cursor is None:
            return


async def _over(items):
    for item in items:
        yield item


async def _each(items, work, at_once: int) -> None:
    """
    ``await work(item)`` for every item of the (async) iterable ``items``,
    ``at_once`` at a time; the first failure stops taking items, and is
    raised once the ones under way ended.
    """
    slots = DeferredSemaphore(at_once)
    running: set[Deferred] = set()
    failures: list = []

    def ended(result, d):
        running.discard(d)
        slots.release()
        if isinstance(result, Failure):
            failures.append(result)

    iterator = items if hasattr(items, "__aiter__") else _over(items)
    try:
        async for item in iterator:
            await slots.acquire()
            if failures:
                slots.release()
                break
            d = Deferred.fromCoroutine(work(item))
            running.add(d)
            d.addBoth(ended, d)
    finally:
        await iterator.aclose()
        if running:
            await gatherResults(list(running))
    if failures:
        failures[0].raiseException()


def _add_path(repo: _Repository, kind: str, rest: list[str]) -> str | None:
    """Record one path of the repository's tree; the tag whose link is to be read, if it is one."""
    if kind == "_layers" and len(rest) == 3 and rest[2] in ("link", "quarantine"):
        if (d := _digest(rest[0], rest[1])) is not None:
            (repo.layers if rest[2] == "link" else repo.quarantined_layers).add(d)
    elif kind == "_manifests" and rest[:1] == ["revisions"] and len(rest) == 4:
        if (d := _digest(rest[1], rest[2])) is not None:
            repo.revisions.add(d)
    elif kind == "_manifests" and rest[:1] == ["tags"] and rest[2:] == ["current", "link"]:
        return rest[1]
    elif kind == "_uploads" and rest:
        repo.uploads.add(rest[0])
    elif kind == "_referrers" and len(rest) == 3:
        subject = _digest(rest[0], rest[1])
        referrer = _digest(*rest[2].split("-", 1)) if "-" in rest[2] else None
        if subject is not None and referrer is not None:
            repo.referrers[referrer] = subject
    return None


def _split(path: str) -> tuple[str, str, list[str]] | None:
    """``(repository, kind, rest)`` of a path below ``repositories/``, None for one outside a repository."""
    parts = path.split("/")
    marker = next((i for i, p in enumerate(parts) if p.startswith("_")), None)
    if marker is None or marker == 0:
        return None
    return "/".join(parts[:marker]), parts[marker], parts[marker + 1 :]


async def repositories(storage: IStorageDriver, pace=None):
    """
    Every repository's revisions, tags, layer links, uploads and referrers,
    one repository at a time, from one walk of ``repositories/`` (a walk
    lists one repository's files next to each other: they all start with
    ``<name>/_``), so that a run holds one repository's paths at a time.
    """
    pace = _no_pace if pace is None else pace
    repo: _Repository | None = None
    seen: set[str] = set()
    async for path in _walk(storage, paths.REPOSITORIES):
        await pace()
        split = _split(path)
        if split is None:
            continue
        name, kind, rest = split
        if repo is None or repo.name != name:
            if repo is not None:
                seen.add(repo.name)
                yield repo
            if name in seen:
                raise GCAborted(f"the storage listed the files of {name} apart from each other")
            repo = _Repository(name)
        tag = _add_path(repo, kind, rest)
        if tag is not None:
            raw = await _read(storage, f"{paths.REPOSITORIES}/{path}")
            if raw is None:
                continue  # deleted since the walk
            try:
                repo.tags[tag] = str(Digest.parse(raw.decode()))
            except (DigestInvalid, UnicodeDecodeError):
                repo.tags[tag] = None
    if repo is not None:
        yield repo


async def scan(storage: IStorageDriver, pace=_no_pace) -> dict[str, _Repository]:
    """Every repository's revisions, tags, layer links, uploads and referrers, from one walk."""
    return {repo.name: repo async for repo in repositories(storage, pace)}


@attr.s(auto_attribs=True, frozen=True, slots=True)
class _References:
    """What one stored manifest references."""

    blobs: frozenset  # digests
    manifests: frozenset  # digests: an index's children
    blobs_stored: frozenset  # digests: the blobs a repository must hold (not foreign ones)


_NOTHING = _References(frozenset(), frozenset(), frozenset())
_DIGEST_IN_TEXT = re.compile(r"\b(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\b")


def _references(data: bytes, media_type: str) -> _References:
    parsed = manifests.parse(data, media_type)
    return _References(
        frozenset(str(b.digest) for b in parsed.blobs),
        frozenset(str(c.digest) for c in parsed.manifests),
        frozenset(str(b.digest) for b in parsed.blobs if not b.is_foreign),
    )


def _every_digest_in(data: bytes) -> _References:
    found = frozenset(_DIGEST_IN_TEXT.findall(data.decode("latin-1")))
    return _References(found, found, found)


async def _read_manifest(storage: IStorageDriver, repo: str, manifest: str, reactor=None) -> _References:
    """
    What a stored manifest references.  Gone (its link or its bytes): nothing.
    Unparseable: every digest written in it, so that nothing it might
    reference is collected.  Unreadable: `GCAborted`.
    """
    name, digest = Name(repo), _parsed(manifest)
    link = await _read(storage, paths.manifest_link(name, digest))
    if link is None:
        return _NOTHING
    # A small manifest's bytes are in its link too (`oci_registry.links`): the same bytes, verified on push.
    revision = links.parse_revision(link, digest)
    data = revision.data
    if data is None:
        data = await _read(storage, paths.blob_data(digest))
    if data is None:
        # In quarantine while another run decides about it?  Read it there.
        data = await _read(storage, paths.blob_quarantine(digest))
        if data is None:
            return _NOTHING
    media_type = revision.media_type
    try:
        if len(data) > LARGE_MANIFEST:
            if reactor is None:
                from twisted.internet import reactor
            return await deferToThreadPool(reactor, reactor.getThreadPool(), _references, data, media_type)
        return _references(data, media_type)
    except (ManifestInvalid, ValueError) as e:
        log.warn(
            "garbage collection: {repository}@{digest} is not a manifest this registry can parse ({error}); "
            "every digest written in it is kept",
            repository=repo,
            digest=manifest,
            error=getattr(e, "detail", None) or e,
        )
        return _every_digest_in(data)


async def _read_manifests(storage, repo: _Repository, pace, reactor=None, slots: DeferredSemaphore | None = None):
    """
    Every revision's references in one repository: ``{digest: _References}``;
    as many at once as ``slots`` (shared by the repositories read at the
    same time) allows, else one at a time.
    """
    documents = {}
    slots = DeferredSemaphore(1) if slots is None else slots

    async def read(digest):
        await pace()
        await slots.acquire()
        try:
            documents[digest] = await _read_manifest(storage, repo.name, digest, reactor)
        finally:
            slots.release()

    await _each(sorted(repo.revisions), read, slots.limit)
    return documents


def _check_tags(repo: _Repository) -> None:
    """Deciding which manifests no tag reaches needs every tag: one that holds no digest stops the run."""
    for tag, digest in repo.tags.items():
        if digest is None:
            path = paths.tag_link(Name(repo.name), Tag(tag))
            raise GCAborted(f"tag {repo.name}:{tag} does not hold a digest ({path}): repair or delete it")


async def _mtime(storage: IStorageDriver, path: str) -> float | None:
    """The file's mtime, None when it is not there (one HEAD on S3: a file is looked for, not a folder)."""
    info = await stat_file(storage, path)
    return None if info is None else info.mtime


class _Deletes:
    """
    Deletions of files that nothing waits for, sent together through
    `IBatchDelete` (``DELETE_BATCH`` a request) where the storage has it,
    one by one as they come where it does not.
    """

    def __init__(self, storage: Any):
        self.storage = storage
        self.batched = IBatchDelete.providedBy(storage)
        self.pending: list[str] = []

    async def add(self, path: str) -> None:
        if not self.batched:
            await self.storage.delete(path)
            return
        self.pending.append(path)
        if len(self.pending) >= DELETE_BATCH:  # full batches only: the rest waits for more, or for `flush`
            batch, self.pending = self.pending[:DELETE_BATCH], self.pending[DELETE_BATCH:]
            await self.storage.delete_files(batch)

    async def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:DELETE_BATCH], self.pending[DELETE_BATCH:]
            await self.storage.delete_files(batch)


async def _delete_file(storage: Any, path: str) -> None:
    """Delete one file now: one request on S3 (``delete`` also looks for a folder of that name)."""
    if IBatchDelete.providedBy(storage):
        await storage.delete_files([path])
    else:
        await storage.delete(path)


@attr.s(auto_attribs=True)
class _Run:
    """One run's state; what lives from the first repository to the sweep is compact."""

    storage: IStorageDriver
    options: GCOptions
    report: GCReport
    now: float
    pace: Callable[[], Deferred]
    reactor: Any = None
    at_once: int = AT_ONCE
    reads: DeferredSemaphore = attr.ib(init=False)

    def __attrs_post_init__(self) -> None:
        self.reads = DeferredSemaphore(self.at_once)  # manifest reads, shared by the repositories judged at once

    marked: set = attr.Factory(set)  # digests' bytes (`_key`)
    doomed_tags: list = attr.Factory(list)  # (repository, tag)
    doomed_manifests: list = attr.Factory(list)  # (repository, digest, subject digest or None)
    uploads: list = attr.Factory(list)  # (repository, upload id)
    quarantined_links: list = attr.Factory(list)  # (repository, digest)
    shrunk: set = attr.Factory(set)  # repositories a manifest or a blob link was removed from


# ------------------------------------------------------ manifests, uploads


async def _apply_retention(run: _Run, repo: _Repository) -> None:
    options = run.options
    keep_tags = options.keep_tags
    if keep_tags is None:
        return
    matching = [t for t in repo.tags if fnmatch.fnmatchcase(t, options.tag_pattern)]
    if len(matching) <= keep_tags:
        return
    dated = []
    for tag in matching:
        await run.pace()
        mtime = await _mtime(run.storage, paths.tag_link(Name(repo.name), Tag(tag)))
        dated.append((mtime or 0.0, tag))
    dated.sort(reverse=True)
    for _, tag in dated[keep_tags:]:
        run.report.tags_removed.append((repo.name, tag))
        run.doomed_tags.append((repo.name, tag))
        del repo.tags[tag]


async def _delete_untagged(run: _Run, repo: _Repository, documents) -> None:
    kept = set(repo.tags.values()) & repo.revisions
    changed = True
    while changed:
        changed = False
        for digest in list(kept):
            for child in documents.get(digest, _NOTHING).manifests:
                if child in repo.revisions and child not in kept:
                    kept.add(child)
                    changed = True
        for referrer, subject in repo.referrers.items():
            if subject in kept and referrer in repo.revisions and referrer not in kept:
                kept.add(referrer)
                changed = True
    for manifest in sorted(repo.revisions - kept):
        await run.pace()
        link = paths.manifest_link(Name(repo.name), _parsed(manifest))
        # A manifest pushed by digest moments ago may be about to be tagged.
        mtime = await _mtime(run.storage, link)
        if mtime is not None and run.now - mtime < run.options.grace:
            continue
        run.report.manifests_removed.append((repo.name, manifest))
        run.doomed_manifests.append((repo.name, manifest, repo.referrers.get(manifest)))
        repo.revisions.discard(manifest)


def _mark(run: _Run, repo: _Repository, documents) -> None:
    marked = run.marked
    for digest in repo.revisions:
        references = documents.get(digest, _NOTHING)
        for found in (digest, *references.blobs, *references.manifests):
            if (key := _key(found)) is not None:
                marked.add(key)


async def _judge(run: _Run, repo: _Repository) -> None:
    """
    One repository's part of the mark: what its manifests reference, and
    (deciding only: nothing is deleted before every repository was read)
    its tags, manifests and uploads to remove.
    """
    options = run.options
    documents = await _read_manifests(run.storage, repo, run.pace, run.reactor, run.reads)
    if options.keep_tags is not None or options.delete_untagged:
        _check_tags(repo)
    if options.keep_tags is not None:
        await _apply_retention(run, repo)
    if options.delete_untagged or options.keep_tags is not None:
        await _delete_untagged(run, repo, documents)
    _mark(run, repo, documents)
    run.uploads.extend((repo.name, upload_id) for upload_id in sorted(repo.uploads))
    run.quarantined_links.extend((repo.name, blob) for blob in sorted(repo.quarantined_layers))


async def _remove_decided(run: _Run) -> None:
    """The tags and manifests `_judge` decided to remove, once every repository was read."""
    if run.options.dry_run:
        return
    storage = run.storage
    for repo, tag in run.doomed_tags:
        await run.pace()
        await storage.delete(paths.tag_folder(Name(repo), tag))
    for repo, manifest, subject in run.doomed_manifests:
        await run.pace()
        name, digest = Name(repo), _parsed(manifest)
        run.shrunk.add(repo)
        if subject is not None:
            await storage.delete(paths.referrer(name, _parsed(subject), digest))
        await storage.delete(paths.manifest_link(name, digest).rsplit("/", 1)[0])


async def _expire_uploads(run: _Run) -> None:
    storage, options, report = run.storage, run.options, run.report
    for repo, upload_id in run.uploads:
        await run.pace()
        name = Name(repo)
        started = await storage.stat(paths.upload_started(name, upload_id))
        data = await storage.stat(paths.upload_data(name, upload_id))
        if started is None and data is None:
            continue  # finished or cancelled since the scan
        last = max(i.mtime for i in (started, data) if i is not None)
        if run.now - last < options.upload_expiry:
            continue
        report.uploads_removed.append((repo, upload_id, data.size if data else 0))
        if not options.dry_run:
            await storage.delete(paths.upload(name, upload_id))


def _lease_end(data: bytes) -> float | None:
    """When a claim's lease ends (``expires`` of `oci_registry.proxy.claim.ClaimRecord`), None if it cannot tell."""
    try:
        return float(json.loads(data)["expires"])
    except (ValueError, TypeError, KeyError):
        return None


async def _expire_claims(run: _Run, deletes: _Deletes) -> None:
    """
    Pull-through fill claims (`oci_registry.proxy.claim`) whose lease ran
    out more than ``CLAIM_STALE`` ago: their holder died, and every process
    that waited took the fetch over long since.  A claim that cannot be read
    is left for the next run.
    """
    storage = run.storage
    try:
        async for path in _walk(storage, paths.FILLS):
            await run.pace()
            parts = path.split("/")
            if len(parts) != 4 or not parts[3].startswith("claim-"):
                continue
            full = f"{paths.FILLS}/{path}"
            try:
                data = await storage.read_bytes(full)
            except PathNotFound:
                continue  # released since the walk
            # Torn or foreign: as old as the file.
            ended = _lease_end(data)
            if ended is None:
                ended = await _mtime(storage, full)
            if ended is None or run.now - ended < CLAIM_STALE:
                continue
            run.report.claims_removed += 1
            if not run.options.dry_run:
                await deletes.add(full)
    except Exception as e:  # noqa: BLE001 claims are bookkeeping: the run's report stands without them
        log.warn("garbage collection could not go through the fill claims: {error}", error=e)


# ------------------------------------------------------------------ sweep


async def _collect_blob(
    storage, blob: str, linked, options: GCOptions, now: float, names: int, deletes: _Deletes, pace=_no_pace
):
    """
    The sweep's half of the handshake for one unmarked blob: fires with the
    bytes freed (or that would be, in a dry run), or None when it is kept.
    ``names``: what the walk found in the blob's folder; ``pace``: the
    run's, between its steps (a dozen storage requests in all).
    """
    digest = _parsed(blob)
    marker = paths.blob_referenced(digest)
    data, quarantine = paths.blob_data(digest), paths.blob_quarantine(digest)
    info = await stat_file(storage, data)
    if info is None or now - info.mtime < options.grace:
        return None
    # The marker's content is read before its age: a rewrite after that shows in the content.
    # Most blobs have none, and the walk said so: a marker written since is a change all the same.
    before = await _read(storage, marker) if names & _REFERENCED else None
    if before is not None:
        mtime = await _mtime(storage, marker)
        if mtime is not None and now - mtime < options.grace:
            return None
    links = []  # (link, its quarantine, what it holds): the links still there
    for repo in linked:
        link = paths.layer_link(Name(repo), digest)
        found = await read_file(storage, link)
        if found is None:
            continue  # deleted since the walk
        if now - found.mtime < options.grace:
            return None
        links.append((link, paths.layer_quarantine(Name(repo), digest), found.data))
    if options.dry_run:
        return info.size

    await pace()
    try:
        # Only when no quarantine is there: another run holding one is deciding about this blob.
        await storage.move(data, quarantine, replace=False)
    except (PathNotFound, DestinationExists):
        return None
    if await _read(storage, marker) != before:
        # A request relies on the blob: it stays.
        try:
            await storage.move(quarantine, data, replace=False)
        except DestinationExists:
            await _delete_file(storage, quarantine)  # the data came back another way: this copy is not needed
        except PathNotFound:
            pass  # the request put it back
        return None
    # A new marker first: another run that judged the blob before this one
    # took it sees a change, and backs off from whatever is at the data by now.
    await pace()
    await storage.write_bytes(marker, _marker_bytes())
    # The links go before the bytes, so that no link is ever there without
    # the data (a blob HEAD answered from a fresh link alone relies on it),
    # through a quarantine a request can restore them from: an upload of
    # the same bytes into one of these repositories may finish at any
    # moment, and then its link stays.
    for link, held, content in links:
        await storage.write_bytes(held, content)
        await _delete_file(storage, link)
    await _delete_file(storage, quarantine)
    await pace()
    if (await stat_file(storage, data)) is not None:
        # Published again meanwhile, or put back from quarantine by a request: it stays, linked as it was.
        for link, held, content in links:
            await storage.write_bytes(link, content)
            await _delete_file(storage, held)
        return None
    # What is left is for nobody: a request finding a link's quarantine
    # without the data fails as it would without it.
    for _, held, _ in links:
        await deletes.add(held)
    # The marker stays a while: a run that judged the blob before this one must see it changed.
    return info.size


async def _tidy_blob(storage, blob: str, names: int, options: GCOptions, now: float) -> bool:
    """
    A blob folder without data (``names``: what the walk found in it):
    bytes in quarantine are put back, for a later run to decide about (an
    interrupted run left them, or another run is deciding right now, and
    then it finds them back: a request could have done the same); a marker
    whose blob is gone is deleted once it is older than the grace period.
    True when data is back.
    """
    digest = _parsed(blob)
    if options.dry_run:
        return bool(names & _QUARANTINE)
    if names & _QUARANTINE:
        return (await _restore(storage, digest)) is not None
    marker = paths.blob_referenced(digest)
    info = await storage.stat(marker)
    if (
        info is not None
        and now - info.mtime >= options.grace
        and (await storage.stat(paths.blob_data(digest))) is None
        and (await storage.stat(paths.blob_quarantine(digest))) is None
    ):
        await storage.delete(marker)
    return False


async def _tidy_links(run: _Run) -> None:
    """Link quarantines an interrupted run left: the link goes back while the blob's data is there."""
    storage = run.storage
    for repo, blob in run.quarantined_links:
        await run.pace()
        if run.options.dry_run:
            continue
        name, digest = Name(repo), _parsed(blob)
        held = paths.layer_quarantine(name, digest)
        info = await storage.stat(paths.blob_data(digest))
        if info is not None and (await storage.stat(paths.layer_link(name, digest))) is None:
            # Through the handshake, as a request restoring it would: another
            # run deciding about the blob right now sees it, so that no link
            # is left without data (a blob HEAD may trust a fresh link alone).
            info = await Keeper(storage, run.options.grace).keep(digest, info)
            content = None if info is None else await read_file(storage, held)
            if content is not None:
                await storage.write_bytes(paths.layer_link(name, digest), content.data)  # the link as it was
        if info is not None:
            await storage.delete(held)
        else:
            mtime = await _mtime(storage, held)
            if mtime is not None and run.now - mtime >= run.options.grace:
                await storage.delete(held)


_DATA, _REFERENCED, _QUARANTINE = 1, 2, 4  # what a blob's folder holds
_FOLDER_FILES = {"data": _DATA, "referenced": _REFERENCED, "quarantine": _QUARANTINE}


async def _blob_folders(storage, pace):
    """
    ``(digest, names, upstream records' paths)`` for every blob folder, one
    at a time, from one walk of ``blobs/`` (a folder's files are next to
    each other in it).
    """
    current: str | None = None
    names = 0
    upstreams: list[str] = []
    async for path in _walk(storage, paths.BLOBS):
        await pace()
        parts = path.split("/")
        if len(parts) < 4 or parts[1] != parts[2][:2]:
            continue
        blob = _digest(parts[0], parts[2])
        if blob is None:
            continue
        if blob != current:
            if current is not None:
                yield current, names, upstreams
            current, names, upstreams = blob, 0, []
        if len(parts) == 4 and parts[3] in _FOLDER_FILES:
            names |= _FOLDER_FILES[parts[3]]
        elif len(parts) == 5 and parts[3] == "upstreams":
            upstreams.append(f"{paths.BLOBS}/{path}")
    if current is not None:
        yield current, names, upstreams


async def _links_to(storage, candidates, pace) -> dict:
    """The repositories linking each candidate blob (by its `_key`): one more walk of ``repositories/``."""
    linked: dict[bytes, object] = {}  # a repository name, or a tuple of them
    async for path in _walk(storage, paths.REPOSITORIES):
        await pace()
        split = _split(path)
        if split is None:
            continue
        name, kind, rest = split
        if kind != "_layers" or len(rest) != 3 or rest[2] != "link":
            continue
        blob = _digest(rest[0], rest[1])
        key = None if blob is None else _key(blob)
        if key is None or key not in candidates:
            continue
        held = linked.get(key)
        if held is None:
            linked[key] = name
        elif held != name and not (isinstance(held, tuple) and name in held):
            linked[key] = (*(held if isinstance(held, tuple) else (held,)), name)
    return linked


async def _sweep(run: _Run, deletes: _Deletes) -> None:
    storage, options, report, now, pace = run.storage, run.options, run.report, run.now, run.pace
    started = time.monotonic()
    # Past this, a blob a request kept alive by skipping its marker (data or
    # marker younger than half the grace period) might look old: stop.
    deadline = started + options.grace / 4 if options.grace > 0 else None
    await _tidy_links(run)
    candidates: dict[bytes, int] = {}  # unmarked blobs with data: what their folder holds
    upstreams: dict[bytes, list] = {}  # their upstream records, the few that have any
    async for blob, names, records in _blob_folders(storage, pace):
        if not names & _DATA:
            if await _tidy_blob(storage, blob, names, options, now):
                report.blobs_kept += 1
            continue
        key = _key(blob)
        if key is None or key in run.marked:
            report.blobs_kept += 1
            continue
        candidates[key] = names
        if records:
            upstreams[key] = records
    if not candidates:
        return
    linked = await _links_to(storage, candidates, pace)
    stopped = False

    async def collect_one(key: bytes) -> None:
        nonlocal stopped
        await pace()
        if stopped or (deadline is not None and time.monotonic() > deadline):
            if not stopped:
                stopped = True
                log.warn(
                    "garbage collection stopped sweeping after {seconds:.0f} s, a quarter of the grace period: "
                    "the next run carries on",
                    seconds=time.monotonic() - started,
                )
            return
        blob = _unkey(key)
        held = linked.get(key, ())
        repos = sorted(held) if isinstance(held, tuple) else [held]
        freed = await _collect_blob(storage, blob, repos, options, now, candidates[key], deletes, pace)
        if freed is None:
            report.blobs_kept += 1
            return
        report.blobs_removed.append((blob, freed))
        run.shrunk.update(repos)
        if not options.dry_run:
            # Which upstreams sent the bytes means nothing once they are gone (a fill of them again writes it anew).
            for record in upstreams.get(key, ()):
                await deletes.add(record)

    await _each(sorted(candidates), collect_one, run.at_once)
    report.blobs_removed.sort()


async def _unlist_emptied(run: _Run) -> None:
    """The catalog entries of repositories this run left without a manifest or a blob (see `oci_registry.catalog`)."""
    if run.options.dry_run:
        return
    dropped = []
    for repo in sorted(run.shrunk):
        await run.pace()
        if await drop_if_empty(run.storage, Name(repo)):
            dropped.append(Name(repo))
    # A replica that wrote an entry just before may push into its repository again without writing it.
    await wait_and_relist(run.storage, dropped, run.reactor, run.pace)


async def _collect(run: _Run) -> None:
    storage = run.storage

    async def judge(repo):
        await _judge(run, repo)

    try:
        await _each(repositories(storage, run.pace), judge, run.at_once)
    except GCAborted as e:
        log.error("garbage collection stopped before deleting anything: {error}", error=str(e))
        raise
    await _remove_decided(run)
    await _expire_uploads(run)
    deletes = _Deletes(storage)
    try:
        await _sweep(run, deletes)
        await _expire_claims(run, deletes)
    finally:
        await deletes.flush()
    await _unlist_emptied(run)


async def collect(
    storage: IStorageDriver,
    options: GCOptions | None = None,
    now: float | None = None,
    reactor=None,
    at_once: int = AT_ONCE,
    busy: Callable[[], bool] | None = None,
) -> GCReport:
    """
    Run one garbage collection over ``storage``, yielding to ``reactor``
    (the global one by default) every few milliseconds, with up to
    ``at_once`` storage requests going at the same time; ``busy``: whether
    requests served by this process wait for their answer, which the run
    then gives way to (see `_Pace`), before each step and, on S3, before
    each storage request.  Fails with `GCAborted` when a read
    fails before anything was deleted.
    """
    options = GCOptions() if options is None else options
    now = time.time() if now is None else now
    clock = time.monotonic()
    report = GCReport(dry_run=options.dry_run)
    run = _Run(storage, options, report, now, _Pace(reactor, busy), reactor, max(1, at_once))
    log.info("garbage collection{dry} started", dry=" (dry run)" if options.dry_run else "")

    # Each storage request waits its turn too, not only each step (see `priority`).
    with background(run.pace) if busy is not None else nullcontext():
        await _collect(run)
    log.info(
        "garbage collection{dry}: {blobs} blobs ({freed} bytes), {manifests} manifests, {tags} tags, "
        "{uploads} uploads, {claims} fill claims removed; {kept} blobs kept ({seconds:.2f} s)",
        dry=" (dry run)" if options.dry_run else "",
        blobs=len(report.blobs_removed),
        freed=report.bytes_freed,
        manifests=len(report.manifests_removed),
        tags=len(report.tags_removed),
        uploads=len(report.uploads_removed),
        claims=report.claims_removed,
        kept=report.blobs_kept,
        seconds=time.monotonic() - clock,
    )
    return report


async def usage(storage: IStorageDriver) -> list[dict]:
    """Bytes each repository references: in all, unique to it, and shared with others."""
    repos = await scan(storage)
    holders: dict[str, set] = defaultdict(set)
    for repo in repos.values():
        digests = set(repo.layers) | set(repo.revisions)
        for digest in repo.revisions:
            digests.update((await _read_manifest(storage, repo.name, digest)).blobs_stored)
        for digest in digests:
            holders[digest].add(repo.name)
    sizes = {}
    for digest in holders:
        info = await storage.stat(paths.blob_data(_parsed(digest)))
        sizes[digest] = info.size if info else 0
    rows = []
    for name in sorted(repos):
        mine = [d for d, h in holders.items() if name in h]
        unique = sum(sizes[d] for d in mine if len(holders[d]) == 1)
        shared = sum(sizes[d] for d in mine if len(holders[d]) > 1)
        rows.append(
            {"repository": name, "total": unique + shared, "unique": unique, "shared": shared, "blobs": len(mine)}
        )
    return rows


def scheduled(storage: IStorageDriver, options: GCOptions, interval: float, reactor=None, observer=None, busy=None):
    """
    A service collecting garbage every ``interval`` seconds in this process
    (the daemon runs it in worker 0 only), yielding to the reactor after
    each millisecond of work, and giving way while ``busy()`` (a request
    served here waits for its answer: `RequestTracker.waiting`), so that
    requests are served meanwhile.  A run that fails is logged in one line;
    the next one runs as planned.  ``observer`` (the metrics) is told of
    each run: ``ran(report, seconds)`` or ``failed(seconds)``.
    """
    from twisted.application.internet import TimerService

    def failed(failure, started):
        if observer is not None:
            observer.failed(time.monotonic() - started)
        if failure.check(StorageUnavailable):
            log.error("scheduled garbage collection not run: storage unavailable: {cause}", cause=failure.value.cause)
        elif not failure.check(GCAborted):  # already logged, in one line
            log.failure("scheduled garbage collection failed", failure)

    def ran(report, started):
        if observer is not None:
            observer.ran(report, time.monotonic() - started)

    def run():
        started = time.monotonic()
        collecting = Deferred.fromCoroutine(collect(storage, options, reactor=reactor, at_once=1, busy=busy))
        return collecting.addCallbacks(ran, failed, callbackArgs=(started,), errbackArgs=(started,))

    service = TimerService(interval, run)
    service.setName("gc")
    return service
