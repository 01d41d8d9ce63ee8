"""Pruning the coordinator's own data (SPEC §13): `retention db prune` and serve's daily run.

Each table has its retention setting (docs/operations.md, "The system's own data"), in
the order a prune applies them:

- outbox batches: all their events completed `outbox_retention_days` (30) ago
  (coordinator/outbox/prune.py);
- entity ids in event status and ack ledger: become HMACs at the same age (`pseudonymise`),
  and in verifications (`pseudonymise_verifications`);
- ack ledger rows: received `ack_ledger_retention_days` (6 years) ago and their event
  completed, or rejected and naming no event the tracker knows; whole months of events
  that long past, none of them open, by dropping their partition;
- event status, with its expected acks: completed `event_status_retention_days` ago;
- verifications, with their answers: requested `event_status_retention_days` ago
  (coordinator/copies/verification/prune.py);
- audit rows: written `audit_retention_days` ago, before every open event began, never
  the newest row; each removed run of rows leaves a signed `pruned` checkpoint.

Nothing of an event that is not completed goes, however old: its status, expected acks
and ledger rows are only removed once the status says `completed`, and audit rows only
below the oldest open event's start (tests/integration/test_own_retention.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    and_,
    bindparam,
    column,
    delete,
    exists,
    func,
    not_,
    or_,
    select,
    table,
    text,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.copies.vault.prune import prune_vault
from coordinator.copies.verification.prune import prune_verifications, pseudonymise_verifications
from coordinator.evidence import audit
from coordinator.evidence.audit import AuditAction, AuditEntry
from coordinator.evidence.checkpoints import Checkpoint, record_checkpoint
from coordinator.evidence.ledger_pseudonyms import pseudonymise_acks
from coordinator.evidence.partitions import (
    AUDIT,
    EPOCH,
    LEDGER,
    Layout,
    Month,
    converting,
    delete_copies,
    drop_month,
    event_time,
    is_partitioned,
    month_ids,
    months,
)
from coordinator.evidence.pseudonyms import PREFIX, Pepper
from coordinator.evidence.retention import Retention
from coordinator.outbox.lookup import tracked_up_to
from coordinator.outbox.prune import ACTOR, Pruned, prune_outbox, record_pruned
from coordinator.store.tables import (
    ack_ledger,
    audit_log,
    event_status,
    expected_acks,
    outbox_batches,
)
from schemas.models import utc_now
from schemas.signing import Signer

__all__ = [
    "oldest_open_evidence",
    "prune_ack_ledger",
    "prune_audit",
    "prune_event_status",
    "prune_own_data",
    "pseudonymise",
    "repair_pseudonyms",
]


async def pseudonymise(
    engine: AsyncEngine,
    pepper: Pepper | None,
    *,
    now: datetime,
    keep: timedelta,
    dry_run: bool,
    batch: int = 5_000,
) -> Pruned:
    """Replace the entity ids of events completed before `now - keep` by their HMAC, in
    the event status and in the ack ledger (and in a conversion's copy of it). Without a
    pepper nothing changes (the count says what would)."""
    cutoff = now - keep
    s = event_status.c
    due = and_(s.state == "completed", s.completed_at < cutoff, s.pseudonymised_at.is_(None))
    if dry_run or pepper is None:
        async with engine.connect() as conn:
            count = (await conn.execute(select(func.count()).where(due))).scalar_one()
        return Pruned(f"{event_status.name}.entity_id", count, cutoff, True)
    total = 0
    after: uuid.UUID | None = None
    while True:
        async with engine.begin() as conn:
            # Past the previous batch: from the start, each batch would walk the primary
            # key again past every event marked before it (a run of batches x marked).
            # Rows skipped as locked are left to the next run.
            pick = select(s.event_id, s.entity_type, s.entity_id).where(due)
            if after is not None:
                pick = pick.where(s.event_id > after)
            rows = (
                await conn.execute(
                    pick.order_by(s.event_id).limit(batch).with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return Pruned(f"{event_status.name}.entity_id", total, cutoff, dry_run)
            after = rows[-1].event_id
            await conn.execute(
                update(event_status)
                .where(s.event_id == bindparam("b_event_id"))
                .values(entity_id=bindparam("b_pseudonym"), pseudonymised_at=now),
                [
                    {
                        "b_event_id": r.event_id,
                        "b_pseudonym": pepper.pseudonym(r.entity_type, r.entity_id),
                    }
                    for r in rows
                ],
            )
            await pseudonymise_acks(conn, pepper, [r.event_id for r in rows])
            await record_pruned(conn, f"{event_status.name}.entity_id", len(rows), cutoff, now)
        total += len(rows)


async def repair_pseudonyms(
    engine: AsyncEngine, pepper: Pepper | None, *, batch: int = 5_000
) -> int:
    """Rewrite as HMACs the entity ids a partitioned ledger still holds in clear for
    events already pseudonymised; return how many it found (without a pepper it only counts).

    A version before `ledger_pseudonyms.pseudonymise_copies` rewrote only the old ledger while it
    converted, so rows it had copied kept their ids through the swap, and their events'
    marks mean `pseudonymise` never comes back to them. `retention db partition` runs
    this once the ledger is partitioned, not daily: it walks the marked statuses in
    keyset batches of `batch` and reads each batch's ledger rows through the ledger's
    event index, in the months the batch's ids were minted in and the epoch's.

    A clear id that begins with `PREFIX` cannot be told from an HMAC and is left as it
    is. Marked events are never pseudonymised again, so a serve replica's
    `pseudonymise` touches other rows; two repairs lock their rows in id order and
    leave a row the other already rewrote (the update's condition is read again). Each
    batch that rewrites rows writes a `db.prune` audit entry (`"repair": "pseudonyms"`)
    with how many."""
    s, a = event_status.c, ack_ledger.c
    in_clear = and_(a.entity_id.is_not(None), a.entity_id.not_like(f"{PREFIX}%"))
    total = 0
    after: uuid.UUID | None = None
    while True:
        async with engine.begin() as conn:
            marked = select(s.event_id).where(s.pseudonymised_at.is_not(None))
            if after is not None:
                marked = marked.where(s.event_id > after)
            events = (await conn.execute(marked.order_by(s.event_id).limit(batch))).scalars().all()
            if not events:
                return total
            after = events[-1]
            found = [
                select(a.id, a.event_at, a.entity_type, a.entity_id).where(
                    # One per partial index on event_id: an OR of the two would be
                    # factored into `accepted OR NOT accepted`, which neither implies.
                    accepted,
                    a.event_id.in_(events),
                    # One range of the index, not a descent per id, where a month is big.
                    a.event_id.between(events[0], after),
                    # UUIDv7s grow with their minting time: the batch's months.
                    or_(
                        a.event_at.between(event_time(events[0]), event_time(after)),
                        a.event_at == EPOCH,
                    ),
                    in_clear,
                )
                for accepted in (a.accepted, not_(a.accepted))
            ]
            rows = (await conn.execute(union_all(*found).order_by("id"))).all()
            if rows and pepper is not None:
                rewritten = await conn.execute(
                    update(ack_ledger)
                    .where(
                        a.id == bindparam("b_id"), a.event_at == bindparam("b_event_at"), in_clear
                    )
                    .values(entity_id=bindparam("b_pseudonym")),
                    [
                        {
                            "b_id": r.id,
                            "b_event_at": r.event_at,
                            "b_pseudonym": pepper.pseudonym(r.entity_type or "", r.entity_id),
                        }
                        for r in rows
                    ],
                )
                # Evidence rewritten is audited like the daily pass's, with the rows this
                # run changed (a concurrent repair may have done some).
                await audit.append(
                    conn,
                    [
                        AuditEntry(
                            AuditAction.DB_PRUNE,
                            ACTOR,
                            {
                                "table": f"{ack_ledger.name}.entity_id",
                                "rows": rewritten.rowcount,
                                "repair": "pseudonyms",
                            },
                        )
                    ],
                    at=utc_now(),
                )
        total += len(rows)


def _completed(event_id: Any) -> Any:
    s = event_status.c
    return exists().where(s.event_id == event_id, s.state == "completed")


async def prune_ack_ledger(
    engine: AsyncEngine, *, now: datetime, keep: timedelta, dry_run: bool, batch: int = 10_000
) -> Pruned:
    """Delete ledger rows received before `now - keep` whose event is completed (or that
    were rejected and name no event the tracker knows): whole months of events by
    dropping their partition (`_drop_ledger_months`), the rest row by row."""
    cutoff = now - keep
    dropped, names = await _drop_ledger_months(engine, now=now, cutoff=cutoff, dry_run=dry_run)
    a, s = ack_ledger.c, event_status.c
    # A dry run's months are still there: their rows are counted already.
    gone = [m.bounds() for m in map(LEDGER.month_of, names) if m is not None]
    due = and_(
        a.received_at < cutoff,
        # Implied (nothing is minted after it arrives), and it spares the later months.
        a.event_at < cutoff,
        *(or_(a.event_at < lo, a.event_at >= hi) for lo, hi in gone),
        or_(
            a.event_id.is_(None),
            _completed(a.event_id),
            and_(not_(a.accepted), not_(exists().where(s.event_id == a.event_id))),
        ),
    )
    rows = await _delete_in_batches(
        engine,
        ack_ledger.name,
        a.id,
        due,
        cutoff=cutoff,
        now=now,
        dry_run=dry_run,
        batch=batch,
        copies=LEDGER,
    )
    return Pruned(ack_ledger.name, dropped + rows.rows, cutoff, dry_run, tuple(names))


async def _ledger_month_done(conn: AsyncConnection, month: Month) -> bool:
    """No event minted in `month` is open: none in the event status's id range of the
    month is (the open events' index), and no outbox batch written by its end is past the
    tracker's cursor (events not tracked yet)."""
    s, b = event_status.c, outbox_batches.c
    first, after = month_ids(month)
    open_event = exists().where(s.state != "completed", s.event_id >= first, s.event_id < after)
    untracked = exists().where(b.seq > await tracked_up_to(conn), b.created_at < month.bounds()[1])
    return not (await conn.execute(select(or_(open_event, untracked)))).scalar_one()


async def _drop_ledger_months(
    engine: AsyncEngine, *, now: datetime, cutoff: datetime, dry_run: bool
) -> tuple[int, list[str]]:
    """Drop each monthly partition of the ledger wholly before `cutoff` whose events are
    all completed; return its rows and names (a dry run only counts and names them).

    A month holds the acks of the events minted in it, so an ack goes `keep` after its
    event's month rather than after its receipt: later only for an event open that long,
    which keeps its month anyway. The checks run again under the locks (`drop_month`)."""
    total = 0
    names: list[str] = []
    async with engine.connect() as conn:
        if not await is_partitioned(conn, LEDGER.parent):
            return 0, []
        due = [m for m in await months(conn, LEDGER) if m.bounds()[1] <= cutoff]
    for month in due:
        name = LEDGER.partition(month)
        async with engine.connect() as conn:
            if not await _ledger_month_done(conn, month):
                continue
            rows = int(await conn.scalar(select(func.count()).select_from(table(name))) or 0)
        if dry_run:
            total, names = total + rows, [*names, name]
            continue

        async def still_due(conn: AsyncConnection, month: Month = month) -> bool:
            return await _ledger_month_done(conn, month)

        async def dropped(conn: AsyncConnection, name: str = name, rows: int = rows) -> None:
            await record_pruned(conn, name, rows, cutoff, now)

        if await drop_month(
            engine,
            LEDGER,
            name,
            still_due=still_due,
            dropped=dropped,
            chain_lock=audit.try_lock_head,
        ):
            total, names = total + rows, [*names, name]
    return total, names


async def prune_event_status(
    engine: AsyncEngine, *, now: datetime, keep: timedelta, dry_run: bool, batch: int = 10_000
) -> Pruned:
    """Delete events completed before `now - keep`, their expected acks with them (the
    same statement: no foreign key does it, migration 0028)."""
    cutoff = now - keep
    s = event_status.c
    due = and_(s.state == "completed", s.completed_at < cutoff)
    return await _delete_in_batches(
        engine,
        event_status.name,
        s.event_id,
        due,
        cutoff=cutoff,
        now=now,
        dry_run=dry_run,
        batch=batch,
        dependent=expected_acks.c.event_id,
    )


async def _delete_in_batches(
    engine: AsyncEngine,
    name: str,
    key: Column[Any],
    due: ColumnElement[bool],
    *,
    cutoff: datetime,
    now: datetime,
    dry_run: bool,
    batch: int,
    dependent: Column[Any] | None = None,
    copies: Layout | None = None,
) -> Pruned:
    """Delete the rows `due` selects, `batch` at a time; with `dependent` (a column
    referring to `key`), also the rows of its table that refer to the deleted ones; with
    `copies` (the table's layout, `due` selecting only rows with its partition key before
    `cutoff`), also a conversion's copies of them."""
    table = key.table
    if dry_run:
        async with engine.connect() as conn:
            count = (
                await conn.execute(select(func.count()).select_from(table).where(due))
            ).scalar_one()
        return Pruned(name, count, cutoff, True)
    total = 0
    while True:
        async with engine.begin() as conn:
            doomed = (
                select(key).where(due).order_by(key).limit(batch).with_for_update(skip_locked=True)
            )
            gone = delete(table).where(key.in_(doomed.scalar_subquery())).returning(key).cte("gone")
            counted = select(func.count(), func.array_agg(gone.c[key.name])).select_from(gone)
            if dependent is not None:
                counted = counted.add_cte(
                    delete(dependent.table)
                    .where(dependent.in_(select(gone.c[key.name])))
                    .cte("gone_dependents")
                )
            n, keys = (await conn.execute(counted)).one()
            if n:
                if copies is not None:
                    await delete_copies(conn, copies, keys, cutoff)
                await record_pruned(conn, name, n, cutoff, now)
        total += n
        if n < batch:
            return Pruned(name, total, cutoff, dry_run)


async def oldest_open_evidence(conn: AsyncConnection) -> datetime | None:
    """When the oldest event that is not completed began: an open event's status, or an
    outbox batch past the tracker's cursor (never published, or published and not yet
    tracked). Audit rows from before it cannot be about an open event."""
    s, b = event_status.c, outbox_batches.c
    open_status = select(func.min(s.initiated_at)).where(s.state != "completed").scalar_subquery()
    # A range of the batches' primary key: what the tracker has not followed yet.
    untracked = (
        select(func.min(b.created_at)).where(b.seq > await tracked_up_to(conn)).scalar_subquery()
    )
    value: datetime | None = (
        await conn.execute(select(func.least(open_status, untracked)))
    ).scalar_one()
    return value


def _runs(rows: Sequence[Any]) -> list[tuple[int, int, str]]:
    """Contiguous seq runs of `rows` (sorted by seq): (first, last, hash of last)."""
    runs: list[tuple[int, int, str]] = []
    for row in rows:
        if runs and runs[-1][1] == row.seq - 1:
            runs[-1] = (runs[-1][0], row.seq, row.hash)
        else:
            runs.append((row.seq, row.seq, row.hash))
    return runs


async def _horizon(engine: AsyncEngine, cutoff: datetime) -> datetime:
    """The time before which audit rows may go: the cutoff, or the start of the oldest
    open event if earlier. Taken once per prune: events opened later start later, and one
    completed meanwhile only makes the stored horizon more careful than needed."""
    async with engine.connect() as conn:
        oldest = await oldest_open_evidence(conn)
    return cutoff if oldest is None else min(cutoff, oldest)


async def _month_runs(conn: AsyncConnection, name: str) -> list[tuple[int, int, str]]:
    """The contiguous seq runs of one partition, each with the hash of its last row.

    A month's seqs are one run unless rows were stamped out of order (a clock far off):
    min, max and a count over the primary key tell, without reading the rows."""
    part = table(name, column("seq"), column("hash"))
    seq = part.c.seq
    low, high, count = (
        await conn.execute(select(func.min(seq), func.max(seq), func.count()))
    ).one()
    if count == 0:
        return []
    if high - low + 1 == count:
        spans = [(low, high)]
    else:
        numbered = select(seq, (seq - func.row_number().over(order_by=seq)).label("g")).subquery()
        spans = [
            (first, last)
            for first, last in (
                await conn.execute(
                    select(func.min(numbered.c.seq), func.max(numbered.c.seq))
                    .group_by(numbered.c.g)
                    .order_by(func.min(numbered.c.seq))
                )
            ).all()
        ]
    hashes = dict(
        (
            await conn.execute(select(seq, part.c.hash).where(seq.in_([last for _, last in spans])))
        ).all()
    )
    return [(first, last, hashes[last]) for first, last in spans]


async def _drop_months(
    engine: AsyncEngine,
    *,
    now: datetime,
    before: datetime,
    dry_run: bool,
    signer: Signer | None,
) -> tuple[int, list[str]]:
    """Drop each monthly partition wholly before `before` (cheap: no row is deleted one
    by one), leaving a signed checkpoint per run of seqs it held; return the rows and
    names. A dry run only names them (the row count of `prune_audit` covers their rows)."""
    if dry_run:
        return 0, await _due_months(engine, before)
    total = 0
    names: list[str] = []
    while True:
        async with engine.begin() as conn:
            if not await is_partitioned(conn):
                return total, names
            # The chain lock: nothing is appended between reading a month and dropping it.
            head, _ = await audit.lock_head(conn)
            due = [m for m in await months(conn) if m.bounds()[1] <= before]
            if not due:
                return total, names
            month = due[0]
            name = AUDIT.partition(month)
            runs = await _month_runs(conn, name)
            if runs and runs[-1][1] >= head:
                return total, names  # the newest row is never pruned
            for first, last, digest in runs:
                await record_checkpoint(
                    conn, Checkpoint("pruned", first, last, digest, now), signer
                )
            rows = sum(last - first + 1 for first, last, _ in runs)
            # The name comes from a date, never from input.
            await conn.execute(text(f"DROP TABLE {name}"))
            await record_pruned(conn, name, rows, before, now)
        total += rows
        names.append(name)


async def _due_months(engine: AsyncEngine, before: datetime) -> list[str]:
    """The partitions `_drop_months` would drop now: wholly before `before`, oldest first,
    up to the one holding the newest row."""
    async with engine.connect() as conn:
        if not await is_partitioned(conn):
            return []
        head = int(await conn.scalar(select(func.coalesce(func.max(audit_log.c.seq), 0))) or 0)
        names = []
        for month in await months(conn):
            name = AUDIT.partition(month)
            last = await conn.scalar(select(func.max(column("seq"))).select_from(table(name)))
            if month.bounds()[1] > before or (last is not None and last >= head):
                break
            names.append(name)
        return names


async def prune_audit(
    engine: AsyncEngine,
    *,
    now: datetime,
    keep: timedelta,
    dry_run: bool,
    signer: Signer | None,
    batch: int = 10_000,
) -> Pruned:
    """Remove audit rows written before `now - keep` and before the oldest open event,
    never the newest row; each contiguous run removed leaves a signed `pruned` checkpoint
    (first seq, last seq, hash of the last), so the chain still verifies.

    Whole months go by dropping their partition; what is left (rows of the default
    partition, of a month not yet wholly past, or of an unpartitioned log) row by row.
    """
    before = await _horizon(engine, now - keep)
    async with engine.connect() as conn:
        # Not the outbox's and ledger's `delete_copies`: this transaction holds the chain
        # lock throughout, so waiting for a copy step there would stall every appender.
        # The rows stay until the swap (docs/operations.md, "The system's own data").
        if await converting(conn, AUDIT):
            return Pruned(audit_log.name, 0, before, dry_run)
    total, names = await _drop_months(
        engine, now=now, before=before, dry_run=dry_run, signer=signer
    )
    while True:
        async with engine.begin() as conn:
            # The chain lock: nothing is appended between choosing rows and removing them.
            head, _ = await audit.lock_head(conn)
            due = and_(audit_log.c.at < before, audit_log.c.seq < head)
            if dry_run:
                count = (await conn.execute(select(func.count()).where(due))).scalar_one()
                return Pruned(audit_log.name, total + count, before, True, tuple(names))
            rows = (
                await conn.execute(
                    select(audit_log.c.seq, audit_log.c.hash)
                    .where(due)
                    .order_by(audit_log.c.seq)
                    .limit(batch)
                )
            ).all()
            if not rows:
                return Pruned(audit_log.name, total, before, dry_run, tuple(names))
            for first, last, digest in _runs(rows):
                await record_checkpoint(
                    conn, Checkpoint("pruned", first, last, digest, now), signer
                )
            await conn.execute(delete(audit_log).where(audit_log.c.seq.in_([r.seq for r in rows])))
            await record_pruned(conn, audit_log.name, len(rows), before, now)
        total += len(rows)


async def prune_own_data(
    engine: AsyncEngine,
    retention: Retention,
    *,
    now: datetime,
    dry_run: bool,
    pepper: Pepper | None,
    signer: Signer | None,
) -> list[Pruned]:
    """Every table past its retention, in an order that keeps proof while it is needed:
    ledger rows go while their event's `completed` status still shows it was completed."""
    return [
        await prune_outbox(engine, now=now, keep=retention.outbox, dry_run=dry_run),
        await pseudonymise(engine, pepper, now=now, keep=retention.outbox, dry_run=dry_run),
        await pseudonymise_verifications(
            engine, pepper, now=now, keep=retention.outbox, dry_run=dry_run
        ),
        await prune_ack_ledger(engine, now=now, keep=retention.ack_ledger, dry_run=dry_run),
        await prune_event_status(engine, now=now, keep=retention.event_status, dry_run=dry_run),
        # Verify events are evidence of the same age as the deletions they check.
        await prune_verifications(engine, now=now, keep=retention.event_status, dry_run=dry_run),
        await prune_audit(engine, now=now, keep=retention.audit, dry_run=dry_run, signer=signer),
        # Rows a policy's restoration window kept (docs/restore.md), once it has ended.
        await prune_vault(engine, now=now, dry_run=dry_run),
    ]
