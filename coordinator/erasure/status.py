"""Status moves that need no one: `in_progress` → `completed` once every event of the
request is completed at every expected service (coordinator/tracking); `in_progress` →
`on_hold` when a service acked one of its events `held` (a hold that arrived after the
events were published); and the list of `on_hold` requests whose holds are all gone, to
be executed again."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, not_, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.erasure.requests import Status
from coordinator.evidence.audit import AuditAction, AuditEntry, append
from coordinator.outbox.lookup import EVENTS
from coordinator.store.tables import (
    erasure_requests,
    event_status,
    legal_hold_entities,
    legal_holds,
    runs,
)

__all__ = ["ACTOR", "complete_acknowledged", "held_downstream", "released_holds", "unfinished"]

ACTOR = "erasure"


async def complete_acknowledged(conn: AsyncConnection, *, now: datetime) -> list[uuid.UUID]:
    """Mark completed the in-progress requests whose every event is completed.

    An event not yet tracked (unpublished, or published but not yet snapshotted) counts
    as open, so a request never completes ahead of its own fan-out.
    """
    r = erasure_requests.c
    events = EVENTS.outerjoin(event_status, event_status.c.event_id == EVENTS.c.event_id)
    still_open = exists(
        select(1)
        .select_from(events)
        .where(
            EVENTS.c.request_id == r.id,
            or_(event_status.c.state.is_(None), event_status.c.state != "completed"),
        )
    )
    finished = (
        select(func.max(event_status.c.completed_at))
        .select_from(events)
        .where(EVENTS.c.request_id == r.id)
        .scalar_subquery()
    )
    completed = (
        await conn.execute(
            update(erasure_requests)
            .where(r.status == Status.IN_PROGRESS.value, not_(still_open))
            .values(status=Status.COMPLETED.value, completed_at=func.coalesce(finished, now))
            .returning(r.id, r.completed_at)
        )
    ).all()
    if completed:
        await append(
            conn,
            [
                AuditEntry(
                    AuditAction.ERASURE_COMPLETE,
                    ACTOR,
                    {"request_id": row.id, "completed_at": row.completed_at},
                )
                for row in completed
            ],
            at=now,
        )
    return [row.id for row in completed]


async def held_downstream(conn: AsyncConnection, *, now: datetime) -> list[uuid.UUID]:
    """Put `on_hold` the in-progress requests some of whose events a service acked `held`,
    naming the active holds on the subject or on those events' entities (SPEC §11: a hold
    applies; the rest is done). Once they are released, `released_holds` lists the
    request for execution again, and the tracker re-publishes the held events."""
    r, o, s = erasure_requests.c, EVENTS.c, event_status.c
    held_events = (
        select(o.request_id, o.entity_type, o.entity_id)
        .join_from(EVENTS, event_status, s.event_id == o.event_id)
        .where(s.state == "held", o.request_id.in_(
            select(r.id).where(r.status == Status.IN_PROGRESS.value)
        ))
    )  # fmt: skip
    covered: dict[uuid.UUID, set[tuple[str, str]]] = {}
    for request_id, entity_type, entity_id in await conn.execute(held_events):
        covered.setdefault(request_id, set()).add((entity_type, entity_id))
    if not covered:
        return []
    subjects = await conn.execute(
        select(r.id, r.subject_type, r.subject_id).where(r.id.in_(list(covered)))
    )
    for request_id, subject_type, subject_id in subjects:
        covered[request_id].add((subject_type, subject_id))
    e, h = legal_hold_entities.c, legal_holds.c
    moved = []
    for request_id, entities in sorted(covered.items()):
        holds = list(
            (
                await conn.execute(
                    select(h.id)
                    .distinct()
                    .join_from(legal_hold_entities, legal_holds, h.id == e.hold_id)
                    .where(
                        tuple_(e.entity_type, e.entity_id).in_(sorted(entities)),
                        h.released_at.is_(None),
                        or_(h.expires_at.is_(None), h.expires_at > now),
                    )
                    .order_by(h.id)
                )
            ).scalars()
        )
        if not holds:
            continue  # released already: the tracker re-publishes the events
        updated = await conn.execute(
            update(erasure_requests)
            .where(r.id == request_id, r.status == Status.IN_PROGRESS.value)
            .values(status=Status.ON_HOLD.value, holds=holds)
            .returning(r.id)
        )
        if updated.first() is not None:
            moved.append(request_id)
            await append(
                conn,
                [
                    AuditEntry(
                        AuditAction.ERASURE_HELD_DOWNSTREAM,
                        ACTOR,
                        {"request_id": request_id, "holds": holds},
                    )
                ],
                at=now,
            )
    return moved


async def released_holds(conn: AsyncConnection, *, now: datetime) -> list[uuid.UUID]:
    """On-hold requests none of whose holds is active any more: ready to execute again."""
    r = erasure_requests.c
    active_named = exists(
        select(1).where(
            r.holds.contains(func.to_jsonb(legal_holds.c.id)),
            legal_holds.c.released_at.is_(None),
            or_(legal_holds.c.expires_at.is_(None), legal_holds.c.expires_at > now),
        )
    )
    rows = await conn.execute(
        select(r.id).where(and_(r.status == Status.ON_HOLD.value, not_(active_named)))
    )
    return list(rows.scalars())


async def unfinished(conn: AsyncConnection, *, now: datetime, after: timedelta) -> list[uuid.UUID]:
    """Requests still `received` longer than `after` after they were filed whose
    execution never started or never finished (a crash). One that finished with errors
    is not retried in a loop: filing it again with its reference retries it."""
    r = erasure_requests.c
    rows = await conn.execute(
        select(r.id)
        .select_from(erasure_requests.outerjoin(runs, runs.c.id == r.run_id))
        .where(
            r.status == Status.RECEIVED.value,
            r.created_at < now - after,
            or_(r.run_id.is_(None), runs.c.finished_at.is_(None)),
        )
    )
    return list(rows.scalars())
