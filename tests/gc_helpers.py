"""
A storage driver wrapper for garbage collection tests: it runs a hook
before (or after) chosen calls, to fail a read or to make a request at a
precise moment of a run.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import implementer

from oci_registry.storage.interfaces import IStorageDriver

MUTATIONS = ("write_bytes", "move", "delete")


@implementer(IStorageDriver)
class HookedStorage:
    """
    Forwards every call to ``inner``.  ``before(method, path, args)`` and
    ``after(method, path, args)``, when set, are awaited around each call
    (``path``: its first argument); ``before`` may raise to fail the call.
    """

    def __init__(self, inner, before=None, after=None):
        self.inner = inner
        self.before = before
        self.after = after
        self.calls: list[tuple[str, str]] = []

    @property
    def min_chunk_length(self):
        return self.inner.min_chunk_length

    @property
    def move_is_copy(self):
        return self.inner.move_is_copy

    def _call(self, method: str, *args, **kwargs):
        async def run():
            path = args[0] if args else ""
            self.calls.append((method, path))
            if self.before is not None:
                await self.before(method, path, args)
            result = await getattr(self.inner, method)(*args, **kwargs)
            if self.after is not None:
                await self.after(method, path, args)
            return result

        return Deferred.fromCoroutine(run())

    def read_bytes(self, path):
        return self._call("read_bytes", path)

    def write_bytes(self, path, data, durable=True):
        return self._call("write_bytes", path, data, durable)

    def stat(self, path):
        return self._call("stat", path)

    def list(self, path):
        return self._call("list", path)

    def walk(self, path):
        return self._call("walk", path)

    def delete(self, path):
        return self._call("delete", path)

    def move(self, source, destination, size=None, replace=True):
        return self._call("move", source, destination, size=size, replace=replace)

    def open_writer(self, path, append=False, hasher=None):
        return self._call("open_writer", path, append=append, hasher=hasher)

    def open_reader(self, path, offset=0):
        return self._call("open_reader", path, offset)

    def hash_file(self, path, hasher, limit=None):
        return self._call("hash_file", path, hasher, limit)

    def redirect_url(self, path):
        return self._call("redirect_url", path)


def first(predicate, action):
    """
    A hook that awaits ``action()`` at the first call ``predicate(method,
    path, args)`` is true for; ``hook.fired`` tells whether it was.
    """

    async def hook(method, path, args):
        if not hook.fired and predicate(method, path, args):
            hook.fired = True
            await action()

    hook.fired = False
    return hook
