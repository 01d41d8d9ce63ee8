"""The system's own retention (SPEC §13): what `retention db prune` removes.

An outbox row (one purge batch) is the relay's work item and the source of its events'
reminders; once the tracker has every event of the batch `completed` for
`outbox_retention_days`, nothing reads it any more: `retention_event_status` repeats the
identifying columns, so an entity's status and certificate survive without it
(coordinator/tracking/queries.py). Rows of an event that is not completed — pending,
overdue, failed, or not tracked at all (never published, or published and not yet
picked up) — are never removed, however old (tests/integration/test_db_prune.py), nor
are batches past the relay's watermark or the tracker's cursor. A verify event is not
tracked to completion (no status; answers due within a day, never retried): its batch
goes once its verification was requested `outbox_retention_days` ago, and its
publication time is first written into the verification, which the views read after.

The walk goes through the outbox once, in seq order (a keyset, so each row is read
once per prune whatever stays behind), a window of `batch` rows at a time; each
window's deletion and its audit entry commit together. `rows` counts events. A window is
100 batches (half a million events at the default purge batch size): the completion
check joins every event of it to its status.

Whole months go first, by dropping their partition (coordinator/evidence/partitions.py):
a month wholly before the cutoff whose batches are all published and tracked, and no
event in its range of event ids (time-ordered, so one primary-key range of the event
status) open or completed after the cutoff. The range may hold a neighbouring month's
events too, which can only keep a month longer. The row-by-row walk then covers only
batches written before the cutoff (a batch cannot complete before it was written), so
its cost is that of what could not go by month, never the whole outbox.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Uuid,
    and_,
    column,
    delete,
    exists,
    func,
    null,
    or_,
    select,
    table,
    true,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.copies.verification.request import ANSWER_WINDOW
from coordinator.evidence import audit
from coordinator.evidence.audit import AuditAction, AuditEntry, append
from coordinator.evidence.partitions import (
    OUTBOX,
    delete_copies,
    drop_month,
    is_partitioned,
    months,
)
from coordinator.outbox.lookup import EVENTS, published_up_to, tracked_up_to
from coordinator.store.tables import event_status, outbox_batches, verifications
from schemas import EventType

__all__ = ["ACTOR", "Pruned", "prune_outbox", "record_pruned"]

ACTOR = "coordinator"
VERIFY = EventType.VERIFY.value


@dataclass(frozen=True, slots=True)
class Pruned:
    table: str
    rows: int
    cutoff: datetime
    dry_run: bool
    partitions: tuple[str, ...] = ()
    """Monthly partitions dropped (or, in a dry run, that would be); `rows` counts theirs."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "rows": self.rows,
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "partitions": list(self.partitions),
        }


