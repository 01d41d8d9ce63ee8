"""Holds reach services: each held entity's current set of holds on `data.retention.holds`.

SPEC §11. The topic is compacted and keyed `type:id`; a record's value is the entity's
*current set* of active hold ids (`schemas.HoldRecord`), a tombstone only once that set is
empty, so releasing one of two holds never lifts the other.

Durability is outbox-style. Creating or releasing a hold queues its entities in
`retention_hold_topic_queue` in the same transaction (`queue`), so no committed change
can be lost by a crash before it is published. `publish_pending` (each housekeeping
pass of the tracker in `retention serve`) reads the queue, computes each queued
entity's set *now*, publishes the records signed with the coordinator's key, waits for
the broker's `acks=all`, and only then deletes the rows it published. A crash in between
publishes the same sets again: harmless on a compacted topic.

Publishers take one advisory lock for the whole pass, so two of them never interleave
an older set after a newer one. A change committed during a pass moves its row's
`queued_at` on; the pass deletes only rows still at the `queued_at` it read, so that
change is published again by the next pass.

An expiry changes the sets without anyone writing: each pass first queues the entities
of holds that expired since (`legal_holds.expiry_queued_at`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import delete, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.clock import Clock
from coordinator.kafka.ports import OutgoingRecord, Publisher
from coordinator.store.tables import hold_topic_queue, legal_hold_entities, legal_holds
from schemas import HoldRecord, encode
from schemas.signing import Signer

__all__ = [
    "HOLD_TOPIC_LOCK",
    "active_sets",
    "pending_entities",
    "publish_pending",
    "queue",
    "queue_expired",
    "records_for",
]

HOLD_TOPIC_LOCK = 0x686F6C74
"""Advisory lock key: one holds-topic publisher at a time (see module doc)."""

Entity = tuple[str, str]


async def queue(conn: AsyncConnection, entities: Iterable[Entity], *, now: datetime) -> None:
    """In the caller's transaction: these entities' hold sets changed, publish them."""
    rows = [{"entity_type": t, "entity_id": i, "queued_at": now} for t, i in sorted(set(entities))]
    if not rows:
        return
    statement = pg_insert(hold_topic_queue)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[hold_topic_queue.c.entity_type, hold_topic_queue.c.entity_id],
            set_={"queued_at": statement.excluded.queued_at},
        ),
        rows,
    )


async def queue_expired(conn: AsyncConnection, *, now: datetime) -> int:
    """Queue the entities of holds that expired and were not queued for it yet."""
    h = legal_holds.c
    expired = (
        await conn.execute(
            update(legal_holds)
            .where(
                h.released_at.is_(None),
                h.expires_at.is_not(None),
                h.expires_at <= now,
                h.expiry_queued_at.is_(None),
            )
            .values(expiry_queued_at=now)
            .returning(h.id)
        )
    ).scalars()
    ids = list(expired)
    if not ids:
        return 0
    e = legal_hold_entities.c
    entities = await conn.execute(select(e.entity_type, e.entity_id).where(e.hold_id.in_(ids)))
    await queue(conn, [(t, i) for t, i in entities], now=now)
    return len(ids)


async def active_sets(
    conn: AsyncConnection, entities: Sequence[Entity], *, now: datetime
) -> dict[Entity, list[str]]:
    """Each entity's active hold ids at `now`, sorted; entities held by none are absent."""
    if not entities:
        return {}
    e, h = legal_hold_entities.c, legal_holds.c
    rows = await conn.execute(
        select(e.entity_type, e.entity_id, e.hold_id)
        .join_from(legal_hold_entities, legal_holds, h.id == e.hold_id)
        .where(
            tuple_(e.entity_type, e.entity_id).in_(list(entities)),
            h.released_at.is_(None),
            or_(h.expires_at.is_(None), h.expires_at > now),
        )
        .order_by(e.entity_type, e.entity_id, e.hold_id)
    )
    sets: dict[Entity, list[str]] = defaultdict(list)
    for entity_type, entity_id, hold_id in rows:
        sets[(entity_type, entity_id)].append(hold_id)
    return dict(sets)


async def pending_entities(conn: AsyncConnection, entities: Sequence[Entity]) -> set[Entity]:
    """Which of `entities` have a hold change not yet on the topic."""
    if not entities:
        return set()
    q = hold_topic_queue.c
    rows = await conn.execute(
        select(q.entity_type, q.entity_id).where(
            tuple_(q.entity_type, q.entity_id).in_(list(entities))
        )
    )
    return {(t, i) for t, i in rows}


def records_for(
    sets: dict[Entity, list[str]],
    entities: Sequence[Entity],
    *,
    now: datetime,
    signer: Signer | None,
) -> list[OutgoingRecord]:
    """One record per entity, in order: its set of holds, or a tombstone when none is left."""
    keyed: list[tuple[bytes, bytes | None]] = []
    for entity_type, entity_id in entities:
        holds = sets.get((entity_type, entity_id))
        value = (
            encode(
                HoldRecord(
                    entity_type=entity_type, entity_id=entity_id, holds=holds, updated_at=now
                )
            )
            if holds
            else None
        )
        keyed.append((f"{entity_type}:{entity_id}".encode(), value))
    signed = signer.sign_batch(keyed) if signer is not None else [[] for _ in keyed]
    return [
        OutgoingRecord(key, value, headers)
        for (key, value), headers in zip(keyed, signed, strict=True)
    ]


async def publish_pending(
    engine: AsyncEngine,
    publisher: Publisher,
    *,
    topic: str,
    signer: Signer | None,
    clock: Clock,
    limit: int = 1000,
) -> int:
    """Publish every queued entity's current set; return how many records went out.

    Raises what the publisher raises: the queue keeps what was not acknowledged.
    """
    total = 0
    while True:
        async with engine.begin() as conn:
            await conn.execute(select(func.pg_advisory_xact_lock(HOLD_TOPIC_LOCK)))
            now = clock.now()
            await queue_expired(conn, now=now)
            q = hold_topic_queue.c
            rows = (
                await conn.execute(
                    select(q.entity_type, q.entity_id, q.queued_at)
                    .order_by(q.queued_at, q.entity_type, q.entity_id)
                    .limit(limit)
                )
            ).all()
            if not rows:
                return total
            entities = [(row.entity_type, row.entity_id) for row in rows]
            sets = await active_sets(conn, entities, now=now)
            await publisher.publish(topic, records_for(sets, entities, now=now, signer=signer))
            # Only rows still as they were read: a change since then stays queued.
            await conn.execute(
                delete(hold_topic_queue).where(
                    tuple_(q.entity_type, q.entity_id, q.queued_at).in_(
                        [(row.entity_type, row.entity_id, row.queued_at) for row in rows]
                    )
                )
            )
        total += len(rows)
        if len(rows) < limit:
            return total
