"""Enqueue verify events: on demand for one entity, or a sample of completed deletions.

A verify event goes through the outbox and the relay like every event, so it is signed
the same way; the tracker does not snapshot it (it is not a deletion to complete). Who is
asked is fixed here: the services that acked one of the entity's delete events done.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, insert, literal, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.evidence import audit
from coordinator.outbox.events import event_id as batch_event_id
from coordinator.outbox.write import EventBatch, enqueue
from coordinator.policy.model import Policy
from coordinator.store.tables import (
    event_status,
    expected_acks,
    outbox_batches,
    verifications,
    verify_answers,
    verify_marks,
)
from schemas import EventType

__all__ = [
    "ANSWER_WINDOW",
    "LEGAL_BASIS",
    "ON_DEMAND",
    "SAMPLER",
    "SAMPLE_LOCK",
    "CompletedDeletion",
    "Requested",
    "completed_deletions",
    "request_verify",
    "sample_all",
    "sample_policy",
]

SAMPLER = "verify-sampler"
"""The actor recorded for sampled verify events."""
ON_DEMAND = "on_demand"
"""`policy` of a verify event asked for by an operator rather than a policy's sample."""
LEGAL_BASIS = "Verification of a completed deletion"
ANSWER_WINDOW = timedelta(days=1)
"""The verify event's `deadline`: when its answers are expected (nothing escalates)."""
ASKED_AFTER = ("completed", "not_found", "still_present")
"""The acknowledgements whose services are asked: those that said the data was gone."""
_SAMPLE_CHUNK = 1000
SAMPLE_LOCK = 0x7665726966790001
"""pg_advisory_xact_lock key of the sampler ("verify" + 1)."""


@dataclass(frozen=True, slots=True)
class CompletedDeletion:
    event_id: uuid.UUID
    entity_type: str
    entity_id: str
    completed_at: datetime


@dataclass(frozen=True, slots=True)
class Requested:
    event_id: uuid.UUID
    entity_type: str
    entity_id: str
    services: tuple[str, ...]


async def completed_deletions(
    conn: AsyncConnection,
    *,
    policy: str,
    after: tuple[datetime, uuid.UUID | None] | None,
    until: datetime,
    limit: int,
) -> list[CompletedDeletion]:
    """The one lookup of past deletions: a policy's delete events completed after the
    keyset `after` (completion time, event id) and by `until`, in that order. It reads
    `limit` rows of ix_retention_event_status_completed_deletions, whatever the table holds."""
    s = event_status.c
    query = (
        select(s.event_id, s.entity_type, s.entity_id, s.completed_at)
        .where(
            s.policy == policy,
            s.event_type == EventType.DELETE.value,
            s.state == "completed",
            s.completed_at <= until,
        )
        .order_by(s.completed_at, s.event_id)
        .limit(limit)
    )
    if after is not None:
        at, event_id = after
        query = query.where(
            s.completed_at > at
            if event_id is None
            else tuple_(s.completed_at, s.event_id)
            > tuple_(literal(at, s.completed_at.type), literal(event_id, s.event_id.type))
        )
    return [CompletedDeletion(*row) for row in await conn.execute(query)]


async def _services_to_ask(conn: AsyncConnection, entity_type: str, entity_id: str) -> list[str]:
    s, e = event_status.c, expected_acks.c
    rows = await conn.execute(
        select(e.service)
        .distinct()
        .join_from(expected_acks, event_status, s.event_id == e.event_id)
        .where(
            s.entity_type == entity_type,
            s.entity_id == entity_id,
            s.event_type == EventType.DELETE.value,
            e.status.in_(ASKED_AFTER),
        )
        .order_by(e.service)
    )
    return list(rows.scalars())


async def request_verify(
    conn: AsyncConnection,
    entity_type: str,
    entity_id: str,
    *,
    policy: str,
    trigger: str,
    by: str,
    now: datetime,
) -> Requested | None:
    """One verify event for the entity, in the caller's transaction; None when no service
    ever acked one of its delete events done (nothing to verify)."""
    services = await _services_to_ask(conn, entity_type, entity_id)
    if not services:
        return None
    event_id = await _enqueue(conn, entity_type, entity_id, policy=policy, now=now)
    await conn.execute(
        insert(verifications).values(
            event_id=event_id,
            entity_type=entity_type,
            entity_id=entity_id,
            policy=policy,
            trigger=trigger,
            requested_by=by,
            requested_at=now,
        )
    )
    await conn.execute(
        insert(verify_answers), [{"event_id": event_id, "service": s} for s in services]
    )
    await audit.append(
        conn,
        [
            audit.AuditEntry(
                audit.AuditAction.VERIFY_REQUEST,
                by,
                {
                    "event_id": event_id,
                    "entity_type": entity_type,
                    "entity_id": entity_id,
                    "trigger": trigger,
                    "services": services,
                },
            )
        ],
        at=now,
    )
    return Requested(event_id, entity_type, entity_id, tuple(services))


