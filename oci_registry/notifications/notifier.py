"""
`Notifier`: the registry's notifications, as one service.  It observes the
registry (an `oci_registry.observe.IRegistryObserver`), records each event
in the outbox of every endpoint whose filters want it, and runs each
endpoint's `EndpointDelivery`.

Recording is a group commit: events are written at once (on the next
reactor turn) when no write started within the last ``record_window`` (100
ms by default), else once that much time has passed since the last one
started; everything waiting by then goes into the same durable write, one
file per endpoint.  So an event is in storage at most ``record_window``
plus the time of the writes in progress after its request was answered
(the window in which a killed process loses what it observed), and a busy
registry makes one write, and then one request to the endpoint, for many
events.  Pull events wait for ``pull_window`` (1 s) instead.  While the storage
cannot take a write, events wait in memory (at most ``max_buffered``; more
are counted as lost, with a log line) and the write is retried.  Stopping
the service writes what waits before it returns.

An endpoint in the ``cloudevents`` format also gets
``ociregistry.repository.created`` before the first push or mount into a
repository that held no manifest; a marker in storage
(``notifications/repositories/<name>/_created``, taken with an exclusive
create) makes it once per repository across processes.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import Interface, implementer

from .. import paths
from ..observe import IRegistryObserver
from ..storage.interfaces import PathNotFound, StorageFull, StorageUnavailable
from .config import CLOUDEVENTS, DELETE, MOUNT, PUSH, EndpointConfig, NotificationsConfig
from .delivery import EndpointDelivery, EndpointStatus
from .formats import sendable
from .notice import CREATE, MANIFEST, Notice, Source, notices_of, repository_created
from .outbox import Lease, Outbox, create_exclusive
from .sender import Sender

log = Logger(namespace="oci_registry.notifications")

STOP_TIMEOUT = 10.0  # seconds stopping waits for the events in memory to be written
KNOWN_REPOSITORIES = 10000  # repositories remembered as announced already, per process
_STORAGE_ERRORS = (StorageUnavailable, StorageFull, OSError)


class INotificationStatus(Interface):
    def status():
        """
        An `EndpointStatus` per configured endpoint, by name: what this
        process knows of the endpoint's delivery (for metrics and operators).
        """


def _wants(endpoint: EndpointConfig, notice: Notice) -> bool:
    action = PUSH if notice.action == CREATE else notice.action
    return sendable(endpoint.format, notice) and endpoint.filter.matches(action, notice.repository, notice.media_type)


@implementer(IRegistryObserver, INotificationStatus)
class Notifier(Service):
    """
    Records and delivers the events of the registry over ``storage`` to the
    endpoints of ``settings``.  ``source`` names this process in the events;
    ``scheme`` is the one of the content URLs when ``registry_url`` is not
    configured.  ``sender_factory(endpoint)`` makes each endpoint's sender
    (a `Sender` by default).
    """

    def __init__(
        self,
        settings: NotificationsConfig,
        storage,
        reactor,
        source: Source,
        scheme: str = "http",
        sender_factory=None,
        clock=time.time,
    ):
        self.setName("notifications")
        self.settings = settings
        self.storage = storage
        self.source = source
        self.scheme = scheme
        self._reactor = reactor
        self._clock = clock
        writer = source.instance.replace("-", "")[:16]
        if sender_factory is None:

            def sender_factory(endpoint):
                return Sender(endpoint, reactor, settings.registry_url)

        self.outboxes: dict[str, Outbox] = {}
        self.deliveries: dict[str, EndpointDelivery] = {}
        for endpoint in settings.endpoints:
            outbox = self.outboxes[endpoint.name] = Outbox(storage, endpoint.name, writer, clock)
            lease = Lease(storage, endpoint.name, writer, settings.lease, reactor, clock)
            self.deliveries[endpoint.name] = EndpointDelivery(
                endpoint, settings, outbox, lease, sender_factory(endpoint), reactor, clock
            )
        self._cloudevents = any(e.format == CLOUDEVENTS for e in settings.endpoints)
        self._actions = {a for e in settings.endpoints for a in e.filter.actions if e.filter.wants_action(a)}
        self.actions = frozenset(self._actions)  # what ObservedRegistry reports to it
        self._intake: list[Notice] = []
        self._pulls: list[Notice] = []
        self._buffers: dict[str, list[Notice]] = {e.name: [] for e in settings.endpoints}
        self._flushing: Deferred | None = None
        self._kick_call = None
        self._pull_call = None
        self._known: OrderedDict[str, None] = OrderedDict()
        self._looking: dict[str, Deferred] = {}  # repository -> its manifests, as they were when first observed
        self._last_lost_log = float("-inf")
        self._write_failures = 0
        self._last_flush = float("-inf")  # when the last write started (reactor time)
        self._retry_at = 0.0  # after a failed write: not before this

    # --------------------------------------------------------------- observe

    def observe(self, event) -> None:
        """Take note of a `RegistryEvent` (on the reactor thread; returns at once)."""
        action = event.action
        if action not in self._actions:
            return  # a pull, most often: nothing to build (this runs for every GET the registry answers)
        target = event.target
        repository = str(target.repository)
        media_type = None if action == DELETE else target.media_type
        if not any(e.filter.matches(action, repository, media_type) for e in self.settings.endpoints):
            return
        self._take(notices_of(event, self.source, self.settings.registry_url, self.scheme))

    def record(self, notices: list[Notice]) -> None:
        """Record ``notices`` in the outboxes of the endpoints that want them (soon: see the module's docstring)."""
        self._take([n for n in notices if any(_wants(e, n) for e in self.settings.endpoints)])

    def _take(self, wanted: list[Notice]) -> None:
        if not wanted:
            return
        room = self.settings.max_buffered - self._buffered()
        if room < len(wanted):
            self._lose(wanted[max(room, 0) :])
            wanted = wanted[: max(room, 0)]
        for notice in wanted:
            (self._pulls if notice.is_pull else self._intake).append(notice)
            if self._cloudevents and notice.action in (PUSH, MOUNT):
                self._look(notice.repository)
        if self._pulls and self._pull_call is None and self.running:
            self._pull_call = self._reactor.callLater(self.settings.pull_window, self._release_pulls)
        if self._intake:
            self._kick()

    def _buffered(self) -> int:
        return len(self._intake) + len(self._pulls) + sum(len(b) for b in self._buffers.values())

    def _lose(self, notices: list[Notice]) -> None:
        for endpoint in self.settings.endpoints:
            count = sum(1 for n in notices if _wants(endpoint, n))
            self.deliveries[endpoint.name].lost += count
        now = self._clock()
        if now - self._last_lost_log >= 60:
            self._last_lost_log = now
            log.error(
                "notifications: {count} event(s) lost: {buffered} wait in memory for the storage, the most "
                "max_buffered allows",
                count=len(notices),
                buffered=self._buffered(),
            )

    def _release_pulls(self) -> None:
        self._pull_call = None
        self._intake.extend(self._pulls)
        self._pulls = []
        self._kick()

    def _kick(self) -> None:
        """
        Write what waits: at once when no write started within the last
        ``record_window``, else once it has passed (so that a busy registry
        writes, and later sends, many events at a time), or after a failed
        write's backoff.
        """
        if self._kick_call is not None or self._flushing is not None or not self.running:
            return
        now = self._reactor.seconds()
        delay = max(self._last_flush + self.settings.record_window, self._retry_at) - now
        # At least the next reactor turn: the events one request reports (a delete and its tags) go together.
        self._kick_call = self._reactor.callLater(max(0.0, delay), self._start_flush)

    def _start_flush(self) -> None:
        self._kick_call = None
        if self._flushing is not None:
            return
        self._last_flush = self._reactor.seconds()
        self._flushing = Deferred.fromCoroutine(self._flush())
        self._flushing.addErrback(lambda f: log.failure("notifications: recording events failed", f))
        self._flushing.addBoth(self._flushed)

    def _flushed(self, _):
        self._flushing = None
        if self._intake or any(self._buffers.values()):
            self._kick()

    async def _flush(self) -> None:
        """One write per endpoint with events waiting; a failed one keeps its events for the next, after a backoff."""
        batch, self._intake = self._intake, []
        if batch:
            batch = await self._announce(batch)
            for endpoint in self.settings.endpoints:
                self._buffers[endpoint.name].extend(n for n in batch if _wants(endpoint, n))
        writes = [Deferred.fromCoroutine(self._write(name)) for name, buffer in self._buffers.items() if buffer]
        results: list[bool] = await gatherResults(writes) if writes else []
        if all(results):
            self._write_failures = 0
            self._retry_at = 0.0
        else:
            self._write_failures += 1
            self._retry_at = self._reactor.seconds() + min(0.25 * 2 ** min(self._write_failures, 6), 10.0)

    async def _write(self, endpoint: str) -> bool:
        notices, self._buffers[endpoint] = self._buffers[endpoint], []
        try:
            name = await self.outboxes[endpoint].append(notices)
        except _STORAGE_ERRORS as e:
            self._buffers[endpoint][:0] = notices  # first in line for the next try
            if self._write_failures == 0:
                log.error(
                    "notifications to {endpoint}: cannot record {count} event(s) in the outbox: {error}; retrying",
                    endpoint=endpoint,
                    count=len(notices),
                    error=e,
                )
            return False
        self.deliveries[endpoint].offer(name, notices)
        return True

    # -------------------------------------------------- repository created

    async def _announce(self, batch: list[Notice]) -> list[Notice]:
        """``batch`` with a repository-created notice before the first push into each new repository."""
        if not self._cloudevents:
            return batch
        out: list[Notice] = []
        pushed = _manifests_pushed(batch)
        for notice in batch:
            if notice.action in (PUSH, MOUNT) and notice.repository not in self._known:
                try:
                    created = await self._first_content(notice, pushed.get(notice.repository, set()))
                except _STORAGE_ERRORS as e:
                    log.warn(
                        "notifications: cannot tell whether {repository} is new: {error}",
                        repository=notice.repository,
                        error=e,
                    )
                else:
                    self._known[notice.repository] = None
                    self._looking.pop(notice.repository, None)  # looked for again while this was judged
                    if len(self._known) > KNOWN_REPOSITORIES:
                        self._known.popitem(last=False)
                    if created:
                        out.append(repository_created(notice))
            out.append(notice)
        return out

    def _look(self, repository: str) -> None:
        """
        Find out at once whether a repository not known to be announced is
        new: a mount is observed before the client pushes the manifest that
        follows it, and its notice is judged by what the repository held
        then, not by the time the events are written.
        """
        if repository in self._known or repository in self._looking:
            return
        looking = self._looking[repository] = Deferred.fromCoroutine(self._manifests_held(repository))
        looking.addErrback(lambda f: f.value)  # kept for _first_content, which raises it

    async def _manifests_held(self, repository: str) -> list[str] | None:
        """The paths under a repository's manifest revisions; None once it was announced."""
        if await self.storage.stat(paths.repository_announced(repository)) is not None:
            return None
        return await self.storage.walk(f"{paths.REPOSITORIES}/{repository}/_manifests/revisions")

    async def _first_content(self, notice: Notice, pushed: set[str]) -> bool:
        """
        Whether ``notice`` reports the first content of its repository, and
        this process is to say so: its repository held no manifest when its
        first push or mount was observed, but those whose pushes this
        process observed and has not recorded yet (``pushed``: their hex
        digests in the events being written; then those observed since).
        """
        looking = self._looking.pop(notice.repository, None)
        if looking is None:
            looking = Deferred.fromCoroutine(self._manifests_held(notice.repository))
        revisions = await looking
        if isinstance(revisions, BaseException):
            raise revisions
        if revisions is None:
            return False
        others = {path.split("/")[1] for path in revisions if path.endswith("/link")} - pushed
        if others:  # or pushed since these events were taken (rare: looked up only then)
            others -= _manifests_pushed(self._intake).get(notice.repository, set())
        new = not others
        marker = paths.repository_announced(notice.repository)
        try:
            created = await create_exclusive(
                self.storage, marker, notice.id.encode(), f"{marker}.{self.source.instance}"
            )
        except PathNotFound:
            return False
        return new and created

    # --------------------------------------------------------------- service

    def startService(self):
        super().startService()
        for outbox in self.outboxes.values():
            Deferred.fromCoroutine(outbox.prepare()).addErrback(
                lambda f, name=outbox.endpoint: log.warn(
                    "notifications to {endpoint}: outbox not prepared: {error}", endpoint=name, error=f.value
                )
            )
        for delivery in self.deliveries.values():
            delivery.start()
        if self._pulls and self._pull_call is None:
            self._pull_call = self._reactor.callLater(self.settings.pull_window, self._release_pulls)
        if self._intake:
            self._kick()

    async def _stop(self) -> None:
        if self._pull_call is not None and self._pull_call.active():
            self._pull_call.cancel()
        self._pull_call = None
        self._intake.extend(self._pulls)
        self._pulls = []
        if self._kick_call is not None and self._kick_call.active():
            self._kick_call.cancel()
        self._kick_call = None
        deadline = self._reactor.seconds() + STOP_TIMEOUT
        for _ in range(20):  # what waits, written now: a write in progress, then the rest
            if self._flushing is None:
                if not (self._intake or any(self._buffers.values())):
                    break
                self._start_flush()
            waiting: Deferred[None] = Deferred()
            assert self._flushing is not None
            self._flushing.chainDeferred(waiting)
            waiting.addTimeout(max(0.1, deadline - self._reactor.seconds()), self._reactor)
            try:
                await waiting
            except TimeoutError:
                log.error("notifications: the storage did not take the last events within {s:g}s", s=STOP_TIMEOUT)
                break
            if self._write_failures:
                await _sleep(self._reactor, 0.25)
            if self._reactor.seconds() >= deadline:
                break
        left = self._buffered()
        if left:
            log.error("notifications: {count} event(s) not recorded before stopping: lost", count=left)
        await DeferredList([Deferred.fromCoroutine(d.stop()) for d in self.deliveries.values()])

    def stopService(self):
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    # ---------------------------------------------------------------- status

    def status(self) -> dict[str, EndpointStatus]:
        return {name: delivery.status() for name, delivery in self.deliveries.items()}


def _manifests_pushed(notices: list[Notice]) -> dict[str, set[str]]:
    """The hex digests of the manifests ``notices`` report pushed, by repository."""
    pushed: dict[str, set[str]] = {}
    for n in notices:
        if n.kind == MANIFEST and n.action == PUSH and n.digest:
            pushed.setdefault(n.repository, set()).add(n.digest.split(":", 1)[-1])
    return pushed


def _sleep(reactor, seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)