async def prune_outbox(
    engine: AsyncEngine, *, now: datetime, keep: timedelta, dry_run: bool, batch: int = 100
) -> Pruned:
    """Delete (or, with `dry_run`, count) the outbox batches whose events all completed
    before `now - keep`: whole months by dropping their partition, then row by row."""
    cutoff = now - keep
    total, dropped = await _drop_months(engine, now=now, cutoff=cutoff, dry_run=dry_run)
    after = 0
    b, s = outbox_batches.c, event_status.c
    # A dry run's months are still there: their rows are counted already.
    months_out = [m.bounds() for m in map(OUTBOX.month_of, dropped) if m is not None]
    elsewhere = and_(true(), *(or_(b.created_at < lo, b.created_at >= hi) for lo, hi in months_out))
    while True:
        async with engine.begin() as conn:
            # Published and tracked: a batch past either is never complete.
            limit = min(await published_up_to(conn), await tracked_up_to(conn))
            window = (
                select(b.seq, b.events, b.event_type)
                .where(b.seq > after, b.seq <= limit, b.created_at < cutoff, elsewhere)
                .order_by(b.seq)
                .limit(batch)
                .cte("window")
            )
            completed = (
                select(EVENTS.c.seq)
                .join(event_status, s.event_id == EVENTS.c.event_id)
                .where(
                    EVENTS.c.seq.in_(select(window.c.seq)),
                    s.state == "completed",
                    s.completed_at < cutoff,
                )
                .group_by(EVENTS.c.seq)
                .having(
                    func.count()
                    == select(window.c.events).where(window.c.seq == EVENTS.c.seq).scalar_subquery()
                )
            )
            done = union_all(completed, _verified(window, cutoff, now))
            doomed = (
                select(window.c.seq, window.c.events).where(window.c.seq.in_(done)).cte("doomed")
            )
            kept: list[Any] = []
            if dry_run:
                counted = select(func.coalesce(func.sum(doomed.c.events), 0))
                keys: Any = null()
            else:
                # The same snapshot as the delete: the outbox still shows the batches.
                kept = [
                    _keep_published_at(EVENTS.c.seq.in_(select(doomed.c.seq))).cte(
                        "kept_published_at"
                    )
                ]
                gone = (
                    delete(outbox_batches)
                    .where(b.seq.in_(select(doomed.c.seq)))
                    .returning(b.seq, b.events)
                    .cte("gone")
                )
                counted = select(func.coalesce(func.sum(gone.c.events), 0))
                keys = select(func.array_agg(gone.c.seq)).scalar_subquery()
            last = select(func.max(window.c.seq)).scalar_subquery()
            row = (
                await conn.execute(
                    select(
                        last.label("last"),
                        counted.scalar_subquery().label("n"),
                        keys.label("seqs"),
                    ).add_cte(*kept)
                )
            ).one()
            if row.n and not dry_run:
                # A conversion's copies of them go too, or the swap would bring them back.
                await delete_copies(conn, OUTBOX, row.seqs, cutoff)
                await record_pruned(conn, outbox_batches.name, int(row.n), cutoff, now)
        total += int(row.n)
        if row.last is None:
            return Pruned(outbox_batches.name, total, cutoff, dry_run, tuple(dropped))
        after = row.last


def _verified(window: Any, cutoff: datetime, now: datetime) -> Any:
    """The verify batches of `window` whose verification was requested before `cutoff`
    and whose answer window has ended (or is gone already): nothing tracks them to
    completion, their answers are due within that window and never retried
    (docs/verification.md). A retention shorter than the window never cuts into it."""
    cutoff = min(cutoff, now - ANSWER_WINDOW)
    v = verifications.c
    recent = (
        select(EVENTS.c.seq)
        .join(verifications, v.event_id == EVENTS.c.event_id)
        .where(
            EVENTS.c.seq.in_(select(window.c.seq).where(window.c.event_type == VERIFY)),
            v.requested_at >= cutoff,
        )
    )
    return select(window.c.seq).where(window.c.event_type == VERIFY, window.c.seq.not_in(recent))


def _unfilled(batches: ColumnElement[bool]) -> ColumnElement[bool]:
    """A verify event of `batches` whose verification lacks its publication time."""
    v = verifications.c
    return and_(
        v.event_id == EVENTS.c.event_id,
        batches,
        EVENTS.c.event_type == VERIFY,
        v.published_at.is_(None),
    )


def _keep_published_at(batches: ColumnElement[bool]) -> Any:
    """Write the publication time of the verify events of `batches` (a condition on
    `EVENTS`) into their verifications: the views show it after the outbox row goes."""
    return (
        update(verifications).where(_unfilled(batches)).values(published_at=EVENTS.c.published_at)
    )


_LAST = func.retention_uuidv7_nth(
    column("id_base"), column("id_first") + column("events") - 1, type_=Uuid
)


async def _month_events(conn: AsyncConnection, name: str) -> tuple[int, int, Any, Any]:
    """(batches' greatest seq, events, lowest and highest event id) of one partition."""
    part = table(name, column("seq"), column("id_base"), column("id_first"), column("events"))
    first = func.retention_uuidv7_nth(part.c.id_base, part.c.id_first, type_=Uuid)
    # No min()/max() over uuid before PostgreSQL 16: the first row in each order.
    row = (
        await conn.execute(
            select(
                func.coalesce(func.max(part.c.seq), 0),
                func.coalesce(func.sum(part.c.events), 0),
                select(first).order_by(first).limit(1).scalar_subquery(),
                select(_LAST).select_from(part).order_by(_LAST.desc()).limit(1).scalar_subquery(),
            ).select_from(part)
        )
    ).one()
    return int(row[0]), int(row[1]), row[2], row[3]


