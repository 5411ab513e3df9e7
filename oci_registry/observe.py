"""
Observing the registry: `ObservedRegistry` wraps an `IRegistry` and reports
every completed operation to its observers as a `RegistryEvent`.

This is where behaviour that watches the registry belongs (logs, metrics,
notifications): an observer sees who did what, and the HTTP routes and the
registry stay as they are.  What is reported, once the operation succeeded:

==========  ==========  ===================================================
action      kind        when
==========  ==========  ===================================================
``push``    blob        an upload finished (chunked or monolithic)
``push``    manifest    a manifest was stored (``target.tags``: its tags)
``mount``   blob        a blob was linked from another repository
                        (``target.from_repository``; None when the registry
                        found it without a ``from``)
``pull``    blob        a GET of a blob was answered (a redirect, a 304 or
                        the bytes, which follow; a client that disconnects
                        mid-body still counts).  A HEAD is not a pull.
``pull``    manifest    a GET of a manifest was answered (``target.tags``:
                        the tag it was asked by).  A HEAD is not a pull.
``delete``  blob        a blob was unlinked from the repository
``delete``  manifest    a manifest was deleted (by digest)
``delete``  tag         a tag was deleted; also each tag a manifest's delete
                        removed, after the manifest's event (as CNCF
                        Distribution reports them)
==========  ==========  ===================================================

The fields are those of a CNCF Distribution notification's ``target``,
``request`` and ``actor``, so a webhook sender can build that envelope from
an event alone.

Observers are called on the reactor thread, in the order they were added,
after the operation completed and before its caller is answered; they must
return promptly and never block.  Slow work (an HTTP delivery) is started
and left running: an observer may return a Deferred or a coroutine, which is
not waited for.  An observer that raises (or whose Deferred fails) is
logged; the operation and the other observers go on as if it had not.

An observer may say which actions it wants with an ``actions`` attribute (a
set of them) and gets only those; an event no observer wants is never built, so that a
registry whose observers ignore pulls pays nothing for them.  Without the
attribute, an observer gets every event.
"""

from __future__ import annotations

import inspect
import time
import uuid

import attr
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Interface, implementer

from .identity import NOBODY, Caller
from .interfaces import IRegistry
from .listing import REFERRERS_PAGE
from .manifest import Descriptor
from .reference import Digest, Name, Tag

log = Logger()

PUSH, PULL, MOUNT, DELETE = "push", "pull", "mount", "delete"
BLOB, MANIFEST, TAG = "blob", "manifest", "tag"
BLOB_MEDIA_TYPE = "application/octet-stream"  # what a blob is served as


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Target:
    """What an operation was about."""

    kind: str  # BLOB, MANIFEST or TAG
    repository: Name
    digest: Digest | None = None
    media_type: str | None = None
    size: int | None = None
    tags: tuple[Tag, ...] = ()
    from_repository: Name | None = None  # a mount's source
    references: tuple[Descriptor, ...] = ()  # a pushed manifest's blobs and child manifests


@attr.s(auto_attribs=True, frozen=True, slots=True)
class RegistryEvent:
    """One completed operation: ``action`` (PUSH, PULL, MOUNT, DELETE) on ``target`` by ``caller``."""

    action: str
    target: Target
    caller: Caller
    timestamp: float  # seconds since the epoch
    id: str = attr.ib(factory=lambda: uuid.uuid4().hex)


class IRegistryObserver(Interface):
    """
    Sees the registry's events.  Optionally ``actions``: the set of actions
    it wants (PUSH, PULL, MOUNT, DELETE); without it, all of them.
    """

    def observe(event):
        """
        Take note of a `RegistryEvent`.  Called on the reactor thread: return
        promptly; a returned Deferred or coroutine runs on unwaited.
        """


@implementer(IRegistryObserver)
class LogObserver:
    """The registry's log lines about what clients did: a manifest push, with who pushed it."""

    actions = frozenset({PUSH})

    def __init__(self, logger: Logger | None = None):
        self.log = logger if logger is not None else Logger(namespace="oci_registry.registry")

    def observe(self, event: RegistryEvent) -> None:
        target = event.target
        if event.action == PUSH and target.kind == MANIFEST:
            self.log.info(
                "pushed {name}:{reference} as {digest}",
                name=str(target.repository),
                reference=",".join(map(str, target.tags)) or str(target.digest),
                digest=str(target.digest),
                actor=event.caller.actor,
                addr=event.caller.addr,
                request_id=event.caller.request_id,
            )


