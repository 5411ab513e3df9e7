"""
The outbox: each endpoint's undelivered events, in the registry's storage
(through the storage driver, so on the filesystem and on S3 alike), and the
lease that says which process delivers them.

Events are written in batches, one file per endpoint per write, named so
that a listing sorts them in the order they were recorded and says how many
events each holds without reading it::

    notifications/endpoints/<endpoint>/pending/<ns since the epoch, 20 digits>-<writer>-<seq>-<count>

A batch is deleted once every event in it was answered 2xx (or given up
on: then its events are written under ``dead/`` first, where ``ociregistry
events resend`` finds them).

`Lease`: one process at a time delivers an endpoint's events, so that an
event is sent once in the normal case although every process records
events.  A lease is a file per generation under ``lease/``; the holder
renews it well before it lapses, and another process takes the next
generation only once it has lapsed, with the storage's exclusive create (a
`move` with ``replace=False``).  Where that is not atomic (S3), the taker
reads the lease back after a pause and gives up when another's write won.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable, Sequence

import attr
from twisted.internet.task import deferLater
from twisted.logger import Logger

from .. import paths
from ..storage.interfaces import DestinationExists, IBatchDelete, IExclusiveCreate, PathNotFound
from .notice import Notice, decode_batch, encode_batch

log = Logger(namespace="oci_registry.notifications")

KEEP = "keep"  # not a batch: see Outbox.prepare
_BATCH_RE = re.compile(r"(\d{20})-([A-Za-z0-9]{1,32})-(\d{1,12})-(\d{1,9})")


@attr.s(auto_attribs=True, frozen=True, order=True)
class BatchName:
    """A batch file's name: when it was written (ns), by whom, its sequence number there, how many events."""

    stamp: int
    writer: str
    seq: int
    count: int

    def __str__(self) -> str:
        return f"{self.stamp:020d}-{self.writer}-{self.seq:08d}-{self.count}"

    @property
    def written_at(self) -> float:
        return self.stamp / 1e9

    @classmethod
    def parse(cls, text: str) -> BatchName | None:
        """The name of a batch, or None for any other file."""
        match = _BATCH_RE.fullmatch(text)
        if match is None:
            return None
        stamp, writer, seq, count = match.groups()
        return cls(int(stamp), writer, int(seq), int(count))


class Outbox:
    """One endpoint's batches in ``storage``; ``writer`` names this process in the batches it writes."""

    def __init__(self, storage, endpoint: str, writer: str, clock: Callable[[], float] = time.time):
        self.storage = storage
        self.endpoint = endpoint
        self.writer = writer
        self._clock = clock
        self._seq = 0
        self.pending_folder = paths.notification_pending(endpoint)
        self.dead_folder = paths.notification_dead(endpoint)

    async def prepare(self) -> None:
        """
        Put a file that stays in the pending folder: on the filesystem, a
        folder emptied by the last delivery would be removed and made again
        (with an fsync of its parent) for the next batch.
        """
        await self.storage.write_bytes(f"{self.pending_folder}/{KEEP}", b"")

    def _name(self, count: int) -> BatchName:
        self._seq += 1
        return BatchName(int(self._clock() * 1e9), self.writer, self._seq, count)

    async def append(self, notices: Sequence[Notice]) -> BatchName:
        """Record ``notices`` durably, as one batch; fires once they are in storage."""
        name = self._name(len(notices))
        await self.storage.write_bytes(f"{self.pending_folder}/{name}", encode_batch(notices))
        return name

    async def pending(self) -> list[BatchName]:
        """The batches waiting, oldest first."""
        return _names(await self.storage.list(self.pending_folder))

    async def dead(self) -> list[BatchName]:
        """The dead letters, oldest first."""
        return _names(await self.storage.list(self.dead_folder))

    async def read(self, name: BatchName, dead: bool = False) -> list[Notice] | None:
        """A batch's notices; None when it is gone (delivered by another process meanwhile)."""
        folder = self.dead_folder if dead else self.pending_folder
        try:
            data = await self.storage.read_bytes(f"{folder}/{name}")
        except PathNotFound:
            return None
        return decode_batch(data)

    async def remove(self, names: Sequence[BatchName]) -> None:
        """Delete delivered batches, in one call where the storage deletes many files at once (`IBatchDelete`)."""
        paths = [f"{self.pending_folder}/{name}" for name in names]
        if IBatchDelete.providedBy(self.storage):
            await self.storage.delete_files(paths)  # one request on S3, where a delete also lists
            return
        for path in paths:
            await self.storage.delete(path)

    async def quarantine(self, name: BatchName) -> None:
        """Move a batch that cannot be read (damaged) out of the way, among the dead letters."""
        try:
            await self.storage.move(f"{self.pending_folder}/{name}", f"{self.dead_folder}/{name}")
        except PathNotFound:
            pass  # gone meanwhile: nothing to keep

    async def bury(self, notices: Sequence[Notice]) -> BatchName:
        """Write ``notices`` among the dead letters (the caller then forgets them)."""
        name = self._name(len(notices))
        await self.storage.write_bytes(f"{self.dead_folder}/{name}", encode_batch(notices))
        return name

    async def resend(self, name: BatchName) -> BatchName | None:
        """
        Put a dead letter back in the queue, as a batch written now (its
        events' age starts again); None when it is gone.
        """
        fresh = self._name(name.count)
        try:
            await self.storage.move(f"{self.dead_folder}/{name}", f"{self.pending_folder}/{fresh}")
        except PathNotFound:
            return None
        return fresh


