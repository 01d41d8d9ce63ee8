"""Reminders and deadlines for events some expected service has not acknowledged.

A reminder re-publishes the event unchanged (same `event_id`, rebuilt from the outbox
row); the SDK's idempotency makes the repeat harmless for services that already acted.
The first `max_reminders` come at growing intervals; after them reminders never stop
silently but slow to one every `slow_interval`, until the event completes or no expected
service is left open (a waived ack stops them). An event that is not complete becomes
`overdue` once one of its open acks is past that ack's deadline (`ack_deadline`: the
service's declared `completion_deadline` when it sets one, else the event's), and stays so
while the slow reminders go on.

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
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    and_,
    any_,
    bindparam,
    exists,
    func,
    select,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Select

from coordinator.evidence import audit
from coordinator.outbox.events import event_from_row
from coordinator.outbox.lookup import EVENTS, joined_on
from coordinator.purge.holds import event_held
from coordinator.store.tables import event_status, expected_acks
from coordinator.tracking.columns import by_key, event_ids_param, state_literal
from coordinator.tracking.snapshot import ACTOR
from schemas import RetentionEvent

__all__ = [
    "Overdue",
    "Reminder",
    "ReminderSchedule",
    "ack_deadline",
    "ack_late",
    "due_reminders",
    "escalate_overdue",
    "open_acks_by_service",
    "open_acks_query",
    "overdue_acks_query",
    "record_reminders",
]

OPEN = ("pending", "failed")
_OPEN_LITERALS = [state_literal(s) for s in OPEN]


@dataclass(frozen=True, slots=True)
class ReminderSchedule:
    interval: timedelta
    backoff: float
    max_reminders: int
    slow_interval: timedelta

    def after(self, sent: int, now: datetime) -> datetime:
        """When the next reminder is due once `sent` have gone out."""
        if sent >= self.max_reminders:
            return now + self.slow_interval
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


def ack_deadline() -> ColumnElement[datetime]:
    """When one service's ack of one event is due (over expected_acks joined to
    event_status): the service's own deadline, fixed at the snapshot from its declared
    `completion_deadline` and counted from publication, or else the event's deadline."""
    return func.coalesce(expected_acks.c.deadline, event_status.c.deadline)


def ack_late(now: datetime) -> ColumnElement[bool]:
    """An expected ack still open past its own deadline: that service is overdue."""
    return and_(expected_acks.c.status.in_(OPEN), ack_deadline() <= now)


async def _missing(
    conn: AsyncConnection, event_ids: Sequence[uuid.UUID], *, late_at: datetime | None = None
) -> dict[uuid.UUID, tuple[str, ...]]:
    """The services each event still waits for; with `late_at`, only those past their own
    deadline then.

    Every expected row of the events is read by its key and the open ones kept here: a
    status filter in the statement lets the planner read the open acks' partial index
    whole instead, which on stale statistics it has (tests/integration/
    test_housekeeping_plans.py)."""
    e = expected_acks.c
    late = (ack_deadline() <= late_at) if late_at is not None else true()
    query = (
        select(e.event_id, e.service, e.status, late.label("late"))
        .join_from(expected_acks, event_status, event_status.c.event_id == e.event_id)
        .where(e.event_id == any_(event_ids_param(list(event_ids))))
        .order_by(e.event_id, e.service)
    )
    missing: dict[uuid.UUID, list[str]] = defaultdict(list)
    for row in await conn.execute(query):
        if row.status in OPEN and row.late:
            missing[row.event_id].append(row.service)
    return {event_id: tuple(services) for event_id, services in missing.items()}