@implementer(IRegistry)
class ObservedRegistry:
    """
    The `IRegistry` ``registry``, reporting what it did to ``observers``
    (`IRegistryObserver` providers; more with `add_observer`).  ``clock``
    stamps the events.
    """

    def __init__(self, registry: IRegistry, observers=(), clock=time.time) -> None:
        self.registry = registry
        self.observers: list = list(observers)
        self._clock = clock
        self._wanted: frozenset | None = self._wanted_by(self.observers)

    def add_observer(self, observer) -> None:
        self.observers.append(observer)
        self._wanted = self._wanted_by(self.observers)

    @staticmethod
    def _wanted_by(observers) -> frozenset | None:
        """The actions some observer wants; None: every action (an observer without ``actions``)."""
        wanted: set = set()
        for observer in observers:
            actions = getattr(observer, "actions", None)
            if actions is None:
                return None
            wanted.update(actions)
        return frozenset(wanted)

    def _wants(self, action: str) -> bool:
        return self._wanted is None or action in self._wanted

    @property
    def max_manifest_size(self) -> int:
        return self.registry.max_manifest_size

    @property
    def min_chunk_length(self) -> int | None:
        return self.registry.min_chunk_length

    @property
    def storage(self):
        """The wrapped registry's storage, for what runs beside the registry (garbage collection, checks)."""
        return self.registry.storage

    def _report(self, action: str, target: Target, caller: Caller | None) -> None:
        if not self._wants(action):
            return
        event = RegistryEvent(action, target, caller if caller is not None else NOBODY, self._clock())
        for observer in list(self.observers):
            actions = getattr(observer, "actions", None)
            if actions is not None and action not in actions:
                continue
            try:
                result = observer.observe(event)
                if inspect.iscoroutine(result):
                    result = Deferred.fromCoroutine(result)
                if isinstance(result, Deferred):
                    result.addErrback(self._failed, observer, event)
            except Exception:  # noqa: BLE001 an observer's bug, whatever it is, must not fail the request
                self._failed(None, observer, event)

    def _failed(self, failure, observer, event: RegistryEvent) -> None:
        log.failure(
            "observer {observer!r} failed on {action} {kind} {repository}",
            failure,
            observer=observer,
            action=event.action,
            kind=event.target.kind,
            repository=str(event.target.repository),
        )

    # ----------------------------------------------------------------- blobs

    async def stat_blob(self, name, digest, head=False, caller=None):
        info = await self.registry.stat_blob(name, digest, head=head, caller=caller)
        if not head and self._wants(PULL):
            self._report(PULL, Target(BLOB, name, digest, BLOB_MEDIA_TYPE, info.size), caller)
        return info

    async def open_blob(self, name, digest, offset=0, length=None, caller=None):
        return await self.registry.open_blob(name, digest, offset, length, caller=caller)

    async def blob_redirect(self, name, digest, caller=None):
        return await self.registry.blob_redirect(name, digest, caller=caller)

    async def delete_blob(self, name, digest, caller=None):
        await self.registry.delete_blob(name, digest, caller=caller)
        self._report(DELETE, Target(BLOB, name, digest), caller)

    async def mount_blob(self, name, digest, source, caller=None):
        info = await self.registry.mount_blob(name, digest, source, caller=caller)
        if info:
            self._report(MOUNT, self._blob(name, digest, info, from_repository=source), caller)
        return info

    async def adopt_blob(self, name, digest, caller=None):
        info = await self.registry.adopt_blob(name, digest, caller=caller)
        if info:
            self._report(MOUNT, self._blob(name, digest, info), caller)
        return info

    @staticmethod
    def _blob(name, digest, info, from_repository=None) -> Target:
        size = getattr(info, "size", None)
        return Target(BLOB, name, digest, BLOB_MEDIA_TYPE, size, from_repository=from_repository)

    # --------------------------------------------------------------- uploads

    async def put_blob(self, name, digest, body, length=None, caller=None):
        info = await self.registry.put_blob(name, digest, body, length, caller=caller)
        self._report(PUSH, self._blob(name, digest, info), caller)
        return info

    async def start_upload(self, name, caller=None):
        return await self.registry.start_upload(name, caller=caller)

    async def upload_status(self, name, upload_id, caller=None):
        return await self.registry.upload_status(name, upload_id, caller=caller)

    async def append_upload(self, name, upload_id, body, start=None, length=None, caller=None):
        return await self.registry.append_upload(name, upload_id, body, start=start, length=length, caller=caller)

    async def finish_upload(self, name, upload_id, digest, body=None, caller=None):
        info = await self.registry.finish_upload(name, upload_id, digest, body, caller=caller)
        self._report(PUSH, self._blob(name, digest, info), caller)
        return info

    async def cancel_upload(self, name, upload_id, caller=None):
        return await self.registry.cancel_upload(name, upload_id, caller=caller)

    # ------------------------------------------------------------- manifests

    async def get_manifest(self, name, reference, head=False, accept=(), caller=None):
        stored = await self.registry.get_manifest(name, reference, head=head, accept=accept, caller=caller)
        if not head and self._wants(PULL):
            tags = (reference,) if isinstance(reference, Tag) else ()
            self._report(PULL, Target(MANIFEST, name, stored.digest, stored.media_type, stored.size, tags), caller)
        return stored

    async def put_manifest(self, name, reference, data, content_type, tags=(), caller=None):
        pushed = await self.registry.put_manifest(name, reference, data, content_type, tags, caller=caller)
        target = Target(
            MANIFEST,
            name,
            pushed.digest,
            pushed.media_type,
            pushed.size,
            pushed.tags,
            references=pushed.references,
        )
        self._report(PUSH, target, caller)
        return pushed

    async def delete_manifest(self, name, reference, caller=None):
        removed = await self.registry.delete_manifest(name, reference, caller=caller)
        if isinstance(reference, Tag):
            self._report(DELETE, Target(TAG, name, tags=(reference,)), caller)
        else:
            self._report(DELETE, Target(MANIFEST, name, reference), caller)
            for tag in removed or ():
                self._report(DELETE, Target(TAG, name, tags=(tag,)), caller)
        return removed

    # ------------------------------------------------------------- discovery

    async def list_tags(self, name, limit=None, last=None, caller=None):
        return await self.registry.list_tags(name, limit, last, caller=caller)

    async def catalog(self, limit=None, last=None, caller=None):
        return await self.registry.catalog(limit, last, caller=caller)

    async def referrers(self, name, subject, artifact_type=None, last=None, limit=REFERRERS_PAGE, caller=None):
        return await self.registry.referrers(name, subject, artifact_type, last, limit, caller=caller)