def _names(entries: Sequence[str]) -> list[BatchName]:
    return sorted(n for n in (BatchName.parse(e) for e in entries) if n is not None)


async def endpoints_in(storage) -> list[str]:
    """The endpoint names that have an outbox folder in ``storage`` (configured or not)."""
    return list(await storage.list(paths.notification_endpoints()))


@attr.s(auto_attribs=True, frozen=True)
class LeaseInfo:
    owner: str
    until: float  # seconds since the epoch
    host: str = ""
    pid: int = 0

    def to_bytes(self) -> bytes:
        return json.dumps(attr.asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseInfo:
        try:
            d = json.loads(data)
            return cls(str(d["owner"]), float(d["until"]), str(d.get("host", "")), int(d.get("pid", 0)))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return cls("", 0.0)  # a damaged lease holds nothing


class Lease:
    """
    This process's claim to deliver one endpoint's events.  ``hold()``
    takes or renews it; call it at least every third of ``duration``.
    ``settle``: the pause before a taken lease is read back, where the
    storage's exclusive create is not atomic.
    """

    def __init__(
        self,
        storage,
        endpoint: str,
        owner: str,
        duration: float,
        reactor,
        clock: Callable[[], float] = time.time,
        settle: float | None = None,
    ):
        self.storage = storage
        self.endpoint = endpoint
        self.owner = owner
        self.duration = duration
        self._reactor = reactor
        self._clock = clock
        self._settle = settle if settle is not None else (0.5 if getattr(storage, "move_is_copy", True) else 0.0)
        self._folder = paths.notification_lease(endpoint)
        self._claims = paths.notification_claims(endpoint)
        self.generation: int | None = None  # the one held, when held

    def _path(self, generation: int) -> str:
        return f"{self._folder}/{generation:012d}"

    def _info(self, until: float | None = None) -> bytes:
        until = self._clock() + self.duration if until is None else until
        return LeaseInfo(self.owner, until, socket.gethostname(), os.getpid()).to_bytes()

    async def current(self) -> tuple[int, LeaseInfo] | None:
        """The newest generation and what it says, or None when nobody ever held the lease."""
        generations = sorted(int(n) for n in await self.storage.list(self._folder) if n.isdigit())
        while generations:
            top = generations.pop()
            try:
                return top, LeaseInfo.from_bytes(await self.storage.read_bytes(self._path(top)))
            except PathNotFound:
                continue  # an older one, removed by the holder of a newer one meanwhile
        return None

    async def hold(self) -> bool:
        """Whether this process holds the lease now (taking or renewing it)."""
        if self.generation is not None:
            if await self.storage.stat(self._path(self.generation + 1)) is None:
                await self.storage.write_bytes(self._path(self.generation), self._info(), durable=False)
                return True
            log.info("notifications to {endpoint}: another process took over their delivery", endpoint=self.endpoint)
            self.generation = None
        found = await self.current()
        now = self._clock()
        if found is not None:
            top, info = found
            if info.owner == self.owner:  # ours, from before a renewal was missed
                self.generation = top
                return await self.hold()
            if info.until > now:
                return False
            generation = top + 1
        else:
            generation = 1
        return await self._take(generation, [] if found is None else [found[0]])

    async def _take(self, generation: int, older: list[int]) -> bool:
        if not await create_exclusive(
            self.storage, self._path(generation), self._info(), f"{self._claims}/{self.owner}-{generation}"
        ):
            return False
        if self._settle:
            await deferLater(self._reactor, self._settle, lambda: None)
        try:
            info = LeaseInfo.from_bytes(await self.storage.read_bytes(self._path(generation)))
        except PathNotFound:
            return False
        if info.owner != self.owner or await self.storage.stat(self._path(generation + 1)) is not None:
            return False
        self.generation = generation
        for old in older:
            await self.storage.delete(self._path(old))
        return True

    async def release(self) -> None:
        """Let another process take over at once (the lease is left, lapsed, so generations keep counting up)."""
        if self.generation is None:
            return
        generation, self.generation = self.generation, None
        if await self.storage.stat(self._path(generation + 1)) is None:
            await self.storage.write_bytes(self._path(generation), self._info(until=0.0), durable=False)


async def create_exclusive(storage, path: str, data: bytes, scratch: str) -> bool:
    """
    Create ``path`` holding ``data`` unless something is there: whether this
    call created it.  With the storage's exclusive create (`IExclusiveCreate`)
    in one step; else written at ``scratch`` and moved without replacing.
    Where the storage does not check the condition, another process's file
    may replace ours: callers read it back.
    """
    if IExclusiveCreate.providedBy(storage):
        try:
            await storage.create_bytes(path, data)
        except DestinationExists:
            return False
        return True
    await storage.write_bytes(scratch, data, durable=False)
    try:
        await storage.move(scratch, path, replace=False)
    except DestinationExists:
        await storage.delete(scratch)
        return False
    return True
