"""
`EndpointDelivery`: sends one endpoint's recorded events, in order per
repository, at least once, and removes each batch from the outbox once
every event in it was answered 2xx.

Every registry process runs one per endpoint; the one holding the
endpoint's `Lease` delivers, the others only keep trying to take the lease
(which they get once its holder stopped renewing it: stopped, killed, cut
off from the storage).  The holder lists the outbox every
``poll_interval`` (and at once when this process recorded events), loads
batches oldest first (at most `MAX_LOADED` events at a time), and queues
their events per repository.  A request carries the events that wait, of
as many repositories as fit in ``batch`` (pull events: up to
``pull_batch``, in a queue and requests of their own); up to
``concurrency`` requests are in flight at once, never two with events of
one repository, so each repository's events arrive in the order they were
recorded.  A request that is not full starts at once when no request
started within the last ``batch_window``, else once that much time has
passed: an event that comes alone is sent alone and at once, as
Distribution sends them, and a busy registry sends a few full requests a
second, however many record windows their events were written in.

A failed request (no answer in time, not 2xx) keeps its events at the head
of their queue and pauses the whole endpoint for its backoff, which doubles
with each failure in a row up to the cap.  An event that failed
``max_attempts`` times, or that has waited ``max_age``, is moved to the
dead letters with a log line, and counted.  A process that delivered an
event and died before removing its batch sends it again after a restart or
a takeover: receivers see an event more than once only then (use its
``id``).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import time
from collections import OrderedDict, deque

import attr
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ..storage.interfaces import StorageFull, StorageUnavailable
from .config import EndpointConfig, NotificationsConfig
from .formats import sendable
from .notice import Notice
from .outbox import BatchName, Lease, Outbox
from .sender import DeliveryFailed

log = Logger(namespace="oci_registry.notifications")

MAX_LOADED = 10000  # events of one endpoint held in memory for delivery at once
PULLS = "\0pulls"  # the queue of pull events (repository names never hold a NUL)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
_STORAGE_ERRORS = (StorageUnavailable, StorageFull, OSError)


@attr.s(auto_attribs=True, frozen=True)
class EndpointStatus:
    """
    What one process knows of one endpoint's delivery, for metrics and
    operators.  ``pending`` and ``oldest_age`` are known to the process that
    delivers (``leader``); the counters count what this process did since it
    started: events ``delivered`` (2xx), requests ``failed``, events
    ``dead_lettered``, events ``lost`` (that could not be recorded at all:
    the storage failed for longer than the buffer holds).  ``latency_*``:
    seconds from an event's operation to its 2xx, as a cumulative histogram
    over `LATENCY_BUCKETS` (``latency_buckets``: (upper bound, count) pairs).
    """

    name: str
    leader: bool
    pending: int
    oldest_age: float | None
    delivered: int
    failed: int
    dead_lettered: int
    lost: int
    latency_count: int
    latency_sum: float
    latency_buckets: tuple[tuple[float, int], ...]
    last_error: str | None


@attr.s(auto_attribs=True)
class _Batch:
    name: BatchName
    notices: list[Notice]
    remaining: int


class EndpointDelivery:
    """Delivers ``endpoint``'s events from ``outbox`` through ``sender`` while this process holds ``lease``."""

    def __init__(
        self,
        endpoint: EndpointConfig,
        settings: NotificationsConfig,
        outbox: Outbox,
        lease: Lease,
        sender,
        reactor,
        clock=time.time,
    ):
        self.endpoint = endpoint
        self.settings = settings
        self.outbox = outbox
        self.lease = lease
        self.sender = sender
        self._reactor = reactor
        self._clock = clock
        self._running = False
        self._loop: Deferred | None = None
        self._waiter: Deferred | None = None
        self._woken = False
        self._leader = False
        self._lease_checked = float("-inf")
        self._batches: dict[BatchName, _Batch] = {}
        self._queues: OrderedDict[str, deque] = OrderedDict()  # key -> (batch name, index) in order
        self._requests: set[Deferred] = set()  # in flight
        self._busy: dict[str, Deferred] = {}  # key -> the request in flight that holds its head
        self._stale: set[str] = set()  # queues to purge once their request in flight ends
        self._removed: set[BatchName] = set()  # batches complete and removed (or being removed)
        self._attempts: dict[str, int] = {}  # event id -> failed requests
        self._listed: list[BatchName] = []
        self._resume_at = 0.0
        self._last_request = float("-inf")  # when the last request started (reactor time)
        self._gathering: IDelayedCall | None = None  # dispatches what waits once batch_window has passed
        self._failures = 0  # in a row
        self._failing_since: float | None = None
        self._last_logged = float("-inf")
        self._storage_failing = False
        # counters
        self.lost = 0
        self._delivered = 0
        self._failed = 0
        self._dead = 0
        self._latency = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative
        self._latency_count = 0
        self._latency_sum = 0.0
        self._last_error: str | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda f: log.failure("notifications to {endpoint}: stopped", f, endpoint=self.name))

    async def stop(self) -> None:
        """Stop: let the requests in flight end (each within its timeout), then give up the lease."""
        self._running = False
        if self._gathering is not None and self._gathering.active():
            self._gathering.cancel()
        self._gathering = None
        self.wake()
        if self._loop is not None:
            await self._loop
        if self._requests:
            await DeferredList(list(self._requests))
        if self._leader:
            self._leader = False
            try:
                await self.lease.release()
            except _STORAGE_ERRORS as e:
                log.warn("notifications to {endpoint}: lease not released: {error}", endpoint=self.name, error=e)
        await self.sender.close()

    @property
    def name(self) -> str:
        return self.endpoint.name

    def wake(self) -> None:
        """Look at the outbox now (this process recorded events, a request ended, or it is stopping)."""
        self._woken = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    async def _sleep(self, seconds: float) -> None:
        if self._woken or not self._running:
            self._woken = False
            return
        waiter = self._waiter = Deferred()
        timer = self._reactor.callLater(max(0.0, seconds), self.wake)
        await waiter
        if timer.active():
            timer.cancel()
        self._woken = False

    # ----------------------------------------------------------------- loop

    async def _run(self) -> None:
        while self._running:
            try:
                await self._step()
                self._storage_recovered()
            except _STORAGE_ERRORS as e:
                self._storage_failed(e)
                await self._sleep(self.settings.poll_interval)
                continue
            if not self._leader:
                await self._sleep(self.lease.duration / 3)
            elif self._clock() < self._resume_at:
                await self._sleep(self._resume_at - self._clock())
            else:
                await self._sleep(self.settings.poll_interval)

    async def _step(self) -> None:
        now = self._clock()
        if not self._leader or now - self._lease_checked >= self.lease.duration / 3:
            leading = await self.lease.hold()
            self._lease_checked = now
            if leading and not self._leader:
                log.info("notifications to {endpoint}: this process delivers them", endpoint=self.name)
            if not leading and self._leader:
                self._forget()
            self._leader = leading
        if not self._leader or not self._running:
            return
        await self._load()
        self._dispatch()

    def _forget(self) -> None:
        """Another process delivers now: drop what was loaded (requests in flight still end)."""
        self._batches.clear()
        self._queues.clear()
        self._listed = []

    async def _load(self) -> None:
        before = set(self._batches)
        listed = await self.outbox.pending()
        self._listed = listed
        present = set(listed)
        self._removed &= present  # a removal the listing no longer shows is complete
        for name in before - present:
            self._drop(name)  # delivered by another process, or removed by an operator
        loaded = sum(b.remaining for b in self._batches.values())
        for name in listed:
            if name in self._batches or name in self._removed:
                continue
            if loaded and loaded + name.count > MAX_LOADED:
                break
            try:
                notices = await self.outbox.read(name)
            except ValueError as e:
                log.error(
                    "notifications to {endpoint}: batch {batch} cannot be read ({error}): moved to the dead letters",
                    endpoint=self.name,
                    batch=str(name),
                    error=e,
                )
                await self.outbox.quarantine(name)
                continue
            if notices is None or name in self._batches or name in self._removed:
                continue  # gone, or offered while it was read
            loaded += await self._add(name, notices)

    def offer(self, name: BatchName, notices: list[Notice]) -> None:
        """This process just recorded ``notices`` as ``name``: queue them now, without reading them back."""
        if not self._leader or not self._running or name in self._batches:
            return
        if sum(b.remaining for b in self._batches.values()) + len(notices) > MAX_LOADED:
            self.wake()  # left for the next listing
            return
        Deferred.fromCoroutine(self._add(name, notices)).addCallback(lambda _: self._dispatch())

    async def _add(self, name: BatchName, notices: list[Notice]) -> int:
        keep = [(i, n) for i, n in enumerate(notices) if sendable(self.endpoint.format, n)]
        batch = _Batch(name, notices, len(keep))
        self._batches[name] = batch
        for i, notice in keep:
            self._queues.setdefault(PULLS if notice.is_pull else notice.repository, deque()).append((name, i))
        if not keep:
            await self._finished([batch])
        return len(keep)

    def _drop(self, name: BatchName) -> None:
        self._batches.pop(name, None)
        for key in list(self._queues):
            if key in self._busy:
                self._stale.add(key)  # its head is being sent: purged when that ends
                continue
            self._purge(key)

    def _purge(self, key: str) -> None:
        """Drop the items of batches no longer loaded from ``key``'s queue."""
        queue = self._queues.get(key)
        if queue is None:
            return
        kept = deque(item for item in queue if item[0] in self._batches)
        if kept:
            self._queues[key] = kept
        else:
            del self._queues[key]

    def _dispatch(self) -> None:
        """
        Start requests for what waits in the queues no request in flight
        holds, up to ``concurrency`` requests.  Repositories are taken by
        their oldest waiting event first; each gives its waiting events (in
        order) to the request being filled, up to ``batch`` events in all, and
        a new request is started only when that one is full.  A repository is
        in one request at a time, so its events cannot overtake each other;
        within a request, events are in the order they were recorded.  Pull
        events go in requests of their own, up to ``pull_batch``.  A request
        that is not full waits (its events stay in their queues, gathering
        those recorded meanwhile) until ``batch_window`` after the last
        request started.
        """
        if self._clock() < self._resume_at or not self._running:
            return
        slots = self.endpoint.concurrency - len(self._requests)
        if slots <= 0:
            return
        free = [(queue[0], key) for key, queue in self._queues.items() if key not in self._busy and queue]
        if not free:
            return
        free.sort()
        size = self.endpoint.batch
        requests: list[list[tuple[str, list[tuple[BatchName, int]]]]] = []
        filling: list[tuple[str, list[tuple[BatchName, int]]]] = []  # the request repositories join
        room = 0  # left in it
        for _, key in free:
            queue = self._queues[key]
            if key == PULLS:
                if len(requests) < slots:
                    requests.append([(key, list(itertools.islice(queue, self.endpoint.pull_batch)))])
                continue
            if room == 0:
                if len(requests) >= slots:
                    break
                filling = []
                requests.append(filling)
                room = size
            take = list(itertools.islice(queue, room))
            filling.append((key, take))
            room -= len(take)
        now = self._reactor.seconds()
        for request in requests:
            full = self.endpoint.pull_batch if request[0][0] == PULLS else size
            gathered_until = self._last_request + self.endpoint.batch_window
            if now < gathered_until and sum(len(items) for _, items in request) < full:
                self._gather(gathered_until - now)
                continue
            self._last_request = now
            done: Deferred[None] = Deferred()
            self._requests.add(done)
            for key, _ in request:
                self._busy[key] = done  # before it starts: it may end at once
            Deferred.fromCoroutine(self._deliver(request)).chainDeferred(done)
            done.addBoth(self._request_ended, done)

    def _gather(self, delay: float) -> None:
        if self._gathering is None or not self._gathering.active():
            self._gathering = self._reactor.callLater(delay, self._gathered)

    def _gathered(self) -> None:
        self._gathering = None
        self._dispatch()

    def _request_ended(self, result, done: Deferred):
        self._requests.discard(done)
        return result

    async def _deliver(self, request: list[tuple[str, list[tuple[BatchName, int]]]]) -> None:
        """Send ``request``'s events (per key, the head of its queue) in one request, in the order recorded."""
        parts = [[(item, key) for item in items] for key, items in request]
        ordered = list(heapq.merge(*parts)) if len(parts) > 1 else parts[0]
        batches = self._batches
        notices = [batches[name].notices[i] for (name, i), _ in ordered]
        try:
            await self.sender.send(notices)
        except DeliveryFailed as e:
            await self._failed_request(ordered, notices, str(e))
        except Exception as e:  # noqa: BLE001 a bug encoding or sending must not stop the endpoint: logged, retried
            log.failure("notifications to {endpoint}: sending failed", endpoint=self.name)
            await self._failed_request(ordered, notices, f"{type(e).__name__}: {e}")
        else:
            self._succeeded(notices)
            await self._finished([batch for key, items in request for batch in self._done(key, items)])
        finally:
            for key, _ in request:
                self._busy.pop(key, None)
                if key in self._stale:
                    self._stale.discard(key)
                    self._purge(key)
            if self._running:
                self._reactor.callLater(0, self._dispatch)

    def _succeeded(self, notices: list[Notice]) -> None:
        now = self._clock()
        if self._failing_since is not None:
            log.info(
                "notifications to {endpoint}: delivering again, after {failures} failed requests in {seconds:.0f}s",
                endpoint=self.name,
                failures=self._failures,
                seconds=now - self._failing_since,
            )
        self._failures = 0
        self._failing_since = None
        self._delivered += len(notices)
        attempts, counts = self._attempts, self._latency
        for notice in notices:
            if attempts:
                attempts.pop(notice.id, None)
            latency = max(0.0, now - notice.timestamp)
            self._latency_sum += latency
            counts[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1  # the last slot: above every bound
        self._latency_count += len(notices)

    async def _failed_request(self, ordered: list, notices: list[Notice], reason: str) -> None:
        """The request for ``notices`` (``ordered``: their (item, key) pairs) failed: back off, dead-letter."""
        now = self._clock()
        self._failed += 1
        self._failures += 1
        self._last_error = reason
        if self._failing_since is None:
            self._failing_since = now
        delay = min(self.endpoint.backoff_initial * 2 ** min(self._failures - 1, 30), self.endpoint.backoff_max)
        self._resume_at = max(self._resume_at, now + delay)
        if self._failures == 1 or now - self._last_logged >= 60:
            self._last_logged = now
            log.warn(
                "notifications to {endpoint} failing: {reason}; retrying in {delay:g}s "
                "({failures} failed requests in a row, {pending} events waiting)",
                endpoint=self.name,
                reason=reason,
                delay=delay,
                failures=self._failures,
                pending=self._pending(),
            )
        dead = []
        attempts = 0
        for (item, key), notice in zip(ordered, notices, strict=True):
            attempts = self._attempts[notice.id] = self._attempts.get(notice.id, 0) + 1
            too_many = self.endpoint.max_attempts and attempts >= self.endpoint.max_attempts
            too_old = self.endpoint.max_age and now - item[0].written_at >= self.endpoint.max_age
            if too_many or too_old:
                dead.append((key, item, notice))
        if not dead:
            return
        await self.outbox.bury([notice for _, _, notice in dead])
        self._dead += len(dead)
        for _, _, notice in dead:
            self._attempts.pop(notice.id, None)
        log.error(
            "notifications to {endpoint}: gave up on {count} event(s) after {attempts} failed requests "
            "({reason}): moved to the dead letters (ociregistry events resend); first: {action} {repository}",
            endpoint=self.name,
            count=len(dead),
            attempts=attempts,
            reason=reason,
            action=dead[0][2].action,
            repository=dead[0][2].repository,
        )
        by_key: dict[str, list[tuple[BatchName, int]]] = {}
        for key, item, _ in dead:
            by_key.setdefault(key, []).append(item)
        await self._finished([batch for key, items in by_key.items() for batch in self._done(key, items)])

    def _done(self, key: str, items: list[tuple[BatchName, int]]) -> list[_Batch]:
        """``items`` (at the head of ``key``'s queue) are handled: off the queue; the batches they complete."""
        complete = []
        queue = self._queues.get(key)
        for item in items:
            if queue:
                if queue[0] == item:
                    queue.popleft()
                else:
                    try:
                        queue.remove(item)
                    except ValueError:
                        pass  # purged meanwhile
            batch = self._batches.get(item[0])
            if batch is None:
                continue
            batch.remaining -= 1
            if batch.remaining == 0:
                complete.append(batch)
        if queue is not None and not queue:
            self._queues.pop(key, None)
        return complete

    async def _finished(self, batches: list[_Batch]) -> None:
        """Every event of ``batches`` was handled: they leave the outbox, together (one request on S3)."""
        if not batches:
            return
        for batch in batches:
            self._batches.pop(batch.name, None)
            self._removed.add(batch.name)  # never loaded again, even when its removal fails
        try:
            await self.outbox.remove([batch.name for batch in batches])
        except _STORAGE_ERRORS as e:
            # Left in the outbox: sent again by the next leader (an event may then arrive twice).
            self._storage_failed(e)

    # ----------------------------------------------------------- reporting

    def _storage_failed(self, error: Exception) -> None:
        if not self._storage_failing:
            self._storage_failing = True
            log.error("notifications to {endpoint}: outbox unusable: {error}", endpoint=self.name, error=error)

    def _storage_recovered(self) -> None:
        if self._storage_failing:
            self._storage_failing = False
            log.info("notifications to {endpoint}: the outbox can be used again", endpoint=self.name)

    def _unloaded(self) -> list[BatchName]:
        """The batches the last listing showed that are neither loaded nor delivered since."""
        return [n for n in self._listed if n not in self._batches and n not in self._removed]

    def _pending(self) -> int:
        return sum(b.remaining for b in self._batches.values()) + sum(n.count for n in self._unloaded())

    def status(self) -> EndpointStatus:
        oldest = None
        waiting = [n.written_at for n in self._unloaded()] + [b.name.written_at for b in self._batches.values()]
        if self._leader and waiting:
            oldest = max(0.0, self._clock() - min(waiting))
        return EndpointStatus(
            name=self.name,
            leader=self._leader,
            pending=self._pending() if self._leader else 0,
            oldest_age=oldest,
            delivered=self._delivered,
            failed=self._failed,
            dead_lettered=self._dead,
            lost=self.lost,
            latency_count=self._latency_count,
            latency_sum=self._latency_sum,
            latency_buckets=tuple(zip(LATENCY_BUCKETS, itertools.accumulate(self._latency[:-1]), strict=True)),
            last_error=self._last_error,
        )
