"""
Pages of the catalog, of a repository's tags and of a subject's referrers,
read from storage in sorted order so that a page costs what it holds, not
what the store holds.

Where the storage lists files in order from any point in one request
(`IWalkAfter`: S3), a tag page is one or two listings of the tag links
(`tag_page`), and a catalog page one listing of the catalog's entries
(`indexed_repository_page`, kept by `oci_registry.catalog`).  Elsewhere (a
file system), and on S3 until the catalog's entries are complete, everything
is built on two storage calls: ``list_page`` (a folder's child
names after a given one, sorted, a bounded number) and ``holds_files``.
Repository names are nested folders (``a/b/c``), and the catalog is sorted
by the whole name, in which ``a-b`` < ``a/b`` < ``a0`` (``/`` sorts between
``-``/``.`` and the digits): the walk keeps the folders it has open in a heap
keyed by the smallest name each can still produce, takes names from the
smallest, descends only into folders that can hold names after ``last``, and
stops once it has one name more than the page (which says whether a next
page exists).  Where the storage makes the walk wait (S3), the calls for the
next few names are started together, `CONCURRENCY` at a time, which turns a
page's round trips into a few rounds; where it answers at once (a file
system), only what the walk reaches is read.

A folder may be listed that holds nothing any more (a file system keeps an
emptied folder; some S3 servers keep reporting emptied prefixes), and a push
cut short may leave a tag folder without its link: names are listed only
once what makes them exist is found (a repository: a file under
``_manifests`` or ``_layers``; a tag: its link).
"""

from __future__ import annotations

import heapq
import json
import re
from collections import deque
from typing import Any

import attr
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore

from . import paths
from .reference import _COMPONENT, NAME_RE, TAG_RE, Digest, Name, Tag
from .storage.interfaces import IFolderPeek, IWalkAfter, stat_file

CONCURRENCY = 16  # storage calls in flight at once for one listing
BATCH = 1000  # names asked of a folder at a time, at most
TURN = 500  # folders or entries handled before other connections get a turn
REFERRERS_PAGE = 1000  # referrers read for one answer, at most
_COMPONENT_RE = re.compile(_COMPONENT)
# Either makes a repository; blobs first: on a file system a blob's link is
# one folder less deep than a manifest's.
_REPOSITORY_MARKERS = ("_layers", "_manifests")
PEEK = 8  # names first listed in each folder of the walk


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Page:
    """
    A page of a sorted listing: its ``entries`` and the ``last`` value that
    asks for the following page, or None when nothing follows.  With a
    filter (referrers by artifact type) ``next`` may name an entry that was
    read but left out.
    """

    entries: list
    next: str | None = None


class _Limiter:
    """At most `CONCURRENCY` storage calls in flight; a call already answered costs nothing."""

    def __init__(self, concurrency: int = CONCURRENCY):
        self._semaphore = DeferredSemaphore(concurrency)

    def run(self, call, *args) -> Deferred:
        return self._semaphore.run(call, *args)


def _batch(wanted: int | None) -> int:
    return BATCH if wanted is None else max(1, min(BATCH, wanted))


async def _all(deferreds: list) -> list:
    """The results of Deferreds already started, in order; the first failure raised once all have fired."""
    outcomes = await DeferredList(deferreds, consumeErrors=True)
    for succeeded, result in outcomes:
        if not succeeded:
            result.raiseException()
    return [result for _, result in outcomes]


def _discard(d: Deferred) -> None:
    """A prefetch the page no longer needs: its result (or failure) is dropped."""
    d.addErrback(lambda _: None)


# --------------------------------------------------------------------- tags


