"""Verification records in the system's own retention (SPEC §13; docs/verification.md).

A verify event's outbox batch goes with the outbox's (coordinator/outbox/prune.py), its
publication time kept in `retention_verifications.published_at`. Here, the records:

- past the outbox retention, the entity id becomes its HMAC under the suppression pepper,
  as in the event status, in the record and in its answers' ack-ledger rows
  (`pseudonymise_verifications`); the entity views find it by
  computing the HMAC (`queries.entity_verifications`);
- past the event status retention, the record goes with its answers (ON DELETE CASCADE)
  (`prune_verifications`).

Both walk `requested_at` through an index, a batch at a time, each batch committed with
its `db.prune` audit entry: a run reads the rows it changes, not the table. Neither
touches a record

- before its answer window (`request.ANSWER_WINDOW`) ended, whatever the retention
  settings: its answers are still expected, and one arriving after the id became an
  HMAC is refused as naming another entity (answers.py);
- while it found the entity still present at a service whose reopened acknowledgements
  are still `still_present`: a later delete completes them again by finding that answer
  under the entity's id in clear (`answers.delete_again`), and the record is the
  evidence of the open resurrection.

Each batch takes the audit chain's lock first, as the tracker does before it reads the
records and locks their answers (`answers.apply_answers`): no deadlock with a late
answer, and an answer is either applied before the batch reads the records (the guard
sees what it reopened) or refused after it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Select,
    Text,
    Uuid,
    and_,
    bindparam,
    column,
    delete,
    exists,
    func,
    literal,
    select,
    text,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.copies.verification.request import ANSWER_WINDOW
from coordinator.evidence.audit import lock_head
from coordinator.evidence.ledger_pseudonyms import pseudonymise_acks
from coordinator.evidence.partitions import LEDGER, converting, lock_copies
from coordinator.evidence.pseudonyms import Pepper
from coordinator.outbox.prune import Pruned, record_pruned
from coordinator.store.tables import event_status, expected_acks, verifications, verify_answers
from schemas import AckStatus

__all__ = ["PSEUDONYMISED", "prune_verifications", "pseudonymise_verifications"]

PSEUDONYMISED = f"{verifications.name}.entity_id"
"""The table name the pseudonymisation's counts and audit entries carry."""


def _settled(cutoff: datetime, now: datetime) -> tuple[datetime, ColumnElement[bool]]:
    """The effective cutoff (not inside the answer window) and the records that may be
    rewritten or removed before it: none whose `still_present` answer still holds a
    reopened acknowledgement of the entity at that service.

    The probe starts from the record's answers (primary key) and stops at once for the
    usual ones, which have no `still_present` answer; the reopened events are found by
    the entity (the status's entity index, in clear: an open event is never
    pseudonymised) and their acknowledgement by primary key."""
    cutoff = min(cutoff, now - ANSWER_WINDOW)
    v, va = verifications.c, verify_answers.c
    s, e = event_status.c, expected_acks.c
    still = AckStatus.STILL_PRESENT.value
    open_finding = exists().where(
        va.event_id == v.event_id,
        va.status == still,
        s.entity_type == v.entity_type,
        s.entity_id == v.entity_id,
        e.event_id == s.event_id,
        e.service == va.service,
        e.status == still,
    )
    return cutoff, and_(v.requested_at < cutoff, ~open_finding)


def _in_clear(settled: ColumnElement[bool]) -> ColumnElement[bool]:
    """The `settled` records whose entity id is not an HMAC yet."""
    return and_(verifications.c.pseudonymised_at.is_(None), settled)


def _to_pseudonymise(
    due: ColumnElement[bool], after: tuple[datetime, uuid.UUID] | None, batch: int
) -> Select[tuple[uuid.UUID, str, str, datetime]]:
    """The next batch of records to rewrite, in (requested_at, event_id) order after
    `after`: through the partial index of the ids still in clear."""
    v = verifications.c
    pick = select(v.event_id, v.entity_type, v.entity_id, v.requested_at).where(due)
    if after is not None:
        at, event_id = after
        pick = pick.where(
            tuple_(v.requested_at, v.event_id)
            > tuple_(literal(at, v.requested_at.type), literal(event_id, v.event_id.type))
        )
    return pick.order_by(v.requested_at, v.event_id).limit(batch).with_for_update(skip_locked=True)


def _to_prune(
    due: ColumnElement[bool], after: datetime | None, batch: int
) -> Select[tuple[uuid.UUID]]:
    """The next batch of records to delete: through the `requested_at` index, from the
    last batch's time on."""
    v = verifications.c
    pick = select(v.event_id).where(due)
    if after is not None:
        pick = pick.where(v.requested_at >= after)
    return pick.order_by(v.requested_at).limit(batch).with_for_update(skip_locked=True)


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
    cutoff, settled = _settled(now - keep, now)
    due = _in_clear(settled)
    v = verifications.c
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
            # A ledger conversion's copies are locked before the chain, in their own order
            # (the old ledger, then its shadow: `lock_copies`), so that no copy step is
            # waited for under the chain's lock, which every evidence writer needs.
            if await converting(conn, LEDGER):
                await conn.execute(text(f"LOCK TABLE {LEDGER.parent} IN ROW EXCLUSIVE MODE"))
                await lock_copies(conn, LEDGER)
            await lock_head(conn)
            rows = (await conn.execute(_to_pseudonymise(due, after, batch))).all()
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
            # Their answers' ledger rows name the entity too, joined by the event id.
            await pseudonymise_acks(conn, pepper, [r.event_id for r in rows])
            await record_pruned(conn, PSEUDONYMISED, len(rows), cutoff, now)
        total += len(rows)


async def prune_verifications(
    engine: AsyncEngine, *, now: datetime, keep: timedelta, dry_run: bool, batch: int = 10_000
) -> Pruned:
    """Delete the verifications requested before `now - keep`, their answers with them.

    The `requested_at` index gives each batch in order; the next starts at the last
    batch's time (a keyset: not past the index entries of rows already deleted)."""
    cutoff, due = _settled(now - keep, now)
    v = verifications.c
    if dry_run:
        async with engine.connect() as conn:
            count = (await conn.execute(select(func.count()).where(due))).scalar_one()
        return Pruned(verifications.name, count, cutoff, True)
    total = 0
    after: datetime | None = None
    while True:
        async with engine.begin() as conn:
            # The chain before the rows (and their answers, deleted with them).
            await lock_head(conn)
            gone = (
                delete(verifications)
                .where(v.event_id.in_(_to_prune(due, after, batch).scalar_subquery()))
                .returning(v.requested_at)
                .cte("gone")
            )
            n, last = (
                await conn.execute(select(func.count(), func.max(gone.c.requested_at)))
            ).one()
            if n:
                await record_pruned(conn, verifications.name, n, cutoff, now)
        total += n
        if n < batch:
            return Pruned(verifications.name, total, cutoff, dry_run)
        after = last
