"""Reminders and deadlines for events some expected service has not acknowledged.

A reminder re-publishes the event unchanged (same `event_id`, rebuilt from the outbox
row); the SDK's idempotency makes the repeat harmless for services that already acted.
Reminders are bounded (`max_reminders`, growing intervals); at its deadline an event that
is not complete becomes `overdue`, whatever reminders are left.

An event whose entity is under an active legal hold *now* is never re-published: its
reminder is put off by one interval, uncounted, and looked at again then (so a released
hold lets reminders resume). Status answers show such an event as `held`.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator import audit
from coordinator.outbox.events import event_from_row
from coordinator.purge.holds import event_held
from coordinator.tables import event_status, expected_acks, outbox
from coordinator.tracking.snapshot import ACTOR
from schemas import RetentionEvent

__all__ = [
    "Overdue",
    "Reminder",
    "ReminderSchedule",
    "due_reminders",
    "escalate_overdue",
    "open_acks_by_service",
    "record_reminders",
]

OPEN = ("pending", "failed")


@dataclass(frozen=True, slots=True)
class ReminderSchedule:
    interval: timedelta
    backoff: float
    max_reminders: int

    def after(self, sent: int, now: datetime) -> datetime | None:
        """When the next reminder is due once `sent` have gone out; None when none is left."""
        if sent >= self.max_reminders:
            return None
        return now + self.interval * (self.backoff**sent)


@dataclass(frozen=True, slots=True)
class Reminder:
    event: RetentionEvent
    number: int
    missing: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Overdue:
    event_id: uuid.UUID
    policy: str
    missing: tuple[str, ...]


async def _missing(
    conn: AsyncConnection, event_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, ...]]:
    missing: dict[uuid.UUID, list[str]] = defaultdict(list)
    for row in await conn.execute(
        select(expected_acks.c.event_id, expected_acks.c.service)
        .where(expected_acks.c.event_id.in_(event_ids), expected_acks.c.status.in_(OPEN))
        .order_by(expected_acks.c.event_id, expected_acks.c.service)
    ):
        missing[row.event_id].append(row.service)
    return {event_id: tuple(services) for event_id, services in missing.items()}


async def due_reminders(
    conn: AsyncConnection, *, now: datetime, limit: int, schedule: ReminderSchedule
) -> list[Reminder]:
    """Lock and return the open events whose next reminder is due (skipping locked ones).

    Events whose entity or `subject` is held now are not returned: their next reminder
    moves on by one interval, without counting as sent.
    """
    s = event_status.c
    held = event_held(outbox.c.entity_type, outbox.c.entity_id, outbox.c.subject, now)
    held = held.label("held")
    rows = (
        await conn.execute(
            select(outbox, s.reminders_sent, held)
            .join_from(event_status, outbox, outbox.c.event_id == s.event_id)
            .where(s.state != "completed", s.next_reminder_at <= now)
            .order_by(s.next_reminder_at)
            .limit(limit)
            .with_for_update(of=event_status, skip_locked=True)
        )
    ).all()
    postponed = [row.event_id for row in rows if row.held]
    if postponed:
        await conn.execute(
            update(event_status)
            .where(event_status.c.event_id.in_(postponed))
            .values(next_reminder_at=now + schedule.interval, updated_at=now)
        )
    missing = await _missing(conn, [row.event_id for row in rows if not row.held])
    return [
        Reminder(event_from_row(row), row.reminders_sent + 1, missing[row.event_id])
        for row in rows
        if row.event_id in missing
    ]


async def record_reminders(
    conn: AsyncConnection,
    reminders: Sequence[Reminder],
    *,
    now: datetime,
    schedule: ReminderSchedule,
) -> None:
    """After the reminders were delivered: count them, schedule the next, audit them."""
    if not reminders:
        return
    await audit.append(
        conn,
        [
            audit.AuditEntry(
                "reminders_sent",
                ACTOR,
                {
                    "events": [
                        {"event_id": r.event.event_id, "reminder": r.number, "missing": r.missing}
                        for r in reminders
                    ]
                },
            )
        ],
        at=now,
    )
    await conn.execute(
        update(event_status)
        .where(event_status.c.event_id == bindparam("b_event_id"))
        .values(
            reminders_sent=bindparam("b_sent"),
            next_reminder_at=bindparam("b_next"),
            updated_at=now,
        ),
        [
            {
                "b_event_id": r.event.event_id,
                "b_sent": r.number,
                "b_next": schedule.after(r.number, now),
            }
            for r in reminders
        ],
    )


async def escalate_overdue(conn: AsyncConnection, *, now: datetime, limit: int) -> list[Overdue]:
    """Mark open events past their deadline `overdue`; audit which services are missing."""
    s = event_status.c
    due = (
        select(s.event_id)
        .where(s.state.in_(OPEN), s.deadline <= now)
        .order_by(s.deadline)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    rows = (
        await conn.execute(
            update(event_status)
            .where(s.event_id.in_(due))
            .values(state="overdue", overdue_at=now, updated_at=now)
            .returning(s.event_id, s.policy)
        )
    ).all()
    if not rows:
        return []
    missing = await _missing(conn, [row.event_id for row in rows])
    overdue = [Overdue(row.event_id, row.policy, missing.get(row.event_id, ())) for row in rows]
    await audit.append(
        conn,
        [
            audit.AuditEntry(
                "events_overdue",
                ACTOR,
                {"events": [{"event_id": o.event_id, "missing": o.missing} for o in overdue]},
            )
        ],
        at=now,
    )
    return overdue


async def open_acks_by_service(conn: AsyncConnection) -> dict[str, tuple[int, int]]:
    """service → (acks still expected, of which for overdue events)."""
    e, s = expected_acks.c, event_status.c
    rows = await conn.execute(
        select(
            e.service,
            func.count(),
            func.count().filter(s.state == "overdue"),
        )
        .join_from(expected_acks, event_status, s.event_id == e.event_id)
        .where(e.status.in_(OPEN))
        .group_by(e.service)
    )
    return {row[0]: (row[1], row[2]) for row in rows}