async def _enqueue(
    conn: AsyncConnection, entity_type: str, entity_id: str, *, policy: str, now: datetime
) -> uuid.UUID:
    """The verify event into the outbox, the one path every event takes to the relay (which
    signs and publishes it); returns its event id."""
    seq = await enqueue(
        conn,
        EventBatch(
            policy=policy,
            event_type=EventType.VERIFY.value,
            entity_type=entity_type,
            legal_basis=LEGAL_BASIS,
            initiated_at=now,
            deadline=now + ANSWER_WINDOW,
            entity_ids=[entity_id],
        ),
    )
    id_base: uuid.UUID = (
        await conn.execute(select(outbox_batches.c.id_base).where(outbox_batches.c.seq == seq))
    ).scalar_one()
    # The batch's only event: ids count up from 1 under its base (outbox/write.py).
    return batch_event_id(id_base, 1)


async def sample_policy(
    conn: AsyncConnection,
    policy: Policy,
    *,
    now: datetime,
    by: str,
    chance: random.Random | None = None,
) -> tuple[list[Requested], bool]:
    """Verify a `verify_sample` fraction of the next chunk of the policy's deletions
    completed since the mark and at least `verify_after` ago; each deletion is considered
    once. Also says whether the chunk was full (more may wait)."""
    if policy.verify_sample <= 0 or not policy.fan_out:
        return [], False
    draw = chance or random.SystemRandom()
    # One sampler at a time (several `serve` replicas): a deletion is considered once.
    await conn.execute(select(func.pg_advisory_xact_lock(SAMPLE_LOCK)))
    mark = (
        await conn.execute(
            select(verify_marks.c.completed_before, verify_marks.c.event_id).where(
                verify_marks.c.policy == policy.name
            )
        )
    ).first()
    until = now - policy.verify_after
    requested: list[Requested] = []
    considered = await completed_deletions(
        conn,
        policy=policy.name,
        after=None if mark is None else (mark.completed_before, mark.event_id),
        until=until,
        limit=_SAMPLE_CHUNK,
    )
    # One draw per entity in the chunk, however many of its deletions completed in it.
    entities = {(d.entity_type, d.entity_id): d for d in considered}
    for deletion in entities.values():
        if draw.random() >= policy.verify_sample:
            continue
        found = await request_verify(
            conn,
            deletion.entity_type,
            deletion.entity_id,
            policy=policy.name,
            trigger="sample",
            by=by,
            now=now,
        )
        if found is not None:
            requested.append(found)
    if considered:
        # Up to the last one considered: a full chunk leaves the rest for the next one.
        await _set_mark(conn, policy.name, considered[-1])
    return requested, len(considered) == _SAMPLE_CHUNK


async def _set_mark(conn: AsyncConnection, policy: str, last: CompletedDeletion) -> None:
    statement = pg_insert(verify_marks).values(
        policy=policy, completed_before=last.completed_at, event_id=last.event_id
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[verify_marks.c.policy],
            set_={
                "completed_before": statement.excluded.completed_before,
                "event_id": statement.excluded.event_id,
            },
        )
    )


async def sample_all(
    engine: AsyncEngine,
    policies: Sequence[Policy],
    *,
    now: datetime,
    by: str = SAMPLER,
    chance: random.Random | None = None,
) -> list[Requested]:
    """One sampling pass over every policy with `verify_sample`: chunk by chunk, each in
    a transaction of its own, until a policy's eligible deletions are all considered."""
    requested: list[Requested] = []
    for policy in policies:
        more = policy.fan_out and policy.verify_sample > 0
        while more:
            async with engine.begin() as conn:
                found, more = await sample_policy(conn, policy, now=now, by=by, chance=chance)
            requested += found
    return requested
