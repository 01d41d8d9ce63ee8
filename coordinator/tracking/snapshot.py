"""Start tracking published events: snapshot each one's expected acknowledgers.

The expected acknowledgers of an event are the services the policy file declares for its
entity type and action (SPEC §9), as the tracker knows the declaration when it first
tracks the event. Registrations play no part: a service that deploys without a handler,
or a tombstone on the services topic, changes nobody's expectations. Once snapshotted,
an expectation ends only by a valid ack or by `retire`/`waive`.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Interval,
    Text,
    and_,
    any_,
    bindparam,
    case,
    distinct,
    exists,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator import audit
from coordinator.store.tables import event_status, expected_acks, outbox
from coordinator.tracking.columns import event_ids_param, unnest
from schemas import EventReason

__all__ = ["ACTOR", "Deadlines", "Declared", "TrackedEvent", "track_events", "track_published"]

ACTOR = "tracker"


Declared = Sequence[tuple[str, str, str]]
"""(service, entity type, action) for every pair each declared service handles."""

Deadlines = Mapping[str, timedelta]
"""service → its declared `completion_deadline`, for the services that set one."""


@dataclass(frozen=True, slots=True)
class TrackedEvent:
    event_id: uuid.UUID
    policy: str
    published_at: datetime
    expected: tuple[str, ...]


async def track_published(
    conn: AsyncConnection,
    *,
    declared: Declared,
    now: datetime,
    reminder_interval: timedelta,
    limit: int,
    deadlines: Deadlines | None = None,
) -> list[TrackedEvent]:
    """Track up to `limit` outbox rows the relay has marked published but we do not follow."""
    return await _track(
        conn,
        outbox.c.published_at.is_not(None),
        declared=declared,
        deadlines=deadlines or {},
        now=now,
        reminder_interval=reminder_interval,
        limit=limit,
    )


async def track_events(
    conn: AsyncConnection,
    event_ids: Sequence[uuid.UUID],
    *,
    declared: Declared,
    now: datetime,
    reminder_interval: timedelta,
    deadlines: Deadlines | None = None,
) -> list[TrackedEvent]:
    """Track these events now if the outbox has them, published or not.

    An ack can overtake the relay's `published_at` update (it sent, then crashed before
    marking); the event was evidently published, so `now` stands in for the time.
    """
    if not event_ids:
        return []
    return await _track(
        conn,
        outbox.c.event_id == any_(event_ids_param(event_ids)),
        declared=declared,
        deadlines=deadlines or {},
        now=now,
        reminder_interval=reminder_interval,
        limit=None,
    )


async def _track(
    conn: AsyncConnection,
    which: ColumnElement[bool],
    *,
    declared: Declared,
    deadlines: Deadlines,
    now: datetime,
    reminder_interval: timedelta,
    limit: int | None,
) -> list[TrackedEvent]:
    # The events_tracked entry comes next in the chain: with it locked, each status row is
    # written with that seq, its expected count and its state in one go, never updated.
    last_seq, _ = await audit.lock_head(conn)
    seq = last_seq + 1
    o = outbox.c
    d = unnest(
        "declared",
        {"service": Text(), "entity_type": Text(), "action": Text(), "deadline": Interval()},
        [
            {"service": s, "entity_type": e, "action": a, "deadline": deadlines.get(s)}
            for s, e, a in declared
        ],
    )
    published = func.coalesce(o.published_at, literal(now, event_status.c.tracked_at.type))
    interval = bindparam("reminder_interval", reminder_interval, type_=Interval)
    expected = (
        select(func.count(distinct(d.c.service)))
        .where(d.c.entity_type == o.entity_type, d.c.action == o.event_type)
        .scalar_subquery()
    )
    source = (
        select(
            o.event_id,
            o.policy,
            o.event_type,
            o.entity_type,
            o.entity_id,
            o.initiated_at,
            published.label("published_at"),
            # The outbox deadline is initiated_at + completion_deadline; services get the
            # full completion_deadline from publication, so shift it by the relay's delay.
            (published + (o.deadline - o.initiated_at)).label("deadline"),
            expected.label("expected"),
            (published + interval).label("next_reminder_at"),
        )
        .where(which)
        .where(~exists().where(event_status.c.event_id == o.event_id))
        .order_by(o.published_at)
    )
    if limit is not None:
        source = source.limit(limit)
    src = source.subquery("src")
    # Only a policy file edited after the event was written leaves it with nobody: the
    # load check refuses fan_out policies nobody handles.
    unhandled = src.c.expected == 0
    new = (
        pg_insert(event_status)
        .from_select(
            [*_COPIED, *_SET_HERE],
            select(
                *(src.c[name] for name in _COPIED),
                literal(now, event_status.c.tracked_at.type),
                literal(now, event_status.c.updated_at.type),
                literal(seq, BigInteger()),
                case((unhandled, "completed"), else_="pending"),
                case((unhandled, src.c.published_at)),
                case((unhandled, literal(seq, BigInteger()))),
            ),
        )
        .on_conflict_do_nothing()
        .returning(event_status.c.event_id, event_status.c.policy, event_status.c.published_at)
        .returning(event_status.c.entity_type, event_status.c.event_type)
        .cte("new")
    )
    snapshot = (
        insert(expected_acks)
        .from_select(
            ["event_id", "service", "deadline"],
            # A service's own completion_deadline overrides the policy's (SPEC §9) and
            # counts from publication, like the event's; NULL stands for the event's
            # deadline. An erasure request's events keep the request's legal due date for
            # everyone: a slower service is never on time after it.
            select(
                new.c.event_id,
                d.c.service,
                case(
                    (
                        o.reason == EventReason.RETENTION_POLICY.value,
                        new.c.published_at + d.c.deadline,
                    )
                ),
            )
            .distinct()
            .join_from(
                new,
                d,
                and_(d.c.entity_type == new.c.entity_type, d.c.action == new.c.event_type),
            )
            .join(outbox, o.event_id == new.c.event_id),
        )
        .returning(expected_acks.c.event_id, expected_acks.c.service)
        .cte("snapshot")
    )
    rows = await conn.execute(
        select(new.c.event_id, new.c.policy, new.c.published_at, snapshot.c.service)
        .outerjoin(snapshot, snapshot.c.event_id == new.c.event_id)
        .order_by(new.c.published_at, new.c.event_id, snapshot.c.service)
    )
    tracked: dict[uuid.UUID, TrackedEvent] = {}
    services: dict[uuid.UUID, list[str]] = defaultdict(list)
    for row in rows:
        tracked.setdefault(
            row.event_id, TrackedEvent(row.event_id, row.policy, row.published_at, ())
        )
        if row.service is not None:
            services[row.event_id].append(row.service)
    if not tracked:
        return []
    events = [
        TrackedEvent(t.event_id, t.policy, t.published_at, tuple(services[t.event_id]))
        for t in tracked.values()
    ]
    [ref] = await audit.append_refs(
        conn,
        [
            audit.AuditEntry(
                audit.AuditAction.EVENTS_TRACKED,
                ACTOR,
                {"events": [{"event_id": t.event_id, "expected": t.expected} for t in events]},
            )
        ],
        at=now,
    )
    if ref.seq != seq:
        raise RuntimeError(f"events_tracked landed at seq {ref.seq}, not {seq}")
    return events


# Columns copied from the outbox row (published_at, deadline: as the tracker sees them).
_COPIED = (
    "event_id",
    "policy",
    "event_type",
    "entity_type",
    "entity_id",
    "initiated_at",
    "published_at",
    "deadline",
    "expected",
    "next_reminder_at",
)


_SET_HERE = (
    "tracked_at",
    "updated_at",
    "tracked_audit_seq",
    "state",
    "completed_at",
    "completed_audit_seq",
)
