"""Held events whose holds are gone: back to `pending`, and re-published (SPEC §11, §15).

A service that found an event's entity or `subject` on the holds topic acked it `held`
and did not execute it. Once no active hold covers either any more, *and* the holds
topic already says so (no change of theirs is still queued in
`retention_hold_topic_queue`), the tracker re-publishes the event unchanged — same
`event_id`, signed like a reminder — and its `held` services are `pending` again. Waiting
for the topic matters: a service reads the holds topic to its end before each batch, so
the re-published event finds the tombstone (or the smaller set) there, instead of being
acked `held` again.

Re-publication goes to the whole events topic: a service that already completed the
event acks it again from its idempotency table, without running its handler.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BindParameter, any_, bindparam, select, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import Uuid

from coordinator.evidence import audit
from coordinator.outbox.lookup import load_events
from coordinator.purge.hold_topic import active_sets, pending_entities
from coordinator.store.tables import event_status, expected_acks
from coordinator.tracking.columns import by_key, state_literal
from coordinator.tracking.snapshot import ACTOR
from schemas import AckStatus, RetentionEvent

__all__ = ["HELD", "Released", "ReleasedScan", "record_released", "released_events"]

HELD = AckStatus.HELD.value
_HELD_LITERAL = state_literal(HELD)


@dataclass(frozen=True, slots=True)
class Released:
    event: RetentionEvent
    services: tuple[str, ...]
    """The services that acked it `held`."""


def _entities(event: RetentionEvent) -> list[tuple[str, str]]:
    entities = [(event.entity_type, event.entity_id)]
    if event.subject is not None:
        subject_type, _, subject_id = event.subject.partition(":")
        entities.append((subject_type, subject_id))
    return entities


@dataclass(frozen=True, slots=True)
class ReleasedScan:
    released: list[Released]
    after: uuid.UUID | None
    """Where the next look goes on from; None once the `held` acks were read to their end."""


async def released_events(
    conn: AsyncConnection, *, now: datetime, limit: int, after: uuid.UUID | None = None
) -> ReleasedScan:
    """Lock and return, among the next `limit` events after `after` with `held` acks,
    those nothing holds any more (skipping events another tracker has locked).

    A range of the `held` acks' partial index, in event order from the cursor: the cost
    follows the held events looked at, not the acks tracked. The cursor moves past events
    still held, so a thousand of them never hide a released one behind them."""
    s, e = event_status.c, expected_acks.c
    candidates = select(e.event_id).where(e.status == _HELD_LITERAL).distinct()
    if after is not None:
        candidates = candidates.where(e.event_id > after)
    candidate_ids = list(await conn.scalars(candidates.order_by(e.event_id).limit(limit)))
    if not candidate_ids:
        return ReleasedScan([], None)
    next_after = candidate_ids[-1] if len(candidate_ids) == limit else None
    async with by_key(conn):
        ids = list(
            await conn.scalars(
                select(s.event_id)
                .where(s.event_id == any_(_ids(candidate_ids)))
                .order_by(s.event_id)
                .with_for_update(skip_locked=True)
            )
        )
    if not ids:
        return ReleasedScan([], next_after)
    events = await load_events(conn, ids)
    wanted = sorted({entity for event in events.values() for entity in _entities(event)})
    held = set(await active_sets(conn, wanted, now=now)) | await pending_entities(conn, wanted)
    free = [
        event_id
        for event_id, event in events.items()
        if not any(entity in held for entity in _entities(event))
    ]
    if not free:
        return ReleasedScan([], next_after)
    services: dict[uuid.UUID, list[str]] = defaultdict(list)
    for event_id, service in await conn.execute(
        select(e.event_id, e.service)
        .where(e.event_id == any_(_ids(free)), e.status == HELD)
        .order_by(e.event_id, e.service)
    ):
        services[event_id].append(service)
    # An event another tracker released (or an ack settled) between the candidates' read
    # and the lock has no `held` ack left: not released again, nor audited with no service.
    released = [
        Released(events[event_id], tuple(services[event_id]))
        for event_id in sorted(free)
        if services[event_id]
    ]
    return ReleasedScan(released, next_after)


async def record_released(
    conn: AsyncConnection,
    released: list[Released],
    *,
    now: datetime,
    reminder_interval: timedelta,
) -> None:
    """After the re-published events were delivered: their `held` services are `pending`
    again, the events open (reminders resume), and the audit chain says so."""
    if not released:
        return
    e, s = expected_acks.c, event_status.c
    pairs = [(r.event.event_id, service) for r in released for service in r.services]
    await conn.execute(
        update(expected_acks)
        .where(tuple_(e.event_id, e.service).in_(pairs), e.status == HELD)
        .values(status="pending")
    )
    ids = _ids([r.event.event_id for r in released])
    await conn.execute(
        update(event_status)
        .where(s.event_id == any_(ids), s.state == HELD)
        .values(state="pending", updated_at=now)
    )
    await conn.execute(
        update(event_status)
        .where(s.event_id == any_(ids))
        .values(next_reminder_at=now + reminder_interval, updated_at=now)
    )
    await audit.append(
        conn,
        [
            audit.AuditEntry(
                audit.AuditAction.HELD_EVENTS_REPUBLISHED,
                ACTOR,
                {
                    "events": [
                        {"event_id": r.event.event_id, "services": r.services} for r in released
                    ]
                },
            )
        ],
        at=now,
    )


def _ids(event_ids: list[uuid.UUID]) -> BindParameter[Any]:
    return bindparam("released_ids", event_ids, type_=ARRAY(Uuid()))