def _blocking(lo: uuid.UUID, hi: uuid.UUID, cutoff: datetime | None) -> Any:
    """An event in [lo, hi] that is open (or, given a cutoff, completed after it)."""
    s = event_status.c
    kept = s.state != "completed"
    if cutoff is not None:
        kept = or_(kept, s.completed_at >= cutoff)
    return exists().where(and_(s.event_id >= lo, s.event_id <= hi, kept))


async def _droppable(conn: AsyncConnection, name: str, cutoff: datetime | None) -> tuple[bool, int]:
    """Whether the partition may go (and its events): every batch published and tracked,
    every event in its id range completed (before `cutoff`, if given)."""
    last, events, lo, hi = await _month_events(conn, name)
    if lo is None:
        return True, 0
    if last > min(await published_up_to(conn), await tracked_up_to(conn)):
        return False, events
    return not (await conn.execute(select(_blocking(lo, hi, cutoff)))).scalar_one(), events


async def _drop_months(
    engine: AsyncEngine, *, now: datetime, cutoff: datetime, dry_run: bool
) -> tuple[int, list[str]]:
    """Drop each monthly partition wholly before `cutoff` whose events all completed
    before it; return their events and names (a dry run only names them).

    The full completion check (a range of the status's primary key) runs before any lock;
    under the locks (`drop_month`) the cheap ones run again: the watermarks, and no event
    of the range open (through the open events' index)."""
    total = 0
    names: list[str] = []
    async with engine.connect() as conn:
        if not await is_partitioned(conn, OUTBOX.parent):
            return 0, []
        # Its verify events' answer windows ended too, whatever the retention (`_verified`).
        end = min(cutoff, now - ANSWER_WINDOW)
        due = [OUTBOX.partition(m) for m in await months(conn, OUTBOX) if m.bounds()[1] <= end]
    for name in due:
        async with engine.connect() as conn:
            ok, events = await _droppable(conn, name, cutoff)
        if not ok:
            continue
        if dry_run:
            total, names = total + events, [*names, name]
            continue

        month = OUTBOX.month_of(name)
        assert month is not None  # `due` lists monthly partitions only
        # The month's batches by its bounds: one partition read.
        lo, hi = month.bounds()
        in_month = and_(EVENTS.c.created_at >= lo, EVENTS.c.created_at < hi)
        # Before the locks, in its own transaction: a row a prune holds would otherwise be
        # waited for under ACCESS EXCLUSIVE on the outbox and the chain lock. The batches
        # are published (their time fixed), so writing it again changes nothing.
        async with engine.begin() as conn:
            await conn.execute(_keep_published_at(in_month))

        async def still_due(
            conn: AsyncConnection, in_month: Any = in_month, name: str = name
        ) -> bool:
            # A read, not the write again: a batch published since the fill leaves its
            # verification unfilled, and the month waits for the next prune.
            return (await _droppable(conn, name, None))[0] and not (
                await conn.execute(select(exists().where(_unfilled(in_month))))
            ).scalar_one()

        async def dropped(conn: AsyncConnection, name: str = name, events: int = events) -> None:
            await record_pruned(conn, name, events, cutoff, now)

        if await drop_month(
            engine,
            OUTBOX,
            name,
            still_due=still_due,
            dropped=dropped,
            chain_lock=audit.try_lock_head,
        ):
            total, names = total + events, [*names, name]
    return total, names


async def record_pruned(
    conn: AsyncConnection, name: str, rows: int, cutoff: datetime, now: datetime
) -> None:
    """The `db.prune` audit entry of `rows` removed from `name` (a table, a partition or
    a column rewritten) before `cutoff`, in the caller's transaction."""
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
