"""
`Notice`: one event as the outbox keeps it, whatever format it is sent in.

A notice holds every field of a CNCF Distribution event (the richest of the
formats) plus its ``kind`` (blob, manifest, tag, repository), so that the
formats (`oci_registry.notifications.formats`) are functions of a notice
alone and an endpoint switched to another format sends its waiting events
in the new one.  Notices are made from the registry's `RegistryEvent`
values (`notices_of`), stored as JSON lines, and read back by whichever
process delivers them: `to_json` and `from_json` are exact inverses.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterable

import attr

from .config import DELETE, PULL

BLOB, MANIFEST, TAG, REPOSITORY = "blob", "manifest", "tag", "repository"
_encode = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps would make an encoder per call
CREATE = "create"  # a repository's first content (CloudEvents only: ociregistry.repository.created)


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Notice:
    id: str  # a UUID, as Distribution's
    timestamp: float  # seconds since the epoch, when the operation completed
    action: str  # push, pull, mount, delete; create for a repository
    kind: str  # blob, manifest, tag, repository
    repository: str
    digest: str | None = None
    media_type: str | None = None
    size: int | None = None
    tag: str | None = None
    from_repository: str | None = None
    url: str | None = None  # where the content can be fetched
    references: tuple[tuple[str, str, int], ...] = ()  # (mediaType, digest, size) of a manifest's blobs
    request: tuple[tuple[str, str], ...] = ()  # id, addr, host, method, useragent (those known)
    actor: str | None = None
    source_addr: str = ""  # hostname:port of the registry process that recorded it
    instance: str = ""  # that process's instance id

    @property
    def is_pull(self) -> bool:
        return self.action == PULL

    def add_target_fields(self, document: dict) -> None:
        """Set in ``document`` the target's fields that are set, under their JSON names."""
        for key, value in (
            ("digest", self.digest),
            ("mediaType", self.media_type),
            ("size", self.size),
            ("tag", self.tag),
            ("fromRepository", self.from_repository),
            ("url", self.url),
        ):
            if value is not None:
                document[key] = value

    def to_json(self) -> str:
        """One line of JSON, without the fields that are unset (this runs for every event recorded)."""
        document: dict = {
            "id": self.id,
            "t": self.timestamp,
            "action": self.action,
            "kind": self.kind,
            "repository": self.repository,
        }
        self.add_target_fields(document)
        if self.references:
            document["references"] = [list(r) for r in self.references]
        if self.request:
            document["request"] = dict(self.request)
        if self.actor is not None:
            document["actor"] = self.actor
        document["source"] = [self.source_addr, self.instance]
        return _encode(document)

    @classmethod
    def from_json(cls, line: str | bytes) -> Notice:
        """The notice `to_json` wrote; ValueError for anything else."""
        try:
            d = json.loads(line)
            source = d.get("source") or ["", ""]
            return cls(
                id=_str(d["id"]),
                timestamp=float(d["t"]),
                action=_str(d["action"]),
                kind=_str(d["kind"]),
                repository=_str(d["repository"]),
                digest=_optional(d.get("digest")),
                media_type=_optional(d.get("mediaType")),
                size=_size(d.get("size")),
                tag=_optional(d.get("tag")),
                from_repository=_optional(d.get("fromRepository")),
                url=_optional(d.get("url")),
                references=tuple((_str(m), _str(g), int(s)) for m, g, s in d.get("references", [])),
                request=tuple((_str(k), _str(v)) for k, v in dict(d.get("request", {})).items()),
                actor=_optional(d.get("actor")),
                source_addr=_str(source[0]),
                instance=_str(source[1]),
            )
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
            raise ValueError(f"not a stored event: {e}") from None


