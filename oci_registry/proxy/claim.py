"""
Claims on an upstream fetch, shared by every process on the storage: with
``--workers N`` or several replicas on one bucket, one blob is fetched from
its upstream once, not once per process.

A process about to fetch a blob creates its claim,
``fills/<upstream>/<alg>/<hex>/claim-0`` (`paths.fill_claim`), with an
exclusive create (`IExclusiveCreate`: a rename that refuses to replace on a
file system, a conditional put ``If-None-Match: *`` on S3).  The claim is a
lease: it holds the holder's random token and the time it expires, and the
holder rewrites it every third of the lease while it fetches (with the
blob's size and, where other processes can read it as it grows, the path
being written).  A process that finds a live claim waits: it polls, with
backoff, for the published blob, and serves it once it is there.  A claim
whose lease ran out (its holder died) is taken over by creating the next
generation, ``claim-1``, exclusively again, so that of many waiters exactly
one takes over.  The holder deletes its claims once the blob is published
(or the fetch failed: waiters then fail too, as waiters in the same process
do, and the next request starts afresh).

Leases compare wall-clock times written by different machines: their
clocks must agree to well within a lease.  A holder that is alive but
stalls longer than its lease may be taken over while it still fetches:
then the upstream is asked twice, and both copies verify and publish the
same bytes.  A storage without `IExclusiveCreate` gets no claims: each
process then fetches once.
"""

from __future__ import annotations

import json
import secrets
import time

import attr
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.task import deferLater
from twisted.logger import Logger

from .. import paths
from ..reference import Digest
from ..storage.interfaces import DestinationExists, IExclusiveCreate, PathNotFound

log = Logger()

DEFAULT_LEASE = 30.0  # seconds a claim holds without being renewed
MAX_GENERATIONS = 64  # takeovers of one fetch before giving up
WAIT_LIMIT = 3600.0  # seconds a process waits for another's fetch at most, however often it is renewed
POLL_FIRST, POLL_MAX = 0.05, 1.0  # seconds between looks at a fetch in another process: backoff bounds


class FillElsewhereFailed(Exception):
    """The process holding the claim gave it up without publishing the blob."""


