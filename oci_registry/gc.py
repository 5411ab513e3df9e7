"""
Garbage collection: remove blobs no manifest references, expire abandoned
uploads, and optionally delete untagged manifests and old tags.

Mark and sweep, safe while the registry serves:

- every manifest revision in every repository is a root (unless untagged
  deletion or tag retention removed it first), and marks its own bytes and
  every blob it references (config, layers, artifact blobs);
- a blob is swept only when it is unmarked *and* both its data and every
  repository link to it are older than the grace period (default 24 hours).
  Uploads finish by writing a fresh link, so the blobs of a push whose
  manifest has not arrived yet are never removed within the grace period;
- an upload session whose last activity is older than the upload expiry
  (default 24 hours) is deleted with its partial data.
"""

from __future__ import annotations

import fnmatch
import time
from collections import defaultdict

import attr
from twisted.logger import Logger

from . import manifest as manifests
from . import paths
from .reference import Digest, Name, Tag
from .storage.interfaces import IStorageDriver, PathNotFound

log = Logger()

DAY = 24 * 3600


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


@attr.s(auto_attribs=True)
class _Repository:
    name: str
    revisions: set = attr.Factory(set)  # Digest
    tags: dict = attr.Factory(dict)  # tag -> Digest
    layers: set = attr.Factory(set)  # Digest
    uploads: set = attr.Factory(set)  # upload ids
    referrers: dict = attr.Factory(dict)  # referrer Digest -> subject Digest


def _digest(algorithm: str, hex_: str) -> Digest | None:
    try:
        return Digest.parse(f"{algorithm}:{hex_}")
    except Exception:
        return None


async def scan(storage: IStorageDriver) -> dict[str, _Repository]:
    """Every repository's revisions, tags, layer links, uploads and referrers, from one walk."""
    repos: dict[str, _Repository] = {}
    for path in await storage.walk(paths.REPOSITORIES):
        parts = path.split("/")
        marker = next((i for i, p in enumerate(parts) if p.startswith("_")), None)
        if marker is None or marker == 0:
            continue
        name, kind, rest = "/".join(parts[:marker]), parts[marker], parts[marker + 1 :]
        repo = repos.setdefault(name, _Repository(name))
        if kind == "_layers" and len(rest) == 3 and rest[2] == "link":
            if (d := _digest(rest[0], rest[1])) is not None:
                repo.layers.add(d)
        elif kind == "_manifests" and rest[:1] == ["revisions"] and len(rest) == 4:
            if (d := _digest(rest[1], rest[2])) is not None:
                repo.revisions.add(d)
        elif kind == "_manifests" and rest[:1] == ["tags"] and rest[2:] == ["current", "link"]:
            try:
                raw = await storage.read_bytes(f"{paths.REPOSITORIES}/{path}")
                repo.tags[rest[1]] = Digest.parse(raw.decode())
            except (PathNotFound, Exception):
                continue
        elif kind == "_uploads" and rest:
            repo.uploads.add(rest[0])
        elif kind == "_referrers" and len(rest) == 3:
            subject = _digest(rest[0], rest[1])
            referrer = _digest(*rest[2].split("-", 1)) if "-" in rest[2] else None
            if subject is not None and referrer is not None:
                repo.referrers[referrer] = subject
    return repos


async def _read_manifest(storage: IStorageDriver, repo: str, digest: Digest):
    """The parsed manifest, or None when its bytes are missing or unreadable."""
    name = Name(repo)
    try:
        media_type = (await storage.read_bytes(paths.manifest_link(name, digest))).decode()
        data = await storage.read_bytes(paths.blob_data(digest))
        return manifests.parse(data, media_type)
    except Exception:
        return None


async def _mtime(storage: IStorageDriver, path: str) -> float | None:
    info = await storage.stat(path)
    return None if info is None else info.mtime


async def _apply_retention(storage, repos, options: GCOptions, report: GCReport) -> None:
    for repo in repos.values():
        matching = [t for t in repo.tags if fnmatch.fnmatchcase(t, options.tag_pattern)]
        if len(matching) <= options.keep_tags:
            continue
        dated = []
        for tag in matching:
            mtime = await _mtime(storage, paths.tag_link(Name(repo.name), Tag(tag)))
            dated.append((mtime or 0.0, tag))
        dated.sort(reverse=True)
        for _, tag in dated[options.keep_tags :]:
            report.tags_removed.append((repo.name, tag))
            del repo.tags[tag]
            if not options.dry_run:
                await storage.delete(paths.tag_folder(Name(repo.name), tag))


async def _delete_untagged(storage, repos, options: GCOptions, report: GCReport, now: float) -> None:
    for repo in repos.values():
        kept = set(repo.tags.values()) & repo.revisions
        parsed = {}
        changed = True
        while changed:
            changed = False
            for digest in list(kept):
                if digest not in parsed:
                    parsed[digest] = await _read_manifest(storage, repo.name, digest)
                m = parsed[digest]
                for child in m.manifests if m is not None else ():
                    if child.digest in repo.revisions and child.digest not in kept:
                        kept.add(child.digest)
                        changed = True
            for referrer, subject in repo.referrers.items():
                if subject in kept and referrer in repo.revisions and referrer not in kept:
                    kept.add(referrer)
                    changed = True
        for digest in sorted(repo.revisions - kept, key=str):
            link = paths.manifest_link(Name(repo.name), digest)
            # A manifest pushed by digest moments ago may be about to be tagged.
            mtime = await _mtime(storage, link)
            if mtime is not None and now - mtime < options.grace:
                continue
            report.manifests_removed.append((repo.name, str(digest)))
            repo.revisions.discard(digest)
            if not options.dry_run:
                subject = repo.referrers.get(digest)
                if subject is not None:
                    await storage.delete(paths.referrer(Name(repo.name), subject, digest))
                await storage.delete(link.rsplit("/", 1)[0])


