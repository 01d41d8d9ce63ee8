"""Verification records in the system's own retention (SPEC §13; docs/verification.md).

A verify event's outbox batch goes with the outbox's (coordinator/outbox/prune.py), its
publication time kept in `retention_verifications.published_at`. Here, the records:

- past the outbox retention, the entity id becomes its HMAC under the suppression pepper,
  as in the event status (`pseudonymise_verifications`); the entity views find it by
  computing the HMAC (`queries.entity_verifications`);
- past the event status retention, the record goes with its answers (ON DELETE CASCADE)
  (`prune_verifications`).

Both walk `requested_at` through an index, a batch at a time, each batch committed with
its `db.prune` audit entry: a run reads the rows it changes, not the table. A verify
event's answers are due within a day (`request.ANSWER_WINDOW`) and never retried, so
nothing still expected is touched: an answer arriving after its record's id became an
HMAC is refused as naming another entity (answers.py).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import (
    ARRAY,
    Text,
    Uuid,
    and_,
    bindparam,
    column,
    delete,
    func,
    literal,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.evidence.audit import AuditAction, AuditEntry, append
from coordinator.evidence.pseudonyms import Pepper
from coordinator.outbox.prune import Pruned
from coordinator.store.tables import verifications

__all__ = ["PSEUDONYMISED", "prune_verifications", "pseudonymise_verifications"]

ACTOR = "coordinator"
PSEUDONYMISED = f"{verifications.name}.entity_id"
"""The table name the pseudonymisation's counts and audit entries carry."""


async def _record(
    conn: AsyncConnection, name: str, rows: int, cutoff: datetime, now: datetime
) -> None:
    await append(
        conn,
        [
            AuditEntry(
                AuditAction.DB_PRUNE,
                ACTOR,
                {"table": name, "rows": rows, "cutoff": cutoff.isoformat()},
            )
        ],
        at=now,
    )


async def pseudonymise_verifications(
    engine: AsyncEngine,
    pepper: Pepper | None,
    *,
    now: datetime,
    keep: timedelta,
    dry_run: bool,
    batch: int = 5_000,
) -> Pruned:
    """Replace the entity ids of verifications requested before `now - keep` by their
    HMAC. Without a pepper nothing changes (the count says what would).

    The rows still in clear are read through their partial index, in (requested_at,
    event_id) order after the previous batch; rows skipped as locked are left to the
    next run."""
    cutoff = now - keep
    v = verifications.c
    due = and_(v.pseudonymised_at.is_(None), v.requested_at < cutoff)
    if dry_run or pepper is None:
        async with engine.connect() as conn:
            count = (await conn.execute(select(func.count()).where(due))).scalar_one()
        return Pruned(PSEUDONYMISED, count, cutoff, True)
    pairs = (
        func.unnest(
            bindparam("b_ids", type_=ARRAY(Uuid())), bindparam("b_names", type_=ARRAY(Text()))
        )
        .table_valued(column("event_id", Uuid), column("pseudonym", Text))
        .render_derived()
    )
    # One statement a batch: the ids and their HMACs as two arrays.
    rewrite = (
        verifications.update()
        .where(v.event_id == pairs.c.event_id)
        .values(entity_id=pairs.c.pseudonym, pseudonymised_at=now)
    )
    total = 0
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        async with engine.begin() as conn:
            pick = select(v.event_id, v.entity_type, v.entity_id, v.requested_at).where(due)
            if after is not None:
                at, event_id = after
                pick = pick.where(
                    tuple_(v.requested_at, v.event_id)
                    > tuple_(literal(at, v.requested_at.type), literal(event_id, v.event_id.type))
                )
            rows = (
                await conn.execute(
                    pick.order_by(v.requested_at, v.event_id)
                    .limit(batch)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return Pruned(PSEUDONYMISED, total, cutoff, dry_run)
            after = (rows[-1].requested_at, rows[-1].event_id)
            await conn.execute(
                rewrite,
                {
                    "b_ids": [r.event_id for r in rows],
                    "b_names": [pepper.pseudonym(r.entity_type, r.entity_id) for r in rows],
                },
            )
            await _record(conn, PSEUDONYMISED, len(rows), cutoff, now)
        total += len(rows)


async def prune_verifications(
    engine: AsyncEngine, *, now: datetime, keep: timedelta, dry_run: bool, batch: int = 10_000
) -> Pruned:
    """Delete the verifications requested before `now - keep`, their answers with them.

    The `requested_at` index gives each batch in order; the next starts at the last
    batch's time (a keyset: not past the index entries of rows already deleted)."""
    cutoff = now - keep
    v = verifications.c
    due = v.requested_at < cutoff
    if dry_run:
        async with engine.connect() as conn:
            count = (await conn.execute(select(func.count()).where(due))).scalar_one()
        return Pruned(verifications.name, count, cutoff, True)
    total = 0
    after: datetime | None = None
    while True:
        async with engine.begin() as conn:
            pick = select(v.event_id).where(due)
            if after is not None:
                pick = pick.where(v.requested_at >= after)
            doomed = pick.order_by(v.requested_at).limit(batch).with_for_update(skip_locked=True)
            gone = (
                delete(verifications)
                .where(v.event_id.in_(doomed.scalar_subquery()))
                .returning(v.requested_at)
                .cte("gone")
            )
            n, last = (
                await conn.execute(select(func.count(), func.max(gone.c.requested_at)))
            ).one()
            if n:
                await _record(conn, verifications.name, n, cutoff, now)
        total += n
        if n < batch:
            return Pruned(verifications.name, total, cutoff, dry_run)
        after = last