async def tag_page(storage, name: Name, last: str | None, limit: int | None, yield_now=None) -> Page:
    """Up to ``limit`` tags of ``name`` after ``last``, in byte order; ``limit`` None: all of them."""
    if limit is not None and limit <= 0:
        return Page([])
    wanted = None if limit is None else limit + 1  # one more says whether a next page exists
    if IWalkAfter.providedBy(storage):
        return page_of(await _linked_tags(storage, name, last, wanted, yield_now), limit)
    limiter = _Limiter()
    found: list[str] = []
    folder = paths.tags(name)
    after = last
    turns = 0
    while wanted is None or len(found) < wanted:
        batch = _batch(None if wanted is None else wanted - len(found))
        names = await storage.list_page(folder, after, batch)
        tags = [t for t in names if TAG_RE.fullmatch(t)]
        # A push cut short may leave a tag's folder without its link.
        linked = await _all([limiter.run(storage.stat, paths.tag_link(name, Tag(t))) for t in tags])
        found += [t for t, info in zip(tags, linked, strict=True) if info is not None]
        if len(names) < batch:
            break
        after = names[-1]
        turns += len(names)
        if yield_now is not None and turns >= TURN:
            turns = 0
            await yield_now()
    return page_of(found, limit)


_TAG_LINK = "current/link"


def _inverted_prefixes(name: str) -> list[str]:
    """The prefixes of ``name`` that sort before it but whose folders come after it: cut before a "-" or "."."""
    return [name[:i] for i in range(1, len(name)) if name[i] < "/"]


async def _linked_tags(storage, name: Name, last: str | None, wanted: int | None, yield_now) -> list[str]:
    """
    The first ``wanted`` tags after ``last`` (all, with None), from listings
    of the files below the tags folder (`IWalkAfter`): a tag is there while
    its ``current/link`` is, so the listing itself says which tags exist, and
    a page costs one request of about its size (two for a pull-through
    cache's tags, which have a ``checked`` file too).
    """
    return await _marked_names(storage, paths.tags(name), _TAG_LINK, TAG_RE.fullmatch, last, wanted, yield_now)


async def _marked_names(storage, folder: str, marker: str, valid, last: str | None, wanted: int | None, yield_now):
    """
    The first ``wanted`` names after ``last`` (all, with None), in byte
    order, of the ``<name>/<marker>`` files below ``folder``, from listings
    in order (`IWalkAfter`); ``valid`` says which names count.

    Every name after ``last`` has its files after ``last``.  S3 orders them
    by key, in which ``v1-rc/...`` comes before ``v1/...`` while the names
    sort ``v1`` < ``v1-rc``: a name not listed yet can still sort before one
    listed only if it is a prefix of it cut before a ``-`` or ``.``.  Such a
    name whose file the listing has not passed is looked up on its own (one
    request, rarely needed), so the page is exact in either order.
    """
    suffix = "/" + marker
    found: set[str] = set()  # names after last, listed or looked up
    looked_up: set[str] = set()
    position = ""  # the greatest path listed so far
    start = last
    complete = False
    files = names = turns = 0  # listed so far: how many files a name has, to size the next listing

    def after(name: str) -> bool:
        return last is None or name > last

    for _ in range(100_000):
        while not complete and (wanted is None or len(found) < wanted):
            if wanted is None:
                batch = BATCH
            else:
                per_name = files / names if names else 1.0
                batch = min(BATCH, int((wanted - len(found)) * per_name) + 2)
            listed = await storage.walk_after(folder, start, batch)
            for path in listed:
                if path.endswith(suffix):
                    name = path[: -len(suffix)]
                    if valid(name):
                        names += 1
                        if after(name):
                            found.add(name)
            files += len(listed)
            if listed:
                position = max(position, max(listed))
                start = listed[-1]
            complete = len(listed) < batch
            turns += len(listed)
            if yield_now is not None and turns >= TURN:
                turns = 0
                await yield_now()
        page = sorted(found)[:wanted]
        if complete:
            return page
        unresolved = sorted(
            {
                prefix
                for name in page
                for prefix in _inverted_prefixes(name)
                if after(prefix)
                and valid(prefix)
                and prefix not in found
                and prefix not in looked_up
                and prefix + suffix > position
            }
        )
        if not unresolved:
            return page
        looked_up.update(unresolved)
        limiter = _Limiter()
        there = await _all([limiter.run(stat_file, storage, f"{folder}/{p}{suffix}") for p in unresolved])
        found.update(p for p, info in zip(unresolved, there, strict=True) if info is not None)
    raise RuntimeError(f"listing {folder} did not end")