async def _mark(storage, repos) -> set[Digest]:
    marked: set[Digest] = set()
    for repo in repos.values():
        for digest in repo.revisions:
            marked.add(digest)
            m = await _read_manifest(storage, repo.name, digest)
            if m is None:
                continue
            marked.update(b.digest for b in m.blobs)
            marked.update(c.digest for c in m.manifests)
    return marked


async def _expire_uploads(storage, repos, options: GCOptions, report: GCReport, now: float) -> None:
    for repo in repos.values():
        name = Name(repo.name)
        for upload_id in sorted(repo.uploads):
            started = await storage.stat(paths.upload_started(name, upload_id))
            data = await storage.stat(paths.upload_data(name, upload_id))
            last = max([i.mtime for i in (started, data) if i is not None], default=0.0)
            if now - last < options.upload_expiry:
                continue
            report.uploads_removed.append((repo.name, upload_id, data.size if data else 0))
            if not options.dry_run:
                await storage.delete(paths.upload(name, upload_id))


async def _sweep(storage, repos, marked: set[Digest], options: GCOptions, report: GCReport, now: float) -> None:
    linked_from = defaultdict(list)
    for repo in repos.values():
        for digest in repo.layers:
            linked_from[digest].append(repo.name)
    for path in await storage.walk(paths.BLOBS):
        parts = path.split("/")
        if len(parts) != 4 or parts[3] != "data":
            continue
        digest = _digest(parts[0], parts[2])
        if digest is None:
            continue
        if digest in marked:
            report.blobs_kept += 1
            continue
        info = await storage.stat(paths.blob_data(digest))
        if info is None:
            continue
        fresh = now - info.mtime < options.grace
        for repo in linked_from.get(digest, ()):
            mtime = await _mtime(storage, paths.layer_link(Name(repo), digest))
            fresh = fresh or (mtime is not None and now - mtime < options.grace)
        if fresh:
            report.blobs_kept += 1
            continue
        report.blobs_removed.append((str(digest), info.size))
        if not options.dry_run:
            for repo in linked_from.get(digest, ()):
                await storage.delete(paths.layer_link(Name(repo), digest).rsplit("/", 1)[0])
            await storage.delete(paths.blob_data(digest).rsplit("/", 1)[0])


async def collect(storage: IStorageDriver, options: GCOptions | None = None, now: float | None = None) -> GCReport:
    """Run one garbage collection over ``storage``."""
    options = GCOptions() if options is None else options
    now = time.time() if now is None else now
    report = GCReport(dry_run=options.dry_run)
    repos = await scan(storage)
    if options.keep_tags is not None:
        await _apply_retention(storage, repos, options, report)
    if options.delete_untagged or options.keep_tags is not None:
        await _delete_untagged(storage, repos, options, report, now)
    await _expire_uploads(storage, repos, options, report, now)
    marked = await _mark(storage, repos)
    await _sweep(storage, repos, marked, options, report, now)
    log.info(
        "garbage collection{dry}: {blobs} blobs ({freed} bytes), {manifests} manifests, {tags} tags, "
        "{uploads} uploads removed; {kept} blobs kept",
        dry=" (dry run)" if options.dry_run else "",
        blobs=len(report.blobs_removed),
        freed=report.bytes_freed,
        manifests=len(report.manifests_removed),
        tags=len(report.tags_removed),
        uploads=len(report.uploads_removed),
        kept=report.blobs_kept,
    )
    return report


async def usage(storage: IStorageDriver) -> list[dict]:
    """Bytes each repository references: in all, unique to it, and shared with others."""
    repos = await scan(storage)
    holders: dict[Digest, set] = defaultdict(set)
    for repo in repos.values():
        digests = set(repo.layers) | set(repo.revisions)
        for digest in repo.revisions:
            m = await _read_manifest(storage, repo.name, digest)
            if m is not None:
                digests.update(b.digest for b in m.blobs if not b.is_foreign)
        for digest in digests:
            holders[digest].add(repo.name)
    sizes = {}
    for digest in holders:
        info = await storage.stat(paths.blob_data(digest))
        sizes[digest] = info.size if info else 0
    rows = []
    for repo in sorted(repos):
        mine = [d for d, h in holders.items() if repo in h]
        unique = sum(sizes[d] for d in mine if len(holders[d]) == 1)
        shared = sum(sizes[d] for d in mine if len(holders[d]) > 1)
        rows.append(
            {"repository": repo, "total": unique + shared, "unique": unique, "shared": shared, "blobs": len(mine)}
        )
    return rows


def parse_duration(text) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``24h`` or ``7d``."""
    if isinstance(text, int | float):
        return float(text)
    text = str(text).strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": DAY}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 24h, 7d)") from None