def _str(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _optional(value) -> str | None:
    return None if value is None else _str(value)


def _size(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not a size")
    return value


def encode_batch(notices: Iterable[Notice]) -> bytes:
    """A batch file: one notice per line."""
    return "".join(n.to_json() + "\n" for n in notices).encode()


def decode_batch(data: bytes) -> list[Notice]:
    """The notices of a batch file; ValueError when a line is not one (a damaged file)."""
    return [Notice.from_json(line) for line in data.splitlines() if line.strip()]


@attr.s(auto_attribs=True, frozen=True)
class Source:
    """The registry process that records events: Distribution's ``source`` record."""

    addr: str  # hostname:port, as Distribution's
    instance: str = attr.ib(factory=lambda: str(uuid.uuid4()))  # new at every start

    @classmethod
    def for_listen(cls, listen: Iterable[str]) -> Source:
        """Named after this host and the port of the first ``tcp:``/``ssl:`` endpoint the registry listens on."""
        port = ""
        for description in listen:
            kind, _, rest = description.partition(":")
            if kind in ("tcp", "tcp6", "ssl"):
                first = rest.split(":", 1)[0]
                port = first.split("=", 1)[1] if first.startswith("port=") else first
                break
        host = socket.gethostname()
        return cls(f"{host}:{port}" if port else host)


def uuid_text(value: str | None) -> str:
    """A UUID as Distribution writes one (with dashes), from ours (hex) or a fresh one."""
    if not value:
        return str(uuid.uuid4())
    if len(value) == 32:  # the registry's event ids: uuid4().hex (this runs for every event: no parsing)
        return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"
    return value


def content_url(base: str | None, kind: str, repository: str, digest: str | None) -> str | None:
    if base is None or digest is None or kind not in (BLOB, MANIFEST):
        return None
    return f"{base}/v2/{repository}/{'blobs' if kind == BLOB else 'manifests'}/{digest}"


def notices_of(event, source: Source, registry_url: str | None = None, scheme: str = "http") -> list[Notice]:
    """
    The notices for one `oci_registry.observe.RegistryEvent`: one, except
    for a manifest pushed with several tags at once (one per tag, as each
    would be a push of its own to Distribution).  ``registry_url`` (else
    ``scheme`` and the request's Host) is the base of the content URLs.
    """
    target = event.target
    caller = event.caller
    repository = str(target.repository)
    request = (
        ("id", uuid_text(getattr(caller, "request_id", None))),
        ("addr", caller.addr or ""),
        ("host", caller.host or ""),
        ("method", caller.method or ""),
        ("useragent", caller.useragent or ""),
    )
    base = registry_url or (f"{scheme}://{caller.host}" if caller.host else None)
    digest = str(target.digest) if target.digest is not None else None
    deleted = event.action == DELETE
    common = {
        "timestamp": event.timestamp,
        "action": event.action,
        "kind": target.kind,
        "repository": repository,
        "digest": digest,
        "media_type": None if deleted else target.media_type,
        "size": None if deleted else target.size,
        "from_repository": str(target.from_repository) if target.from_repository is not None else None,
        "url": None if deleted else content_url(base, target.kind, repository, digest),
        "references": tuple((d.media_type, str(d.digest), d.size) for d in getattr(target, "references", ())),
        "request": tuple((k, v) for k, v in request if v or k in ("id", "method", "useragent")),
        "actor": caller.actor,
        "source_addr": source.addr,
        "instance": source.instance,
    }
    tags: list[str | None] = [str(t) for t in target.tags] or [None]
    first_id = uuid_text(event.id)
    return [Notice(id=first_id if i == 0 else str(uuid.uuid4()), tag=tag, **common) for i, tag in enumerate(tags)]


def repository_created(first: Notice) -> Notice:
    """The notice that ``first``'s repository was created (by the push ``first`` reports)."""
    return attr.evolve(
        first,
        id=str(uuid.uuid4()),
        action=CREATE,
        kind=REPOSITORY,
        digest=None,
        media_type=None,
        size=None,
        tag=None,
        from_repository=None,
        url=None,
        references=(),
    )