def page_of(found: list[str], limit: int | None) -> Page:
    """The first ``limit`` of sorted names (all, with None), continued after the last of them if more follow."""
    if limit is not None and len(found) > limit:
        return Page(found[:limit], found[limit - 1])
    return Page(found)


# ------------------------------------------------------------------ catalog


@attr.s(auto_attribs=True, slots=True)
class _Folder:
    """A folder of repository names being listed: ``prefix`` is the names' common start (``""`` or ``a/b/``)."""

    prefix: str
    path: str
    children: deque = attr.Factory(deque)  # listed valid child names, not examined yet
    after: str | None = None  # the last child name listed (valid or not): the next listing starts after it
    done: bool = False  # nothing is left to list beyond ``children``

    def floor(self) -> str:
        """No name this folder can still produce sorts before this."""
        if self.children:
            return self.prefix + self.children[0]
        if self.after is None:
            return self.prefix
        return self.prefix + self.after + "\x00"


@attr.s(auto_attribs=True, slots=True)
class _Child:
    """The folder of the name ``name``: a repository if it holds a manifest or a blob, and a folder of names."""

    name: str
    path: str
    pruned: bool  # ``last`` is below it: the walk goes into it past ``last``
    siblings: deque  # the children listed with it, in order, to examine ahead where storage makes us wait
    examined: Deferred | None = None  # fires with (whether to list it, the folder of the names below it)


