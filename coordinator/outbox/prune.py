"""The system's own retention (SPEC §13): what `retention db prune` removes.

The outbox row of an event is the relay's work item and the source of its reminders;
once the tracker has the event `completed` for `outbox_retention_days`, nothing reads it
any more: `retention_event_status` repeats the identifying columns, so an entity's
status and certificate survive without it (coordinator/tracking/queries.py). Rows of an
event that is not completed — pending, overdue, failed, or not tracked at all (never
published, or published and not yet picked up) — are never removed, however old
(tests/integration/test_db_prune.py).

The walk goes through the outbox once, in event-id order (a keyset, so each row is read
once per prune whatever stays behind), a window of `batch` rows at a time; each
window's deletion and its audit entry commit together.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.audit import AuditAction, AuditEntry, append
from coordinator.store.tables import event_status, outbox

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
    engine: AsyncEngine, *, now: datetime, keep: timedelta, dry_run: bool, batch: int = 10_000
) -> Pruned:
    """Delete (or, with `dry_run`, count) the outbox rows of events completed before
    `now - keep`."""
    cutoff = now - keep
    after: uuid.UUID | None = None
    total = 0
    while True:
        walked = select(outbox.c.event_id).order_by(outbox.c.event_id).limit(batch)
        if after is not None:
            walked = walked.where(outbox.c.event_id > bindparam("after", after))
        window = walked.cte("window")
        doomed = (
            select(window.c.event_id)
            .join(event_status, event_status.c.event_id == window.c.event_id)
            .where(event_status.c.state == "completed", event_status.c.completed_at < cutoff)
        )
        # No max() for uuid: the window's last id by ORDER BY … LIMIT 1.
        last = select(window.c.event_id).order_by(window.c.event_id.desc()).limit(1)
        if dry_run:
            counted = select(func.count()).select_from(doomed.subquery())
        else:
            gone = (
                delete(outbox)
                .where(outbox.c.event_id.in_(doomed))
                .returning(literal(1))
                .cte("gone")
            )
            counted = select(func.count()).select_from(gone)
        async with engine.begin() as conn:
            row = (
                await conn.execute(
                    select(
                        last.scalar_subquery().label("last"), counted.scalar_subquery().label("n")
                    )
                )
            ).one()
            if row.n and not dry_run:
                await append(
                    conn,
                    [
                        AuditEntry(
                            AuditAction.DB_PRUNE,
                            ACTOR,
                            {"table": outbox.name, "rows": row.n, "cutoff": cutoff.isoformat()},
                        )
                    ],
                    at=now,
                )
        total += row.n
        if row.last is None:
            return Pruned(outbox.name, total, cutoff, dry_run)
        after = row.last