@attr.s(auto_attribs=True, frozen=True, slots=True)
class ClaimRecord:
    """What a claim file holds."""

    owner: str  # the holder's random token
    expires: float  # seconds since the epoch
    remote: str  # the upstream repository the blob is fetched from
    size: int | None = None  # once the upstream announced it
    data: str | None = None  # a storage path other processes may read the bytes from as they arrive

    def encode(self) -> bytes:
        return json.dumps(attr.asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> ClaimRecord | None:
        try:
            value = json.loads(data)
            return cls(
                owner=str(value["owner"]),
                expires=float(value["expires"]),
                remote=str(value["remote"]),
                size=None if value.get("size") is None else int(value["size"]),
                data=None if value.get("data") is None else str(value["data"]),
            )
        except (ValueError, TypeError, KeyError):
            return None  # torn or foreign: treated as expired


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Held:
    """Another process's live claim."""

    path: str
    record: ClaimRecord


class Claim:
    """This process's claim: renewed until released."""

    def __init__(self, claims: FillClaims, url: str, digest: Digest, generation: int, record: ClaimRecord):
        self._claims = claims
        self._url = url
        self._digest = digest
        self.generation = generation
        self.path = paths.fill_claim(digest, url, generation)
        self.record = record
        self._released = False
        self._timer = None  # the next renewal's DelayedCall
        self._lock = DeferredLock()  # a renewal never rewrites the claim after release deleted it
        self._schedule()

    def _schedule(self) -> None:
        if not self._released:
            self._timer = self._claims.reactor.callLater(self._claims.lease / 3, self._renew_now)

    def _renew_now(self) -> None:
        self._timer = None
        Deferred.fromCoroutine(self._renew())

    async def _renew(self) -> None:
        if self._released:
            return
        try:
            await self.update()
        except Exception as e:  # noqa: BLE001 a failed renewal is retried at the next one; the fetch goes on
            log.warn("renewing the claim {path} failed: {error}", path=self.path, error=e)
        self._schedule()

    async def update(self, size: int | None = None, data: str | None = None) -> None:
        """Extend the lease (and say the size and the readable path, once known)."""
        await self._lock.acquire()
        try:
            await self._update(size, data)
        finally:
            self._lock.release()

    async def _update(self, size: int | None, data: str | None) -> None:
        if self._released:
            return
        changes: dict = {"expires": self._claims.clock() + self._claims.lease}
        if size is not None:
            changes["size"] = size
        if data is not None:
            changes["data"] = data
        self.record = attr.evolve(self.record, **changes)
        await self._claims.storage.write_bytes(self.path, self.record.encode(), durable=False)

    async def release(self) -> None:
        """Stop renewing and delete this claim and the stale generations before it."""
        if self._released:
            return
        self._released = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        await self._lock.acquire()  # a renewal under way ends first
        self._lock.release()
        for generation in range(self.generation, -1, -1):
            await self._claims.storage.delete(paths.fill_claim(self._digest, self._url, generation))


class FillClaims:
    """Makes and watches the claims of one storage; see the module docstring."""

    def __init__(self, storage, reactor=None, lease: float = DEFAULT_LEASE, clock=time.time):
        if reactor is None:
            from twisted.internet import reactor
        self.storage = storage
        self.reactor = reactor
        self.lease = lease
        self.clock = clock

    @staticmethod
    def supported(storage) -> bool:
        return IExclusiveCreate.providedBy(storage)

    async def _read(self, path: str) -> ClaimRecord | None:
        try:
            data = await self.storage.read_bytes(path)
        except PathNotFound:
            return None
        record = ClaimRecord.decode(data)
        return record if record is not None else ClaimRecord(owner="", expires=0.0, remote="")

    async def acquire(self, url: str, digest: Digest, remote: str) -> Claim | Held:
        """This process's new claim on fetching ``digest`` from ``url``, or the live claim of another."""
        token = secrets.token_hex(16)
        vanished = 0
        generation = 0
        while generation < MAX_GENERATIONS:
            path = paths.fill_claim(digest, url, generation)
            record = ClaimRecord(owner=token, expires=self.clock() + self.lease, remote=remote)
            try:
                await self.storage.create_bytes(path, record.encode())
            except DestinationExists:
                pass
            found = await self._read(path)
            if found is None:
                # Released between the two steps: its holder is done; look again from the start.
                vanished += 1
                if vanished > 3:
                    raise FillElsewhereFailed(f"the claim {path} keeps being released")
                generation = 0
                continue
            if found.owner == token:  # ours (read back: a storage that ignored the condition replaced it)
                return Claim(self, url, digest, generation, found)
            if found.expires > self.clock():
                return Held(path, found)
            generation += 1  # its holder is gone: the next generation takes over
        raise FillElsewhereFailed(f"{MAX_GENERATIONS} fetches of {digest} from {url} were given up")

    async def wait(self, held: Held, published, on_record, on_poll) -> bool:
        """
        Wait for the holder of ``held``: True once ``published()`` says the
        blob is there, False when the claim's lease ran out (take it over);
        `FillElsewhereFailed` when the holder gave it up without the blob.
        ``on_record(record)`` is told each look at the claim, ``on_poll()``
        each time round.
        """
        delay = POLL_FIRST
        deadline = self.clock() + WAIT_LIMIT
        while True:
            if await published():
                return True
            record = await self._read(held.path)
            if record is None:
                if await published():
                    return True
                raise FillElsewhereFailed("the process fetching the blob failed")
            on_record(record)
            if record.expires <= self.clock():
                log.info("the claim {path} expired: taking the fetch over", path=held.path)
                return False
            if self.clock() > deadline:
                raise FillElsewhereFailed(f"the fetch in another process took more than {WAIT_LIMIT:.0f}s")
            on_poll()
            await deferLater(self.reactor, delay, lambda: None)
            delay = min(delay * 1.5, POLL_MAX)