class _CatalogWalk:
    def __init__(self, storage, last: str | None, wanted: int | None, yield_now):
        self.storage = storage
        self.last = last
        self.wanted = wanted
        self.yield_now = yield_now
        self.limiter = _Limiter()
        self.heap: list = []
        self.order = 0  # breaks ties in the heap
        self.found: list[str] = []
        self.pending: set[Deferred] = set()
        self.peeks = IFolderPeek.providedBy(storage)

    def batch(self) -> int:
        return _batch(None if self.wanted is None else self.wanted - len(self.found))

    def push(self, key: str, item) -> None:
        self.order += 1
        heapq.heappush(self.heap, (key, self.order, item))

    async def run(self) -> list[str]:
        self.open(paths.REPOSITORIES, "")
        turns = 0
        try:
            while self.heap and (self.wanted is None or len(self.found) < self.wanted):
                _, _, item = heapq.heappop(self.heap)
                if isinstance(item, _Folder):
                    await self.take_from(item)
                else:
                    await self.take_child(item)
                turns += 1
                if self.yield_now is not None and turns >= TURN:
                    turns = 0
                    await self.yield_now()
        finally:
            for d in self.pending:
                _discard(d)
        return self.found

    def open(self, path: str, prefix: str) -> None:
        """Start listing the folder of names that begin with ``prefix``, skipping what cannot follow ``last``."""
        folder = _Folder(prefix, path)
        if self.last is not None and self.last.startswith(prefix):
            # What can follow last here: children after its next component;
            # that component's own folder (past last, if last goes deeper);
            # and the folders of the prefixes of that component cut before a
            # "-" or ".", since "a/x" sorts after "a-b".
            component = self.last[len(prefix) :].split("/", 1)[0]
            deeper = self.last.startswith(prefix + component + "/")
            folder.after = component
            cuts = [component[:i] for i in range(1, len(component)) if component[i] < "/"]
            siblings: deque = deque()
            for name in cuts + [component]:
                if _COMPONENT_RE.fullmatch(name):
                    self.child(folder, name, siblings, pruned=deeper and name == component)
        self.push(folder.floor(), folder)

    def child(self, folder: _Folder, name: str, siblings: deque, pruned: bool = False) -> None:
        child = _Child(folder.prefix + name, f"{folder.path}/{name}", pruned, siblings)
        if pruned:
            child.examined = Deferred()
            child.examined.callback((False, None))  # not listed itself (it is not after last), nor read
        else:
            siblings.append(child)
        self.push(child.name, child)

    def start(self, child: _Child) -> Deferred:
        if child.examined is None:
            child.examined = Deferred.fromCoroutine(self.examine(child.path, child.name))
            self.pending.add(child.examined)
        return child.examined

    def examining(self, child: _Child) -> Deferred:
        """
        The child's examination, started now if need be.  Where the storage
        makes us wait (S3), the siblings that follow it are started too, so
        that their requests overlap; where it answers at once (a file
        system), only what the walk reaches is read.
        """
        examined = self.start(child)
        siblings = child.siblings
        while siblings and siblings[0].examined is not None:
            siblings.popleft()
        if not examined.called:
            for sibling in list(siblings)[: CONCURRENCY - 1]:
                self.start(sibling)
        return examined

    async def examine(self, path: str, full: str):
        # A first few names only: enough to see a repository's own folders
        # after any nested names starting with a digit; the rest is listed if
        # and when the walk gets to them.
        wanted = self.last is None or full > self.last
        if self.peeks:  # both in one call
            markers = _REPOSITORY_MARKERS if wanted else ()
            names, holding = await self.limiter.run(self.storage.peek_folder, path, PEEK, markers)
            return holding is not None, self.folder(full, path, names)
        names = await self.limiter.run(self.storage.list_page, path, None, PEEK)
        complete = len(names) < PEEK
        listed = False
        if wanted:
            for marker in _REPOSITORY_MARKERS:
                unseen = not complete and names[-1] < marker
                if (marker in names or unseen) and await self.limiter.run(self.storage.holds_files, f"{path}/{marker}"):
                    listed = True
                    break
        return listed, self.folder(full, path, names)

    @staticmethod
    def folder(full: str, path: str, names: list[str]) -> _Folder:
        """The folder of the names below ``full``, from the first `PEEK` names of its listing."""
        folder = _Folder(full + "/", path)
        folder.children.extend(n for n in names if _COMPONENT_RE.fullmatch(n))
        folder.after = names[-1] if names else None
        folder.done = len(names) < PEEK
        return folder

    async def take_from(self, folder: _Folder) -> None:
        batch = self.batch()
        if not folder.children:
            if folder.done:
                return
            names = await self.limiter.run(self.storage.list_page, folder.path, folder.after, batch)
            if names:
                folder.after = names[-1]
            folder.done = len(names) < batch
            folder.children.extend(n for n in names if _COMPONENT_RE.fullmatch(n))
        siblings: deque = deque()
        for _ in range(min(len(folder.children), batch)):
            self.child(folder, folder.children.popleft(), siblings)
        if folder.children or not folder.done:
            self.push(folder.floor(), folder)

    async def take_child(self, child: _Child) -> None:
        examined = self.examining(child)
        self.pending.discard(examined)
        listed, folder = await examined
        if listed:
            self.found.append(child.name)
        if child.pruned:
            self.open(f"{paths.REPOSITORIES}/{child.name}", child.name + "/")
        elif folder is not None and (folder.children or not folder.done):
            self.push(folder.floor(), folder)


async def holds_content(storage, name: Name) -> bool:
    """Whether ``name`` is a repository the catalog lists: a file is under its ``_manifests`` or ``_layers``."""
    for marker in _REPOSITORY_MARKERS:
        if await storage.holds_files(f"{paths.REPOSITORIES}/{name}/{marker}"):
            return True
    return False


async def repository_page(storage, last: str | None, limit: int | None, yield_now=None) -> Page:
    """
    Up to ``limit`` repository names after ``last``, in byte order; ``limit``
    None: all of them.  Walks the repositories' folders (what a store without
    the catalog's entries is listed by).
    """
    if limit is not None and limit <= 0:
        return Page([])
    found = await _CatalogWalk(storage, last, None if limit is None else limit + 1, yield_now).run()
    return page_of(found, limit)


_NAME_CHARACTERS = "-./0123456789_abcdefghijklmnopqrstuvwxyz"  # in byte order


