"""Start tracking published events: snapshot each one's expected acknowledgers.

The expected acknowledgers of an event are the services registered for its entity type
and action when it was published: first seen at or before `published_at` and not retired
by then. A service registering later does not make old events incomplete; one that
retires later does not make them complete.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Interval,
    and_,
    any_,
    bindparam,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator import audit
from coordinator.tables import event_status, expected_acks, outbox, service_registry
from coordinator.tracking.columns import event_ids_param, unnest

__all__ = ["ACTOR", "TrackedEvent", "track_events", "track_published"]

ACTOR = "tracker"


@dataclass(frozen=True, slots=True)
class TrackedEvent:
    event_id: uuid.UUID
    policy: str
    published_at: datetime
    expected: tuple[str, ...]


async def track_published(
    conn: AsyncConnection, *, now: datetime, reminder_interval: timedelta, limit: int
) -> list[TrackedEvent]:
    """Track up to `limit` outbox rows the relay has marked published but we do not follow."""
    return await _track(
        conn,
        outbox.c.published_at.is_not(None),
        now=now,
        reminder_interval=reminder_interval,
        limit=limit,
    )


async def track_events(
    conn: AsyncConnection,
    event_ids: Sequence[uuid.UUID],
    *,
    now: datetime,
    reminder_interval: timedelta,
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
        now=now,
        reminder_interval=reminder_interval,
        limit=None,
    )


async def _track(
    conn: AsyncConnection,
    which: ColumnElement[bool],
    *,
    now: datetime,
    reminder_interval: timedelta,
    limit: int | None,
) -> list[TrackedEvent]:
    published = func.coalesce(outbox.c.published_at, literal(now, event_status.c.tracked_at.type))
    interval = bindparam("reminder_interval", reminder_interval, type_=Interval)
    source = (
        select(
            outbox.c.event_id,
            outbox.c.policy,
            outbox.c.event_type,
            outbox.c.entity_type,
            outbox.c.entity_id,
            outbox.c.initiated_at,
            published,
            # The outbox deadline is initiated_at + completion_deadline; services get the
            # full completion_deadline from publication, so shift it by the relay's delay.
            published + (outbox.c.deadline - outbox.c.initiated_at),
            literal(0),
            published + interval,
            literal(now, event_status.c.tracked_at.type),
            literal(now, event_status.c.updated_at.type),
        )
        .where(which)
        .where(~exists().where(event_status.c.event_id == outbox.c.event_id))
        .order_by(outbox.c.published_at)
    )
    if limit is not None:
        source = source.limit(limit)
    inserted = (
        await conn.execute(
            pg_insert(event_status)
            .from_select(
                [
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
                    "tracked_at",
                    "updated_at",
                ],
                source,
            )
            .on_conflict_do_nothing()
            .returning(event_status.c.event_id, event_status.c.policy, event_status.c.published_at)
        )
    ).all()
    if not inserted:
        return []
    ids = [row.event_id for row in inserted]

    s, r = event_status.c, service_registry.c
    await conn.execute(
        insert(expected_acks).from_select(
            ["event_id", "service"],
            select(s.event_id, r.service)
            .distinct()
            .join_from(
                event_status,
                service_registry,
                and_(
                    r.entity_type == s.entity_type,
                    r.action == s.event_type,
                    r.first_seen <= s.published_at,
                    or_(r.retired_at.is_(None), r.retired_at > s.published_at),
                ),
            )
            .where(s.event_id == any_(event_ids_param(ids))),
        )
    )
    services: dict[uuid.UUID, list[str]] = defaultdict(list)
    for row in await conn.execute(
        select(expected_acks.c.event_id, expected_acks.c.service)
        .where(expected_acks.c.event_id == any_(event_ids_param(ids)))
        .order_by(expected_acks.c.event_id, expected_acks.c.service)
    ):
        services[row.event_id].append(row.service)

    tracked = [
        TrackedEvent(row.event_id, row.policy, row.published_at, tuple(services[row.event_id]))
        for row in inserted
    ]
    [ref] = await audit.append_refs(
        conn,
        [
            audit.AuditEntry(
                "events_tracked",
                ACTOR,
                {"events": [{"event_id": t.event_id, "expected": t.expected} for t in tracked]},
            )
        ],
        at=now,
    )
    # An event nobody handles is complete the moment it is published.
    snap = unnest(
        "snap",
        {
            "event_id": s.event_id.type,
            "expected": s.expected.type,
            "state": s.state.type,
            "completed_at": s.completed_at.type,
            "completed_audit_seq": s.completed_audit_seq.type,
        },
        [
            {
                "event_id": t.event_id,
                "expected": len(t.expected),
                "state": "pending" if t.expected else "completed",
                "completed_at": None if t.expected else t.published_at,
                "completed_audit_seq": None if t.expected else ref.seq,
            }
            for t in tracked
        ],
    )
    await conn.execute(
        update(event_status)
        .where(s.event_id == snap.c.event_id)
        .values(
            expected=snap.c.expected,
            tracked_audit_seq=ref.seq,
            state=snap.c.state,
            completed_at=snap.c.completed_at,
            completed_audit_seq=snap.c.completed_audit_seq,
        )
    )
    return tracked
