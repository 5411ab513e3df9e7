"""
What a registry process remembers of the content it has read, so that a
pull asks the storage less (an S3 request costs a round trip and is
billed; see docs/storage.md for the count per operation).  One per process,
built by the composition root, in bounded memory.

- **Manifest bytes by digest**, least recently used first out, up to
  ``manifest_bytes`` in all.  Bytes stored under a digest are the bytes
  verified against it and never change: what is held is never wrong, and
  whether a repository still holds the manifest is its link's business.
- **Links read**, for ``ttl`` seconds, up to ``entries``: that a repository
  holds a manifest (with its media type and size), or a blob.

Never remembered: tags (they move: a pull by tag reads the tag's link every
time); anything a push checks (a manifest's references are looked up in
storage again); a blob's data (a request relying on a blob goes through
`oci_registry.gc.Keeper` with the data as stat'ed just now, so a blob a
garbage collection deleted is never reported present, whatever grace the
collection ran with); and nothing is remembered as missing.

Deletes: this process forgets a link it deletes at once (a manifest or blob
DELETE).  Another replica deleting it is seen here within ``ttl`` seconds:
a manifest deleted through one replica may still be served by another for
that long, as it may be from a client's own cache.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

MANIFEST_BYTES = 32 << 20  # manifest bytes held, in all
ENTRIES = 100_000  # links held
TTL = 10.0  # seconds a link read is trusted


class _Expiring:
    """Up to ``limit`` values, each for ``ttl`` seconds; the oldest goes first when full."""

    def __init__(self, limit: int, ttl: float, clock: Callable[[], float]):
        self._limit = limit
        self._ttl = ttl
        self._clock = clock
        self._items: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        item = self._items.get(key)
        if item is None:
            return None
        if self._clock() >= item[0]:
            del self._items[key]
            return None
        return item[1]

    def put(self, key: Hashable, value: Any) -> None:
        if self._limit <= 0 or self._ttl <= 0:
            return
        self._items.pop(key, None)
        self._items[key] = (self._clock() + self._ttl, value)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def drop(self, key: Hashable) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class ContentCache:
    """See the module docstring.  Zero sizes (or ``ttl``) turn the part off."""

    def __init__(
        self,
        manifest_bytes: int = MANIFEST_BYTES,
        entries: int = ENTRIES,
        ttl: float = TTL,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.manifest_limit = manifest_bytes
        self.ttl = ttl
        self._manifests: OrderedDict[str, bytes] = OrderedDict()
        self._manifest_size = 0
        self._links = _Expiring(entries, ttl, clock)

    # manifest bytes, by digest

    def manifest(self, digest) -> bytes | None:
        key = str(digest)
        data = self._manifests.get(key)
        if data is not None:
            self._manifests.move_to_end(key)
        return data

    def add_manifest(self, digest, data: bytes) -> None:
        key = str(digest)
        if len(data) > self.manifest_limit // 8 or key in self._manifests:
            return  # a huge one would push out many others
        self._manifests[key] = bytes(data)
        self._manifest_size += len(data)
        while self._manifest_size > self.manifest_limit:
            _, old = self._manifests.popitem(last=False)
            self._manifest_size -= len(old)

    @property
    def manifest_size(self) -> int:
        """Bytes of manifests held."""
        return self._manifest_size

    # links: what a repository holds

    def revision(self, name, digest) -> tuple[str, int | None] | None:
        """
        The media type and size (None: not known from the link) of the
        manifest ``name`` holds under ``digest``, if remembered.
        """
        return self._links.get(("manifest", str(name), str(digest)))

    def add_revision(self, name, digest, media_type: str, size: int | None = None) -> None:
        self._links.put(("manifest", str(name), str(digest)), (media_type, size))

    def drop_revision(self, name, digest) -> None:
        self._links.drop(("manifest", str(name), str(digest)))

    def holds_blob(self, name, digest) -> bool:
        return self._links.get(("blob", str(name), str(digest))) is not None

    def add_blob_link(self, name, digest) -> None:
        self._links.put(("blob", str(name), str(digest)), True)

    def drop_blob_link(self, name, digest) -> None:
        self._links.drop(("blob", str(name), str(digest)))


def no_cache() -> ContentCache:
    """A cache that holds nothing: every read goes to the storage."""
    return ContentCache(0, 0, 0)