def _entry_after(last: str) -> str:
    """
    A file name in `paths.catalog_entries` at or before the entry of every
    name after ``last``, which may be any text: ``last`` as far as it is made
    of the characters of names, encoded, then the encoded greatest character
    of names below the one that stops it (a name after ``last`` that shares
    that start has a greater character there).
    """
    for i, character in enumerate(last):
        if character not in _NAME_CHARACTERS:
            below = [c for c in _NAME_CHARACTERS if c < character]
            return paths.catalog_key(last[:i] + (below[-1] if below else ""))
    return paths.catalog_key(last)


async def indexed_repository_page(storage, last: str | None, limit: int | None, yield_now=None) -> Page:
    """
    `repository_page` from the catalog's entries (`paths.catalog_entry`), on
    a storage that lists in order from any point (`IWalkAfter`): one listing
    of ``limit`` + 1 files, whatever the store holds.
    """
    if limit is not None and limit <= 0:
        return Page([])
    wanted = None if limit is None else limit + 1
    found: list[str] = []
    start = None if last is None else _entry_after(last)
    turns = 0
    while wanted is None or len(found) < wanted:
        batch = _batch(None if wanted is None else wanted - len(found))
        entries = await storage.walk_after(paths.catalog_entries(), start, batch)
        for entry in entries:
            name = paths.catalog_name(entry)
            if NAME_RE.fullmatch(name) and (last is None or name > last):
                found.append(name)
        if len(entries) < batch:
            break
        start = entries[-1]
        turns += len(entries)
        if yield_now is not None and turns >= TURN:
            turns = 0
            await yield_now()
    return page_of(sorted(found), limit)


# ---------------------------------------------------------------- referrers


def referrer_entry(digest: str) -> str:
    """The name of a referrer's entry in its subject's folder (see `paths.referrer`), from its digest."""
    return digest.replace(":", "-", 1)


async def referrer_page(
    storage,
    name: Name,
    subject: Digest,
    artifact_type: str | None,
    last: str | None,
    limit: int,
    max_bytes: int,
) -> Page:
    """
    The referrers of ``subject`` after the one whose digest is ``last``:
    ``limit`` entries read at most, and their descriptors kept while they
    add up to ``max_bytes`` of JSON (at least one); ``next`` is the digest
    of the last entry read when more follow.
    """
    folder = paths.referrers(name, subject)
    limiter = _Limiter()
    entries = await storage.list_page(folder, referrer_entry(last) if last else None, limit + 1)
    more = len(entries) > limit
    entries = entries[:limit]

    async def read(entry: str):
        raw = await _read(storage, f"{folder}/{entry}")
        if raw is None:
            return None
        try:
            descriptor = json.loads(raw)
            digest = Digest.parse(descriptor["digest"])
        except (ValueError, KeyError, TypeError):
            return None
        # A referrer deleted by another path leaves no revision link behind.
        if (await storage.stat(paths.manifest_link(name, digest))) is None:
            return None
        return raw, descriptor

    read_entries = await _all([limiter.run(lambda e=e: Deferred.fromCoroutine(read(e))) for e in entries])
    found: list[dict[str, Any]] = []
    size = 0
    for i, result in enumerate(read_entries):
        if result is None:
            continue
        raw, descriptor = result
        if artifact_type is not None and descriptor.get("artifactType") != artifact_type:
            continue
        if found and size + len(raw) > max_bytes:
            # The rest on the next page.
            return Page(found, referrer_digest(entries[i - 1]))
        found.append(descriptor)
        size += len(raw) + 2
    return Page(found, referrer_digest(entries[-1]) if more and entries else None)


def referrer_digest(entry: str) -> str:
    """The digest of a referrer from the name of its entry (the reverse of `referrer_entry`)."""
    return entry.replace("-", ":", 1)


async def _read(storage, path: str) -> bytes | None:
    from .storage.interfaces import PathNotFound

    try:
        return await storage.read_bytes(path)
    except PathNotFound:
        return None
