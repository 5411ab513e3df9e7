"""
The catalog's entries: on a storage that lists files in order from any point
(`IWalkAfter`: S3), one empty file per repository in one folder
(`paths.catalog_entry`), so that a catalog page is one listing of its size
(`listing.indexed_repository_page`) instead of a walk through every
repository's folders (two requests per repository listed).

- A repository's entry is written before its first link (a blob's or a
  manifest's) that this process writes: once per repository and process
  every `REWRITE_AFTER` seconds (the names written are remembered with
  when, 100,000 at most; another replica may have dropped the entry
  since, see below).  When that link is
  a blob's sent whole in the request that finishes an upload, the entry is
  copied from the session's data, empty until then (`add_copying`): one
  request that also says the session is there and holds no byte, which
  the request would otherwise look up apart.
- A delete through the API that may leave a repository without a manifest
  or a blob (a manifest's or a blob's), and garbage collection for each
  repository it removed one from, look whether anything is left under its
  ``_manifests`` and ``_layers``; if nothing is, the entry goes (and comes
  back at once if a push wrote a link meanwhile).  A replica that wrote the
  entry less than `REWRITE_AFTER` seconds before may push into the
  repository again without writing it, so whoever dropped it looks again
  `RECHECK_AFTER` seconds later, and writes it back if the repository holds
  something by then: a repository emptied through one replica and pushed
  into through another is listed again within that time.
- ``catalog/complete`` says that every repository has its entry.  A process
  starting on a store with no repository writes it (`prepare`).  On a store
  written before the entries existed, the catalog is walked from the
  repositories' folders as before, and the first catalog request starts
  `rebuild` in the background: the walk, every repository's entry, then
  ``catalog/complete``; from then on every process reads the entries.

On a file system the catalog is always walked (its folders are read whole
and kept, see `oci_registry.listing`), and nothing here is written.
"""

from __future__ import annotations

import collections
import time

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.task import deferLater
from twisted.logger import Logger

from . import listing, paths
from .reference import Name
from .storage.interfaces import IBatchDelete, IEmptyCopy, IWalkAfter, PathNotFound, stat_file

log = Logger(namespace="oci_registry.catalog")

REMEMBERED = 100_000  # repository names a process remembers having written the entry of
REWRITE_AFTER = 10.0  # seconds a process trusts an entry it wrote to be there still
RECHECK_AFTER = 3 * REWRITE_AFTER  # seconds after an entry was dropped that the repository is looked at again
RECHECKS = 100_000  # rechecks a process keeps waiting at most (past that, a drop is not looked at again)
REBUILD_PAGE = 1000  # repositories walked, then given their entries, at a time
AT_ONCE = 16  # entries written at once by a rebuild


def kept(storage) -> bool:
    """Whether the catalog's entries are kept on ``storage`` (S3: `IWalkAfter`)."""
    return IWalkAfter.providedBy(storage)


async def prepare(storage) -> None:
    """
    At start-up: a store without any repository yet gets ``catalog/complete``
    (its entries are complete: there are none), so that it is never walked.
    """
    if not kept(storage) or (await stat_file(storage, paths.catalog_complete())) is not None:
        return
    if not await storage.holds_files(paths.REPOSITORIES):
        await storage.write_bytes(paths.catalog_complete(), b"")


