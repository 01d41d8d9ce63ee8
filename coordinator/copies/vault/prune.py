"""The end of the restoration window: `retention db prune` drops vault rows past it.

Each window of `batch` rows and its audit entry commit together. Rows a restore is
working on are locked by it; the prune waits for that batch (FOR UPDATE in the restore).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.evidence.audit import AuditAction, AuditEntry, append
from coordinator.outbox.prune import ACTOR, Pruned
from coordinator.store.tables import vault

__all__ = ["prune_vault"]


async def prune_vault(
    engine: AsyncEngine, *, now: datetime, dry_run: bool, batch: int = 10_000
) -> Pruned:
    """Delete (or, with `dry_run`, count) the vault rows whose window ended by `now`."""
    if dry_run:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(select(func.count()).where(vault.c.expires_at <= now))
            ).scalar_one()
        return Pruned(vault.name, int(rows), now, dry_run)
    total = 0
    while True:
        doomed = select(vault.c.id).where(vault.c.expires_at <= now).limit(batch).with_for_update()
        gone = delete(vault).where(vault.c.id.in_(doomed)).returning(literal(1)).cte("gone")
        async with engine.begin() as conn:
            rows = int((await conn.execute(select(func.count()).select_from(gone))).scalar_one())
            if rows:
                await append(
                    conn,
                    [
                        AuditEntry(
                            AuditAction.DB_PRUNE,
                            ACTOR,
                            {"table": vault.name, "rows": rows, "cutoff": now.isoformat()},
                        )
                    ],
                    at=now,
                )
        total += rows
        if rows < batch:
            return Pruned(vault.name, total, now, dry_run)
