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
  goes back; unchanged, the quarantined bytes are deleted, then the old
  links (through a quarantine of their own, so that a request finding one
  gone can put it back) and the marker.

So either the sweep sees the request's marker, or the request sees the
data gone.  A request skips the marker while the data or the marker is
younger than half the grace period: a sweep never takes such a blob, as
long as it decides within a quarter of the grace period of its scan (it
stops sweeping past that, and the next run carries on).  The cost stays off
the hot path: fresh blobs cost nothing more, an old one one ``stat`` of its
marker, and one marker write per half grace period.

Garbage collection in a serving process yields to the reactor every few
milliseconds (`_Pace`), so that requests are served while it runs.
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections import defaultdict

import attr
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from . import manifest as manifests
from . import paths
from .errors import DigestInvalid, ManifestInvalid
from .reference import ALGORITHMS, Digest, Name, Tag
from .storage.interfaces import DestinationExists, IStorageDriver, PathNotFound, StorageUnavailable
from .units import DAY

log = Logger()

PACE = 0.001  # seconds of work between two yields to the reactor
LARGE_MANIFEST = 256 << 10  # bytes above which a manifest is parsed in a thread


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
    return await storage.stat(paths.blob_data(digest))


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

    async def keep(self, digest: Digest, info):
        """
        ``info``: the `FileInfo` of the blob's data the caller just took, or
        None when there was none.  Fires with the data's `FileInfo` once no
        sweep can take it any more, or None when the blob is gone.  Costs
        nothing for data younger than half the grace period, and one
        ``stat`` for older data whose marker is.
        """
        now = self._clock()
        if info is not None:
            if now - info.mtime < self.refresh:
                return info
            marker = await self.storage.stat(paths.blob_referenced(digest))
            if marker is not None and now - marker.mtime < self.refresh:
                return info
        elif (await self.storage.stat(paths.blob_quarantine(digest))) is None:
            return None
        await self.storage.write_bytes(paths.blob_referenced(digest), _marker_bytes())
        info = await self.storage.stat(paths.blob_data(digest))
        if info is None:
            info = await _restore(self.storage, digest)
        return info

    async def keep_link(self, name: Name, digest: Digest) -> bool:
        """
        For a request that found no link from ``name`` to the blob: True
        when a sweep had the link in quarantine and it is back (with the
        blob's data kept), False when the repository does not hold the blob.
        """
        if (await self.storage.stat(paths.layer_quarantine(name, digest))) is None:
            return False
        if await self.keep(digest, await self.storage.stat(paths.blob_data(digest))) is None:
            return False
        await self.storage.write_bytes(paths.layer_link(name, digest), str(digest).encode())
        return True


# ------------------------------------------------------------------- scan