class Catalog:
    """The catalog of one registry process: its pages, and the entries its pushes and deletes keep."""

    def __init__(self, storage, yield_now=None, reactor=None, clock=time.monotonic):
        self.storage = storage
        self.kept = kept(storage)
        self._yield_now = yield_now
        self._reactor = reactor
        self._clock = clock
        self._written: collections.OrderedDict[str, float] = collections.OrderedDict()  # name: when written
        self._rechecks: dict = {}  # name: the DelayedCall that looks at it again
        self._complete = False
        self._rebuilding: Deferred | None = None

    async def page(self, last: str | None, limit: int | None) -> listing.Page:
        """Up to ``limit`` repositories after ``last`` (all, with None): from the entries once they are complete."""
        if self.kept and await self.complete():
            return await listing.indexed_repository_page(self.storage, last, limit, self._yield_now)
        if self.kept and self._rebuilding is None:
            self._rebuilding = Deferred.fromCoroutine(self.rebuild())
            self._rebuilding.addCallbacks(self._rebuilt, self._not_rebuilt)
        return await listing.repository_page(self.storage, last, limit, self._yield_now)

    def _rebuilt(self, _) -> None:
        self._rebuilding = None

    def _not_rebuilt(self, failure) -> None:
        self._rebuilding = None
        log.warn(
            "the catalog's entries were not rebuilt: {error}; the next catalog request tries again",
            error=failure.getErrorMessage(),
        )

    async def complete(self) -> bool:
        """Whether every repository has its entry (looked up until it is: one request)."""
        if not self._complete:
            self._complete = (await stat_file(self.storage, paths.catalog_complete())) is not None
        return self._complete

    async def add(self, name: Name) -> None:
        """Before ``name``'s first link from this process: its entry."""
        if not self.kept or self._fresh(name):
            return
        await self.storage.write_bytes(paths.catalog_entry(name), b"", durable=False)
        self._remember(name)

    async def add_copying(self, name: Name, empty: str) -> bool:
        """
        `add`, where ``empty`` should be an empty file (an upload session's
        data before its first byte) and the storage can copy it in one
        request that looks at it too (`IEmptyCopy`): True once the entry is
        copied from it, which says it is there and empty.  False when the
        entry is not this process's to write now, or ``empty`` is missing or
        holds bytes (nothing written).
        """
        if not self.kept or self._fresh(name) or not IEmptyCopy.providedBy(self.storage):
            return False
        if not await self.storage.copy_empty(empty, paths.catalog_entry(name)):
            return False
        self._remember(name)
        return True

    def forget(self, name: Name) -> None:
        """The entry is written again before ``name``'s next link from this process (`add`)."""
        self._written.pop(str(name), None)

    def _fresh(self, name: Name) -> bool:
        written = self._written.get(str(name))
        return written is not None and self._clock() - written < REWRITE_AFTER

    def _remember(self, name: Name) -> None:
        self._written.pop(str(name), None)
        self._written[str(name)] = self._clock()
        while len(self._written) > REMEMBERED:
            self._written.popitem(last=False)

    async def removed_from(self, name: Name) -> None:
        """After a manifest or a blob of ``name`` was deleted: its entry goes if nothing is left in it."""
        if not self.kept or await listing.holds_content(self.storage, name):
            return
        self._written.pop(str(name), None)
        if await _drop(self.storage, name):
            self._recheck_later(name)

    def _recheck_later(self, name: Name) -> None:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        pending = self._rechecks.get(str(name))
        if pending is not None:
            pending.reset(RECHECK_AFTER)
        elif len(self._rechecks) < RECHECKS:
            self._rechecks[str(name)] = self._reactor.callLater(RECHECK_AFTER, self._recheck, name)

    def _recheck(self, name: Name) -> None:
        del self._rechecks[str(name)]
        d = Deferred.fromCoroutine(relist_if_held(self.storage, name))
        d.addErrback(
            lambda f: log.warn(
                "catalog: cannot look whether {repository} was pushed into after its entry went: {error}",
                repository=str(name),
                error=f.getErrorMessage(),
            )
        )

    async def rebuild(self) -> None:
        """Every repository's entry, from a walk of the repositories' folders; then ``catalog/complete``."""
        log.info("writing the catalog's entries of every repository (a store from before they were kept)")
        limiter = DeferredSemaphore(AT_ONCE)
        last = None
        count = 0
        while True:
            page = await listing.repository_page(self.storage, last, REBUILD_PAGE, self._yield_now)
            await listing._all(
                [limiter.run(self.storage.write_bytes, paths.catalog_entry(name), b"", False) for name in page.entries]
            )
            count += len(page.entries)
            if page.next is None:
                break
            last = page.next
        await self.storage.write_bytes(paths.catalog_complete(), b"")
        self._complete = True
        log.info("the catalog's entries are complete: {count} repositories", count=count)


async def drop_if_empty(storage, name: Name) -> bool:
    """
    ``name``'s entry goes if the repository holds no manifest nor blob any
    more (garbage collection asks, for the repositories it removed from):
    whether it went (then `relist_if_held` is due `RECHECK_AFTER` later).
    """
    if kept(storage) and not await listing.holds_content(storage, name):
        return await _drop(storage, name)
    return False


async def relist_if_held(storage, name: Name) -> bool:
    """``name``'s entry again if the repository holds a manifest or a blob now (a push since it was dropped)."""
    if await listing.holds_content(storage, name):
        await storage.write_bytes(paths.catalog_entry(name), b"", durable=False)
        return True
    return False


async def wait_and_relist(storage, names: list[Name], reactor=None, pace=None) -> None:
    """`relist_if_held` for each of ``names``, dropped just before, once `RECHECK_AFTER` has passed."""
    if not names:
        return
    if reactor is None:
        from twisted.internet import reactor
    log.info(
        "catalog: looking again in {seconds:g} s whether the {count} repositories emptied were pushed into meanwhile",
        seconds=RECHECK_AFTER,
        count=len(names),
    )
    await deferLater(reactor, RECHECK_AFTER, lambda: None)
    for name in names:
        if pace is not None:
            await pace()
        await relist_if_held(storage, name)


async def _drop(storage, name: Name) -> bool:
    """Whether the entry went (False: a push wrote a link meanwhile, and it was written again)."""
    path = paths.catalog_entry(name)
    try:
        if IBatchDelete.providedBy(storage):
            await storage.delete_files([path])  # by name: one request on S3, where a delete lists first
        else:
            await storage.delete(path)
    except PathNotFound:
        pass
    return not await relist_if_held(storage, name)  # a push wrote a link meanwhile: it stays listed
