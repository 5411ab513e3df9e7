"""
What ``ociregistry events`` shows and does, on the storage directly (while
the registry serves, or not): each endpoint's outbox (events waiting, the
oldest one's age, dead letters, which process delivers), and putting dead
letters back in the queue.  Counting reads only the listings: a batch's
name says how many events it holds.
"""

from __future__ import annotations

import time
import uuid

import attr

from .config import NotificationsConfig
from .outbox import Lease, Outbox, endpoints_in


@attr.s(auto_attribs=True, frozen=True)
class OutboxReport:
    endpoint: str
    configured: bool
    pending: int  # events waiting
    pending_batches: int
    oldest_age: float | None  # seconds since the oldest waiting batch was written
    dead: int  # dead letters (events)
    dead_batches: int
    delivered_by: str | None  # "host pid N" of the lease holder, while its lease runs
    lease_until: float | None

    def to_json(self) -> dict:
        return attr.asdict(self)


async def outbox_reports(storage, settings: NotificationsConfig | None, clock=time.time) -> list[OutboxReport]:
    """One report per endpoint configured or with an outbox in storage, configured ones first."""
    configured = [e.name for e in settings.endpoints] if settings is not None else []
    names = configured + [n for n in await endpoints_in(storage) if n not in configured]
    reports = []
    now = clock()
    for name in names:
        outbox = Outbox(storage, name, "cli")
        pending = await outbox.pending()
        dead = await outbox.dead()
        current = await Lease(storage, name, "cli", 0, None, clock, settle=0).current()
        holder = until = None
        if current is not None and current[1].until > now:
            info = current[1]
            holder, until = f"{info.host} pid {info.pid}", info.until
        reports.append(
            OutboxReport(
                endpoint=name,
                configured=name in configured,
                pending=sum(b.count for b in pending),
                pending_batches=len(pending),
                oldest_age=max(0.0, now - pending[0].written_at) if pending else None,
                dead=sum(b.count for b in dead),
                dead_batches=len(dead),
                delivered_by=holder,
                lease_until=until,
            )
        )
    return reports


async def resend_dead_letters(storage, endpoint: str, clock=time.time) -> int:
    """Put every dead letter of ``endpoint`` back in its queue; the number of events."""
    outbox = Outbox(storage, endpoint, uuid.uuid4().hex[:16], clock)
    moved = 0
    for name in await outbox.dead():
        if await outbox.resend(name) is not None:
            moved += name.count
    return moved


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
