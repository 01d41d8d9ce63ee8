"""The system's own retention (SPEC §13): what `retention db prune` removes.

An outbox row (one purge batch) is the relay's work item and the source of its events'
reminders; once the tracker has every event of the batch `completed` for
`outbox_retention_days`, nothing reads it any more: `retention_event_status` repeats the
identifying columns, so an entity's status and certificate survive without it
(coordinator/tracking/queries.py). Rows of an event that is not completed — pending,
overdue, failed, or not tracked at all (never published, or published and not yet
picked up) — are never removed, however old (tests/integration/test_db_prune.py), nor
are batches past the relay's watermark or the tracker's cursor.

The walk goes through the outbox once, in seq order (a keyset, so each row is read
once per prune whatever stays behind), a window of `batch` rows at a time; each
window's deletion and its audit entry commit together. `rows` counts events. A window is
100 batches (half a million events at the default purge batch size): the completion
check joins every event of it to its status.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.evidence.audit import AuditAction, AuditEntry, append
from coordinator.outbox.lookup import EVENTS, published_up_to, tracked_up_to
from coordinator.store.tables import event_status, outbox_batches

__all__ = ["Pruned", "prune_outbox"]

ACTOR = "coordinator"


@dataclass(frozen=True, slots=True)
class Pruned:
    table: str
    rows: int
    cutoff: datetime
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "rows": self.rows,
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
        }


async def prune_outbox(
    engine: AsyncEngine, *, now: datetime, keep: timedelta, dry_run: bool, batch: int = 100
) -> Pruned:
    """Delete (or, with `dry_run`, count) the outbox batches whose events all completed
    before `now - keep`."""
    cutoff = now - keep
    after = 0
    total = 0
    b, s = outbox_batches.c, event_status.c
    while True:
        async with engine.begin() as conn:
            # Published and tracked: a batch past either is never complete.
            limit = min(await published_up_to(conn), await tracked_up_to(conn))
            window = (
                select(b.seq, b.events)
                .where(b.seq > after, b.seq <= limit)
                .order_by(b.seq)
                .limit(batch)
                .cte("window")
            )
            done = (
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
            doomed = (
                select(window.c.seq, window.c.events).where(window.c.seq.in_(done)).cte("doomed")
            )
            if dry_run:
                counted = select(func.coalesce(func.sum(doomed.c.events), 0))
            else:
                gone = (
                    delete(outbox_batches)
                    .where(b.seq.in_(select(doomed.c.seq)))
                    .returning(b.events)
                    .cte("gone")
                )
                counted = select(func.coalesce(func.sum(gone.c.events), 0))
            last = select(func.max(window.c.seq)).scalar_subquery()
            row = (
                await conn.execute(select(last.label("last"), counted.scalar_subquery().label("n")))
            ).one()
            if row.n and not dry_run:
                await append(
                    conn,
                    [
                        AuditEntry(
                            AuditAction.DB_PRUNE,
                            ACTOR,
                            {
                                "table": outbox_batches.name,
                                "rows": int(row.n),
                                "cutoff": cutoff.isoformat(),
                            },
                        )
                    ],
                    at=now,
                )
        total += int(row.n)
        if row.last is None:
            return Pruned(outbox_batches.name, total, cutoff, dry_run)
        after = row.last
