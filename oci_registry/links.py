"""
What the registry's link files hold (where they are: `oci_registry.paths`),
so that one read of a link answers a pull:

- a **layer link** (``_layers/<alg>/<hex>/link``: the repository holds the
  blob) is a JSON object ``{"digest": "sha256:…", "size": 1234}``; the
  size is the blob's as verified when it was linked, and answers a blob
  ``HEAD`` (never a ``GET``, which reads the data's own size);
- a **revision link** (``_manifests/revisions/<alg>/<hex>/link``: the
  repository holds the manifest) is one JSON line ``{"digest": …,
  "mediaType": …, "size": …}`` followed, for a manifest of at most
  `INLINE_MANIFEST` bytes, by the manifest's bytes, so that a manifest
  ``GET`` by digest is one read;
- a **tag link** holds the digest the tag points at (``sha256:…``).

Earlier releases wrote a layer link holding the digest alone and a
revision link holding the media type alone: both are still read (without
a size or bytes, which are then read from the blob's data), and rewritten
in the new form whenever the registry writes the link again.
"""

from __future__ import annotations

import json

import attr

INLINE_MANIFEST = 64 << 10  # manifests up to this size are kept in their revision links too


def layer(digest, size: int) -> bytes:
    """A layer link's content."""
    return json.dumps({"digest": str(digest), "size": int(size)}, separators=(",", ":")).encode()


def layer_size(data: bytes, digest) -> int | None:
    """The blob's size a layer link holds, or None (a link of an earlier release, or one for another digest)."""
    if not data.startswith(b"{"):
        return None
    try:
        doc = json.loads(data)
        size = doc["size"]
        if doc["digest"] != str(digest) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return None
        return size
    except (ValueError, TypeError, KeyError, RecursionError):
        return None


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Revision:
    """What a revision link says of its manifest: ``size`` and ``data`` are None when it does not hold them."""

    media_type: str
    size: int | None = None
    data: bytes | None = None


def revision(digest, media_type: str, data: bytes) -> bytes:
    """A revision link's content: the manifest's bytes are in it when it is small."""
    head = json.dumps({"digest": str(digest), "mediaType": media_type, "size": len(data)}, separators=(",", ":"))
    return head.encode() + b"\n" + (bytes(data) if len(data) <= INLINE_MANIFEST else b"")


def parse_revision(content: bytes, digest) -> Revision:
    """A revision link's content read back; one of an earlier release is its media type alone."""
    if not content.startswith(b"{"):
        return Revision(content.decode("utf-8", "replace"))
    head, _, rest = content.partition(b"\n")
    try:
        doc = json.loads(head)
        media_type, size = doc["mediaType"], doc["size"]
        valid = (
            doc["digest"] == str(digest)
            and isinstance(media_type, str)
            and isinstance(size, int)
            and not isinstance(size, bool)
            and size >= 0
        )
    except (ValueError, TypeError, KeyError, RecursionError):
        valid = False
    if not valid:
        # Not what this registry writes: the media type as an earlier release would have read it.
        return Revision(content.decode("utf-8", "replace"))
    return Revision(media_type, size, bytes(rest) if rest and len(rest) == size else None)
