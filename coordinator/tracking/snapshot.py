"""Start tracking published events: snapshot each one's expected acknowledgers.

The expected acknowledgers of an event are the services the policy file declares for its
entity type and action (SPEC §9), as the tracker knows the declaration when it first
tracks the event. Registrations play no part: a service that deploys without a handler,
or a tombstone on the services topic, changes nobody's expectations. Once snapshotted,
an expectation ends only by a valid ack or by `retire`/`waive`.

Tracking follows the outbox's seq order: the tracker's cursor (`outbox_cursors`,
'tracked') says up to which batch it follows everything published, so a pass reads only
the batches between the cursor and the relay's watermark, never the outbox as a whole:
its cost is that of the new events, whatever the outbox holds. An ack that overtakes the
pass (the relay sent, and the service answered, before either committed) tracks its own
event through the batch index (`track_events`); the pass then finds it tracked.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Interval,
    Text,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.evidence import audit
from coordinator.outbox.lookup import (
    EVENTS,
    TRACKED,
    by_event_ids,
    published_up_to,
    tracked_up_to,
)
from coordinator.store.tables import event_status, expected_acks, outbox_batches, outbox_cursors
from coordinator.tracking.columns import unnest
from schemas import EventReason, EventType

__all__ = [
    "ACTOR",
    "Deadlines",
    "Declared",
    "Pass",
    "TrackedEvent",
    "track_events",
    "track_published",
]

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


@dataclass(frozen=True, slots=True)
class Pass:
    """One tracking pass: the events it started to follow, and whether more are waiting."""

    tracked: list[TrackedEvent]
    more: bool


async def track_published(
    conn: AsyncConnection,
    *,
    declared: Declared,
    now: datetime,
    reminder_interval: timedelta,
    limit: int,
    deadlines: Deadlines | None = None,
) -> Pass:
    """Track the published batches past the cursor, at most `limit` events of them, and
    move the cursor past the batches once all their events are tracked.

    Passes take whole batches up to `limit` events. A batch larger than that (a purge
    batch holds up to 5,000) is tracked over several passes, `limit` events each, with
    the cursor left before it until the last: each pass is a transaction of its own,
    and it holds the audit chain's lock, which every ack batch, the relay and the purge
    need too, for `limit` events at most."""
    # Most passes find nothing new: see that without the chain lock, which every ack
    # batch and the outbox writers need too, and pick the batches to take before it.
    # Read the cursor again under it: another tracker may have moved it meanwhile, and
    # only then are the batches picked again. The watermark only grows: batches
    # published before the lock stay published.
    seen, watermark = await tracked_up_to(conn), await published_up_to(conn)
    if seen >= watermark:
        return Pass([], more=False)
    up_to = await _batches_up_to(conn, seen, watermark, limit)
    head = await audit.lock_head(conn)
    cursor = await tracked_up_to(conn)
    if cursor != seen:
        up_to = await _batches_up_to(conn, cursor, await published_up_to(conn), limit)
    if up_to <= cursor:
        return Pass([], more=False)
    which = and_(EVENTS.c.seq > cursor, EVENTS.c.seq <= up_to)
    tracked = await _track(
        conn, which, head, declared, deadlines or {}, now, reminder_interval, limit=limit
    )
    if len(tracked) >= limit:
        # Perhaps not all: the next pass takes the rest. (Fewer than `limit` means all:
        # every status row is inserted under the chain's lock, so none of the untracked
        # events this pass found can have been tracked by someone else meanwhile.)
        return Pass(tracked, more=True)
    await _move_cursor(conn, up_to)
    return Pass(tracked, more=up_to < await published_up_to(conn))


async def track_events(
    conn: AsyncConnection,
    event_ids: Sequence[uuid.UUID],
    *,
    declared: Declared,
    now: datetime,
    reminder_interval: timedelta,
    deadlines: Deadlines | None = None,
) -> list[TrackedEvent]:
    """Track these events now if the outbox has them past the tracker's cursor,
    published or not.

    An ack can overtake the relay's watermark (it sent, then crashed before marking);
    the event was evidently published, so `now` stands in for the time. An event at or
    before the cursor was tracked by a pass: without a status row it was pruned, and
    tracking it again would reopen it (anyone who can write the acks topic could ask
    for that) and have its reminders re-publish it to services that forgot it.
    """
    if not event_ids:
        return []
    head = await audit.lock_head(conn)
    # Read under the chain's lock, which a pass holds until it has moved the cursor.
    which = and_(by_event_ids(event_ids), EVENTS.c.seq > await tracked_up_to(conn))
    return await _track(conn, which, head, declared, deadlines or {}, now, reminder_interval)


async def _batches_up_to(conn: AsyncConnection, cursor: int, watermark: int, limit: int) -> int:
    """The last seq of the published batches after `cursor` holding about `limit` events."""
    b = outbox_batches.c
    window = (
        select(b.seq, func.sum(b.events).over(order_by=b.seq).label("total"))
        .where(b.seq > cursor, b.seq <= watermark)
        .order_by(b.seq)
        .limit(limit)
    ).subquery()
    first = select(func.min(window.c.seq)).scalar_subquery()
    last = await conn.scalar(
        select(func.coalesce(func.max(window.c.seq), cursor)).where(
            (window.c.total <= limit) | (window.c.seq == first)
        )
    )
    return int(last if last is not None else cursor)


async def _move_cursor(conn: AsyncConnection, up_to: int) -> None:
    new = pg_insert(outbox_cursors).values(name=TRACKED, seq=up_to)
    await conn.execute(new.on_conflict_do_update(index_elements=["name"], set_={"seq": up_to}))


async def _track(
    conn: AsyncConnection,
    which: ColumnElement[bool],
    head: tuple[int, str],
    declared: Declared,
    deadlines: Deadlines,
    now: datetime,
    reminder_interval: timedelta,
    *,
    limit: int | None = None,
) -> list[TrackedEvent]:
    """Write status and expected acknowledgers of the untracked events `which` selects
    (with `limit`, of at most that many), and the events_tracked entry recording them.

    `head` is the audit chain's, read under its lock (held until commit): the entry will
    be seq head + 1, so each status row is written with that seq, its expected count and
    its state in one go, never updated, and the entry is appended onto the same head."""
    seq = head[0] + 1
    declared = list(dict.fromkeys(declared))
    # Each new event's expected acks are exactly its declared services (the insert joins
    # them, with no conflict clause to skip one): the event's list and count are read
    # from `declared` here, not from the insert's RETURNING regrouped per event in SQL
    # (a join, a sort and an aggregate over every expected ack), nor counted per event.
    expected: dict[tuple[str, str], tuple[str, ...]] = {}
    for service, entity_type, action in declared:
        expected[entity_type, action] = (*expected.get((entity_type, action), ()), service)
    services = _declared(declared, deadlines)
    src = _untracked(which, expected, now, reminder_interval, limit)
    new = _new_statuses(src, seq, now)
    rows = await conn.execute(
        select(new.c.event_id, new.c.policy, new.c.published_at, new.c.entity_type)
        .add_columns(new.c.event_type)
        .add_cte(_expected(new, src, services))
        .order_by(new.c.published_at, new.c.event_id)
    )
    # Sorted once per pair, not per event: the caller holds the chain's lock.
    names = {pair: tuple(sorted(services)) for pair, services in expected.items()}
    events = [
        TrackedEvent(event_id, policy, published_at, names.get((e, a), ()))
        for event_id, policy, published_at, e, a in rows
    ]
    if events:
        await _audit(conn, events, head, now)
    return events


def _declared(declared: Declared, deadlines: Deadlines) -> Any:
    return unnest(
        "declared",
        {"service": Text(), "entity_type": Text(), "action": Text(), "deadline": Interval()},
        [
            {"service": s, "entity_type": e, "action": a, "deadline": deadlines.get(s)}
            for s, e, a in declared
        ],
    )


def _untracked(
    which: ColumnElement[bool],
    expected_by_type: Mapping[tuple[str, str], tuple[str, ...]],
    now: datetime,
    reminder_interval: timedelta,
    limit: int | None,
) -> Any:
    """The events `which` selects that nobody tracks yet, with their tracking columns."""
    o = EVENTS.c
    published = func.coalesce(o.published_at, literal(now, event_status.c.tracked_at.type))
    interval = bindparam("reminder_interval", reminder_interval, type_=Interval)
    expected: ColumnElement[int] = (
        case(
            *(
                (and_(o.entity_type == entity_type, o.event_type == action), len(names))
                for (entity_type, action), names in expected_by_type.items()
            ),
            else_=0,
        )
        if expected_by_type
        else literal(0, Integer())
    )
    return (
        select(
            o.event_id,
            o.policy,
            o.event_type,
            o.entity_type,
            o.entity_id,
            o.initiated_at,
            o.reason,
            published.label("published_at"),
            # The outbox deadline is initiated_at + completion_deadline; services get the
            # full completion_deadline from publication, so shift it by the relay's delay.
            (published + (o.deadline - o.initiated_at)).label("deadline"),
            expected.label("expected"),
            (published + interval).label("next_reminder_at"),
        )
        .where(which)
        # Verify events ask, they don't delete: coordinator/copies/verification/ follows them.
        .where(o.event_type != EventType.VERIFY.value)
        .where(~exists().where(event_status.c.event_id == o.event_id))
        .limit(limit)
        # A CTE, computed once: the expected-ack insert joins it again for `reason` on the
        # computed event id, which as a subquery was re-expanded per new status row
        # (a nested loop: quadratic in the events of a pass).
        .cte("src")
    )


def _new_statuses(src: Any, seq: int, now: datetime) -> Any:
    """Insert their status rows; a CTE returning what it inserted."""
    # Only a policy file edited after the event was written leaves it with nobody: the
    # load check refuses fan_out policies nobody handles.
    unhandled = src.c.expected == 0
    return (
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


def _expected(new: Any, src: Any, services: Any) -> Any:
    """Insert one expected ack per declared service of each new event; a CTE."""
    return (
        insert(expected_acks)
        .from_select(
            ["event_id", "service", "deadline"],
            # A service's own completion_deadline overrides the policy's (SPEC §9) and
            # counts from publication, like the event's; NULL stands for the event's
            # deadline. An erasure request's events keep the request's legal due date for
            # everyone: a slower service is never on time after it.
            select(
                new.c.event_id,
                services.c.service,
                case(
                    (
                        src.c.reason == EventReason.RETENTION_POLICY.value,
                        new.c.published_at + services.c.deadline,
                    )
                ),
            )
            .join_from(
                new,
                services,
                and_(
                    services.c.entity_type == new.c.entity_type,
                    services.c.action == new.c.event_type,
                ),
            )
            .join(src, src.c.event_id == new.c.event_id),
        )
        .cte("snapshot")
    )


async def _audit(
    conn: AsyncConnection, events: list[TrackedEvent], head: tuple[int, str], now: datetime
) -> None:
    # Built as the JSON it is stored as (ids as text, lists), so `prepare` needn't round
    # trip a thousand events through JSON to get there.
    ids = audit.id_texts([t.event_id for t in events])
    data = {
        "events": [
            {"event_id": i, "expected": list(t.expected)} for i, t in zip(ids, events, strict=True)
        ]
    }
    entry = audit.AuditEntry(audit.AuditAction.EVENTS_TRACKED, ACTOR, data)
    await audit.append_onto(conn, head, audit.prepare([entry], at=now, json_native=True))


# Columns copied from the expanded outbox row (published_at, deadline: as the tracker sees them).
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