class _Pace:
    """Yields to the reactor once ``PACE`` seconds of work went by without a pause."""

    def __init__(self, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self._since = time.monotonic()

    def __call__(self):
        if time.monotonic() - self._since < PACE:
            return succeed(None)

        def resumed(_):
            self._since = time.monotonic()

        return deferLater(self.reactor, 0, lambda: None).addCallback(resumed)


def _no_pace():
    return succeed(None)


@attr.s(auto_attribs=True)
class _Repository:
    name: str
    revisions: set = attr.Factory(set)  # Digest
    tags: dict = attr.Factory(dict)  # tag -> digest, or None when the link holds no digest
    layers: set = attr.Factory(set)  # digests
    quarantined_layers: set = attr.Factory(set)  # digests: link quarantines left behind
    uploads: set = attr.Factory(set)  # upload ids
    referrers: dict = attr.Factory(dict)  # referrer digest -> subject digest


# A run holds a digest for every blob and link of the store: as plain
# strings ("sha256:<hex>"), not `Digest` objects, because Python's cyclic
# garbage collector walks every container object on each full pass, and
# 100,000 of them made each pass stall the reactor for 50 ms or more.
_HEX = re.compile(r"[a-f0-9]+")


def _digest(algorithm: str, hex_: str) -> str | None:
    """``algorithm:hex`` when that is a digest this registry computes, else None."""
    if ALGORITHMS.get(algorithm) == len(hex_) and _HEX.fullmatch(hex_):
        return f"{algorithm}:{hex_}"
    return None


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


async def scan(storage: IStorageDriver, pace=_no_pace) -> dict[str, _Repository]:
    """Every repository's revisions, tags, layer links, uploads and referrers, from one walk."""
    repos: dict[str, _Repository] = {}
    for path in await storage.walk(paths.REPOSITORIES):
        await pace()
        parts = path.split("/")
        marker = next((i for i, p in enumerate(parts) if p.startswith("_")), None)
        if marker is None or marker == 0:
            continue
        name, kind, rest = "/".join(parts[:marker]), parts[marker], parts[marker + 1 :]
        repo = repos.setdefault(name, _Repository(name))
        if kind == "_layers" and len(rest) == 3 and rest[2] in ("link", "quarantine"):
            if (d := _digest(rest[0], rest[1])) is not None:
                (repo.layers if rest[2] == "link" else repo.quarantined_layers).add(d)
        elif kind == "_manifests" and rest[:1] == ["revisions"] and len(rest) == 4:
            if (d := _digest(rest[1], rest[2])) is not None:
                repo.revisions.add(d)
        elif kind == "_manifests" and rest[:1] == ["tags"] and rest[2:] == ["current", "link"]:
            raw = await _read(storage, f"{paths.REPOSITORIES}/{path}")
            if raw is None:
                continue  # deleted since the walk
            try:
                repo.tags[rest[1]] = str(Digest.parse(raw.decode()))
            except (DigestInvalid, UnicodeDecodeError):
                repo.tags[rest[1]] = None
        elif kind == "_uploads" and rest:
            repo.uploads.add(rest[0])
        elif kind == "_referrers" and len(rest) == 3:
            subject = _digest(rest[0], rest[1])
            referrer = _digest(*rest[2].split("-", 1)) if "-" in rest[2] else None
            if subject is not None and referrer is not None:
                repo.referrers[referrer] = subject
    return repos


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
    raw_type = await _read(storage, paths.manifest_link(name, digest))
    if raw_type is None:
        return _NOTHING
    data = await _read(storage, paths.blob_data(digest))
    if data is None:
        # In quarantine while another run decides about it?  Read it there.
        data = await _read(storage, paths.blob_quarantine(digest))
        if data is None:
            return _NOTHING
    media_type = raw_type.decode("utf-8", "replace")
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


async def _read_manifests(storage, repos, pace, reactor=None) -> dict:
    """Every revision's references, read before anything is deleted: ``{(repository, digest): _References}``."""
    documents = {}
    for repo in repos.values():
        for digest in sorted(repo.revisions, key=str):
            await pace()
            documents[(repo.name, digest)] = await _read_manifest(storage, repo.name, digest, reactor)
    return documents


def _check_tags(repos) -> None:
    """Deciding which manifests no tag reaches needs every tag: one that holds no digest stops the run."""
    for repo in repos.values():
        for tag, digest in repo.tags.items():
            if digest is None:
                path = paths.tag_link(Name(repo.name), Tag(tag))
                raise GCAborted(f"tag {repo.name}:{tag} does not hold a digest ({path}): repair or delete it")


async def _mtime(storage: IStorageDriver, path: str) -> float | None:
    info = await storage.stat(path)
    return None if info is None else info.mtime


# ------------------------------------------------------ manifests, uploads


async def _apply_retention(storage, repos, options: GCOptions, report: GCReport, pace) -> None:
    keep_tags = options.keep_tags
    if keep_tags is None:
        return
    doomed = []
    for repo in repos.values():
        matching = [t for t in repo.tags if fnmatch.fnmatchcase(t, options.tag_pattern)]
        if len(matching) <= keep_tags:
            continue
        dated = []
        for tag in matching:
            await pace()
            mtime = await _mtime(storage, paths.tag_link(Name(repo.name), Tag(tag)))
            dated.append((mtime or 0.0, tag))
        dated.sort(reverse=True)
        doomed += [(repo, tag) for _, tag in dated[keep_tags:]]
    for repo, tag in doomed:
        await pace()
        report.tags_removed.append((repo.name, tag))
        del repo.tags[tag]
        if not options.dry_run:
            await storage.delete(paths.tag_folder(Name(repo.name), tag))


async def _delete_untagged(storage, repos, documents, options: GCOptions, report: GCReport, now: float, pace) -> None:
    for repo in repos.values():
        kept = set(repo.tags.values()) & repo.revisions
        changed = True
        while changed:
            changed = False
            for digest in list(kept):
                for child in documents.get((repo.name, digest), _NOTHING).manifests:
                    if child in repo.revisions and child not in kept:
                        kept.add(child)
                        changed = True
            for referrer, subject in repo.referrers.items():
                if subject in kept and referrer in repo.revisions and referrer not in kept:
                    kept.add(referrer)
                    changed = True
        for manifest in sorted(repo.revisions - kept):
            await pace()
            digest = _parsed(manifest)
            link = paths.manifest_link(Name(repo.name), digest)
            # A manifest pushed by digest moments ago may be about to be tagged.
            mtime = await _mtime(storage, link)
            if mtime is not None and now - mtime < options.grace:
                continue
            report.manifests_removed.append((repo.name, manifest))
            repo.revisions.discard(manifest)
            if not options.dry_run:
                subject = repo.referrers.get(manifest)
                if subject is not None:
                    await storage.delete(paths.referrer(Name(repo.name), _parsed(subject), digest))
                await storage.delete(link.rsplit("/", 1)[0])


def _mark(repos, documents) -> set[str]:
    marked: set[str] = set()
    for repo in repos.values():
        for digest in repo.revisions:
            marked.add(digest)
            references = documents.get((repo.name, digest), _NOTHING)
            marked.update(references.blobs)
            marked.update(references.manifests)
    return marked


async def _expire_uploads(storage, repos, options: GCOptions, report: GCReport, now: float, pace) -> None:
    for repo in repos.values():
        name = Name(repo.name)
        for upload_id in sorted(repo.uploads):
            await pace()
            started = await storage.stat(paths.upload_started(name, upload_id))
            data = await storage.stat(paths.upload_data(name, upload_id))
            if started is None and data is None:
                continue  # finished or cancelled since the scan
            last = max(i.mtime for i in (started, data) if i is not None)
            if now - last < options.upload_expiry:
                continue
            report.uploads_removed.append((repo.name, upload_id, data.size if data else 0))
            if not options.dry_run:
                await storage.delete(paths.upload(name, upload_id))


# ------------------------------------------------------------------ sweep


async def _collect_blob(storage, blob: str, linked, options: GCOptions, now: float):
    """
    The sweep's half of the handshake for one unmarked blob: fires with the
    bytes freed (or that would be, in a dry run), or None when it is kept.
    """
    digest = _parsed(blob)
    marker = paths.blob_referenced(digest)
    data, quarantine = paths.blob_data(digest), paths.blob_quarantine(digest)
    info = await storage.stat(data)
    if info is None or now - info.mtime < options.grace:
        return None
    # The marker's content is read before its age: a rewrite after that shows in the content.
    # (A stat first: most blobs have none, and a read of nothing raises, which costs far more.)
    before = await _read(storage, marker) if (await storage.stat(marker)) is not None else None
    if before is not None:
        mtime = await _mtime(storage, marker)
        if mtime is not None and now - mtime < options.grace:
            return None
    links = [(paths.layer_link(Name(repo), digest), paths.layer_quarantine(Name(repo), digest)) for repo in linked]
    for link, _ in links:
        mtime = await _mtime(storage, link)
        if mtime is not None and now - mtime < options.grace:
            return None
    if options.dry_run:
        return info.size

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
            await storage.delete(quarantine)  # the data came back another way: this copy is not needed
        except PathNotFound:
            pass  # the request put it back
        return None
    # A new marker first: another run that judged the blob before this one
    # took it sees a change, and backs off from whatever is at the data by now.
    await storage.write_bytes(marker, _marker_bytes())
    await storage.delete(quarantine)
    if (await storage.stat(data)) is not None:
        return None  # published again meanwhile, or put back from quarantine by a request
    # The links go last, through a quarantine a request can restore them
    # from: an upload of the same bytes into one of these repositories may
    # finish at any moment, and then its link stays.
    for link, held in links:
        await storage.write_bytes(held, str(digest).encode())
        await storage.delete(link)
    if (await storage.stat(data)) is not None:
        for link, held in links:
            await storage.write_bytes(link, str(digest).encode())
            await storage.delete(held)
        return None
    for _, held in links:
        await storage.delete(held)
    # Which upstreams sent the bytes means nothing once they are gone (a fill of them again writes it anew).
    await storage.delete(paths.blob_upstreams(digest))
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


async def _tidy_links(storage, repos, options: GCOptions, now: float, pace) -> None:
    """Link quarantines an interrupted run left: the link goes back while the blob's data is there."""
    for repo in repos.values():
        name = Name(repo.name)
        for blob in sorted(repo.quarantined_layers):
            await pace()
            digest = _parsed(blob)
            held = paths.layer_quarantine(name, digest)
            if options.dry_run:
                continue
            if (await storage.stat(paths.blob_data(digest))) is not None:
                if (await storage.stat(paths.layer_link(name, digest))) is None:
                    await storage.write_bytes(paths.layer_link(name, digest), str(digest).encode())
                    repo.layers.add(blob)
                await storage.delete(held)
            else:
                mtime = await _mtime(storage, held)
                if mtime is not None and now - mtime >= options.grace:
                    await storage.delete(held)


_DATA, _REFERENCED, _QUARANTINE = 1, 2, 4  # what a blob's folder holds
_FOLDER_FILES = {"data": _DATA, "referenced": _REFERENCED, "quarantine": _QUARANTINE}


async def _sweep(storage, repos, marked: set[str], options: GCOptions, report: GCReport, now: float, pace) -> None:
    started = time.monotonic()
    # Past this, a blob a request kept alive by skipping its marker (data or
    # marker younger than half the grace period) might look old: stop.
    deadline = started + options.grace / 4 if options.grace > 0 else None
    await _tidy_links(storage, repos, options, now, pace)
    linked_from: dict[str, object] = {}  # digest -> a repository name, or a tuple of them
    for repo in repos.values():
        for blob in repo.layers:
            await pace()
            held = linked_from.get(blob)
            linked_from[blob] = (
                repo.name if held is None else (*(held if isinstance(held, tuple) else (held,)), repo.name)
            )
    folders: dict[str, int] = {}  # digest -> _DATA | _REFERENCED | _QUARANTINE
    for path in await storage.walk(paths.BLOBS):
        await pace()
        parts = path.split("/")
        if len(parts) != 4 or parts[3] not in _FOLDER_FILES:
            continue
        blob = _digest(parts[0], parts[2])
        if blob is not None and parts[1] == parts[2][:2]:
            folders[blob] = folders.get(blob, 0) | _FOLDER_FILES[parts[3]]
    for blob, names in folders.items():
        await pace()
        if not names & _DATA:
            if await _tidy_blob(storage, blob, names, options, now):
                report.blobs_kept += 1
            continue
        if blob in marked:
            report.blobs_kept += 1
            continue
        if deadline is not None and time.monotonic() > deadline:
            log.warn(
                "garbage collection stopped sweeping after {seconds:.0f} s, a quarter of the grace period: "
                "the next run carries on",
                seconds=time.monotonic() - started,
            )
            return
        held = linked_from.get(blob, ())
        linked = sorted(held) if isinstance(held, tuple) else [held]
        freed = await _collect_blob(storage, blob, linked, options, now)
        if freed is None:
            report.blobs_kept += 1
        else:
            report.blobs_removed.append((blob, freed))


async def collect(
    storage: IStorageDriver, options: GCOptions | None = None, now: float | None = None, reactor=None
) -> GCReport:
    """
    Run one garbage collection over ``storage``, yielding to ``reactor``
    (the global one by default) every few milliseconds.  Fails with
    `GCAborted` when a read fails before anything was deleted.
    """
    options = GCOptions() if options is None else options
    now = time.time() if now is None else now
    pace = _Pace(reactor)
    clock = time.monotonic()
    report = GCReport(dry_run=options.dry_run)
    log.info("garbage collection{dry} started", dry=" (dry run)" if options.dry_run else "")
    try:
        repos = await scan(storage, pace)
        documents = await _read_manifests(storage, repos, pace, reactor)
        if options.keep_tags is not None or options.delete_untagged:
            _check_tags(repos)
    except GCAborted as e:
        log.error("garbage collection stopped before deleting anything: {error}", error=str(e))
        raise
    if options.keep_tags is not None:
        await _apply_retention(storage, repos, options, report, pace)
    if options.delete_untagged or options.keep_tags is not None:
        await _delete_untagged(storage, repos, documents, options, report, now, pace)
    await _expire_uploads(storage, repos, options, report, now, pace)
    marked = _mark(repos, documents)
    await _sweep(storage, repos, marked, options, report, now, pace)
    log.info(
        "garbage collection{dry}: {blobs} blobs ({freed} bytes), {manifests} manifests, {tags} tags, "
        "{uploads} uploads removed; {kept} blobs kept ({seconds:.2f} s)",
        dry=" (dry run)" if options.dry_run else "",
        blobs=len(report.blobs_removed),
        freed=report.bytes_freed,
        manifests=len(report.manifests_removed),
        tags=len(report.tags_removed),
        uploads=len(report.uploads_removed),
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


def scheduled(storage: IStorageDriver, options: GCOptions, interval: float, reactor=None):
    """
    A service collecting garbage every ``interval`` seconds in this process
    (the daemon runs it in worker 0 only), yielding to the reactor after
    each millisecond of work so that requests are served meanwhile.  A run
    that fails is logged in one line; the next one runs as planned.
    """
    from twisted.application.internet import TimerService

    def failed(failure):
        if failure.check(StorageUnavailable):
            log.error("scheduled garbage collection not run: storage unavailable: {cause}", cause=failure.value.cause)
        elif not failure.check(GCAborted):  # already logged, in one line
            log.failure("scheduled garbage collection failed", failure)

    def run():
        return Deferred.fromCoroutine(collect(storage, options, reactor=reactor)).addErrback(failed)

    service = TimerService(interval, run)
    service.setName("gc")
    return service