async def due_reminders(
    conn: AsyncConnection, *, now: datetime, limit: int, schedule: ReminderSchedule
) -> list[Reminder]:
    """Lock and return the open events whose next reminder is due (skipping locked ones).

    Events whose entity or `subject` is held now are not returned: their next reminder
    moves on by one interval, without counting as sent. Events with no expected service
    left open are not returned either, and are taken off the schedule.
    """
    s = event_status.c
    held = event_held(EVENTS.c.entity_type, EVENTS.c.entity_id, EVENTS.c.subject, now)
    held = held.label("held")
    rows = (
        await conn.execute(
            select(EVENTS, s.reminders_sent, held)
            .join_from(event_status, EVENTS, joined_on(s.event_id))
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
    # Without this an event whose open acks were all waived would be picked again on every
    # pass, and `limit` of them would starve the rest.
    settled = [row.event_id for row in rows if not row.held and row.event_id not in missing]
    if settled:
        await conn.execute(
            update(event_status)
            .where(event_status.c.event_id.in_(settled))
            .values(next_reminder_at=None, updated_at=now)
        )
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
                audit.AuditAction.REMINDERS_SENT,
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
    """Mark open events `overdue` once an open ack is past its own deadline; audit which
    services are late.

    Candidates come from two index ranges, read one after the other (an OR of the two
    would read every open event): open events past the event's deadline (their partial
    index on `deadline`), then events holding an open ack past a deadline of its own
    (that ack's partial index). Either is kept only if some open ack is late by its own
    deadline: a service declared with a longer one is not late at the event's."""
    s, e = event_status.c, expected_acks.c
    open_event = s.state.in_(_OPEN_LITERALS)
    late = exists().where(e.event_id == s.event_id, ack_late(now))
    own_late = select(e.event_id).where(
        e.deadline.is_not(None), e.deadline <= now, e.status.in_(_OPEN_LITERALS)
    )
    ranges = (
        select(s.event_id).where(open_event, s.deadline <= now, late),
        select(s.event_id).where(open_event, s.event_id.in_(own_late), late),
    )
    rows: list[Row[Any]] = []
    async with by_key(conn, correlated=True):
        for candidates in ranges:
            if len(rows) >= limit:
                break
            due = (
                candidates.order_by(s.deadline)
                .limit(limit - len(rows))
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            rows += (
                await conn.execute(
                    update(event_status)
                    .where(s.event_id.in_(due))
                    .values(state="overdue", overdue_at=now, updated_at=now)
                    .returning(s.event_id, s.policy)
                )
            ).all()
        if not rows:
            return []
        missing = await _missing(conn, [row.event_id for row in rows], late_at=now)
    overdue = [Overdue(row.event_id, row.policy, missing.get(row.event_id, ())) for row in rows]
    await audit.append(
        conn,
        [
            audit.AuditEntry(
                audit.AuditAction.EVENTS_OVERDUE,
                ACTOR,
                {"events": [{"event_id": o.event_id, "missing": o.missing} for o in overdue]},
            )
        ],
        at=now,
    )
    return overdue


def open_acks_query() -> Select[str, int]:
    """Open expected acks per service: an index-only scan of their partial index."""
    e = expected_acks.c
    return select(e.service, func.count()).where(e.status.in_(OPEN)).group_by(e.service)


def overdue_acks_query(now: datetime) -> Select[str, int]:
    """Late acks of overdue events per service, from the overdue events' partial index."""
    e, s = expected_acks.c, event_status.c
    return (
        select(e.service, func.count())
        .join_from(event_status, expected_acks, e.event_id == s.event_id)
        .where(s.state == "overdue", ack_late(now))
        .group_by(e.service)
    )


async def open_acks_by_service(
    conn: AsyncConnection, *, now: datetime
) -> dict[str, tuple[int, int]]:
    """service → (acks still expected, of which past their own deadline on overdue events).

    Two index reads and no join over the open backlog (tests/integration/
    test_tracker_gauges.py checks both plans): the pending count reads only the open
    acks' index entries, the overdue count starts from the few overdue events.
    """
    pending = {row[0]: row[1] for row in await conn.execute(open_acks_query())}
    overdue = {row[0]: row[1] for row in await conn.execute(overdue_acks_query(now))}
    return {service: (count, overdue.get(service, 0)) for service, count in pending.items()}
