"""
What an endpoint receives: the body for a list of notices in its format,
its Content-Type, and the signature header.

- ``distribution``: CNCF Distribution's envelope, ``{"events": [...]}``,
  each event with the fields, names and omissions Distribution's have
  (``target`` with ``mediaType``, ``size``, ``digest``, ``length``,
  ``repository``, ``fromRepository``, ``url``, ``tag``, ``references``;
  ``request``, ``actor``, ``source``), as ``application/vnd.docker.
  distribution.events.v2+json`` (Distribution 3's type; 2.x sends the same
  body as ``...events.v1+json``).
- ``cloudevents``: CloudEvents 1.0 over HTTP in structured mode, one event
  per request (``application/cloudevents+json``), or a JSON array of them
  (``application/cloudevents-batch+json``) for a batch: pull events, and
  any events when the endpoint's ``batch`` is above 1.
  Types: ``ociregistry.<kind>.<pushed|pulled|mounted|deleted|created>``.
- The signature, with an endpoint ``secret``: ``Ociregistry-Signature:
  t=<unix time>,sha256=<hex>``, the HMAC-SHA256 under the secret of the
  ASCII ``t`` value, a dot, and the body's bytes (docs/notifications.md has
  a receiver that checks it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from collections.abc import Sequence

from .config import CLOUDEVENTS, DISTRIBUTION
from .notice import BLOB, CREATE, Notice

DISTRIBUTION_MEDIA_TYPE = "application/vnd.docker.distribution.events.v2+json"
CLOUDEVENT_MEDIA_TYPE = "application/cloudevents+json; charset=utf-8"
CLOUDEVENT_BATCH_MEDIA_TYPE = "application/cloudevents-batch+json; charset=utf-8"
SIGNATURE_HEADER = "Ociregistry-Signature"
CLOUDEVENT_TYPE_PREFIX = "ociregistry"
_PAST = {"push": "pushed", "pull": "pulled", "mount": "mounted", "delete": "deleted", CREATE: "created"}


def rfc3339(timestamp: float) -> str:
    """UTC, with the fraction's trailing zeros dropped, as Go's RFC3339Nano writes a time."""
    fraction, whole = math.modf(timestamp)  # rounded to the microsecond as datetime.fromtimestamp does
    seconds, micro = int(whole), round(fraction * 1e6)
    if micro >= 1_000_000:
        seconds, micro = seconds + 1, micro - 1_000_000
    elif micro < 0:
        seconds, micro = seconds - 1, micro + 1_000_000
    if seconds != _last_second[0]:  # the date and time of one second, made once (events come many a second)
        _last_second[:] = [seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))]
    text = _last_second[1]
    return f"{text}.{f'{micro:06d}'.rstrip('0')}Z" if micro else f"{text}Z"


_last_second: list = [None, ""]


def _descriptor(media_type: str, digest: str, size: int) -> dict:
    return {"mediaType": media_type, "size": size, "digest": digest}


def distribution_event(notice: Notice, references: bool = False) -> dict:
    """
    One event as Distribution writes it (a ``create`` notice has none: see
    `encode`); ``references``: with a pushed manifest's references, as
    Distribution's ``includereferences`` does.
    """
    target: dict = {}
    if notice.media_type is not None:
        target["mediaType"] = notice.media_type
    if notice.size is not None:
        target["size"] = notice.size
    if notice.digest is not None:
        target["digest"] = notice.digest
    if notice.size is not None:
        target["length"] = notice.size
    target["repository"] = notice.repository
    for key, value in (("fromRepository", notice.from_repository), ("url", notice.url), ("tag", notice.tag)):
        if value is not None:
            target[key] = value
    if references and notice.references:
        target["references"] = [_descriptor(*r) for r in notice.references]
    request = dict(notice.request)
    source = {k: v for k, v in (("addr", notice.source_addr), ("instanceID", notice.instance)) if v}
    return {
        "id": notice.id,
        "timestamp": rfc3339(notice.timestamp),
        "action": notice.action,
        "target": target,
        "request": {k: request[k] for k in ("id", "addr", "host", "method", "useragent") if k in request},
        "actor": {"name": notice.actor} if notice.actor else {},
        "source": source,
    }


def cloudevent_type(notice: Notice) -> str:
    return f"{CLOUDEVENT_TYPE_PREFIX}.{notice.kind}.{_PAST[notice.action]}"


def cloudevent(notice: Notice, source: str | None = None, references: bool = False) -> dict:
    """
    One CloudEvent (structured mode).  ``source``: the registry's URL, by
    default ``//hostname:port`` of the process that recorded the event;
    ``references``: with a pushed manifest's references.
    """
    if notice.tag is not None and notice.kind != BLOB:
        subject = f"{notice.repository}:{notice.tag}"
    elif notice.digest is not None:
        subject = f"{notice.repository}@{notice.digest}"
    else:
        subject = notice.repository
    data: dict = {"repository": notice.repository}
    notice.add_target_fields(data)
    if references and notice.references:
        data["references"] = [_descriptor(*r) for r in notice.references]
    data["actor"] = {"name": notice.actor} if notice.actor else {}
    data["request"] = dict(notice.request)
    return {
        "specversion": "1.0",
        "id": notice.id,
        "source": source or f"//{notice.source_addr or 'ociregistry'}",
        "type": cloudevent_type(notice),
        "subject": subject,
        "time": rfc3339(notice.timestamp),
        "datacontenttype": "application/json",
        "data": data,
    }


def encode(
    format: str, notices: Sequence[Notice], source: str | None = None, references: bool = False
) -> tuple[str, bytes]:
    """``(content type, body)`` for ``notices`` in ``format``; ``create`` notices are CloudEvents only."""
    if format == DISTRIBUTION:
        events = [distribution_event(n, references) for n in notices if n.action != CREATE]
        return DISTRIBUTION_MEDIA_TYPE, _dump({"events": events})
    if format == CLOUDEVENTS:
        if len(notices) == 1:
            return CLOUDEVENT_MEDIA_TYPE, _dump(cloudevent(notices[0], source, references))
        return CLOUDEVENT_BATCH_MEDIA_TYPE, _dump([cloudevent(n, source, references) for n in notices])
    raise ValueError(f"unknown format {format!r}")


def sendable(format: str, notice: Notice) -> bool:
    """Whether ``format`` has an event for ``notice`` (Distribution has none for a repository's creation)."""
    return format == CLOUDEVENTS or notice.action != CREATE


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode  # one encoder, not one per body


def _dump(document) -> bytes:
    return _encode(document).encode()


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Ociregistry-Signature`` header's value for ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},sha256={mac}"


def verify(secret: str, body: bytes, header: str | None, now: float, tolerance: float = 300.0) -> bool:
    """
    Whether ``header`` signs ``body`` under ``secret`` and was made within
    ``tolerance`` seconds of ``now``: what a receiver checks (this one is
    for the tests and for Python receivers; docs/notifications.md shows it).
    """
    if not header:
        return False
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, body, timestamp).split("sha256=", 1)[1]
    return hmac.compare_digest(expected, fields.get("sha256", ""))
