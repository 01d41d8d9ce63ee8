"""`retention restore`: put a run's deleted rows back from the vault, within the window.

Each batch of vault rows is one transaction: the rows re-inserted (`INSERT … SELECT
FROM json_populate_recordset(NULL::<table>, …) ON CONFLICT DO NOTHING`), the vault rows
marked restored, the entities added to the hold `restore-<run id>` and the audit entry
commit together or not at all. A row whose unique key exists again in the table is a
conflict: reported, left in the vault, never overwritten. A row whose data key was
destroyed (an erasure request) is crypto-shredded and can never come back. A row past
its window is not restored, even before `db prune` has dropped it.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    MetaData,
    Table,
    Text,
    bindparam,
    cast,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator import CoordinatorError
from coordinator.copies.crypto.envelope import SealError
from coordinator.copies.crypto.keystore import KeyStore
from coordinator.copies.vault.seal import open_row
from coordinator.evidence.audit import AuditAction, AuditEntry, append
from coordinator.purge.holds import lock_for_creation
from coordinator.store.tables import legal_hold_entities, legal_holds, vault
from schemas import error_text

__all__ = ["RestoreError", "RestoreReport", "hold_name", "restore_run"]


class RestoreError(CoordinatorError, ValueError):
    """The restore cannot start: nothing of the run in the vault, or its hold released."""


def hold_name(run_id: uuid.UUID) -> str:
    return f"restore-{run_id}"


@dataclass
class RestoreReport:
    run_id: uuid.UUID
    hold_id: str
    dry_run: bool
    restored: list[str] = field(default_factory=list)
    """`type:id` of the entities put back (or that would be, with --dry-run)."""
    conflicts: list[str] = field(default_factory=list)
    """Entities whose unique key is taken in the table again: left in the vault."""
    shredded: list[str] = field(default_factory=list)
    """Entities whose data key an erasure request destroyed."""
    expired: int = 0
    """Rows past their restoration window."""
    already_restored: int = 0
    error: str | None = None
    """The batch that failed and why (SQLSTATE); earlier batches stay restored."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": str(self.run_id),
            "hold_id": self.hold_id,
            "dry_run": self.dry_run,
            "restored": self.restored,
            "conflicts": self.conflicts,
            "crypto_shredded": self.shredded,
            "expired": self.expired,
            "already_restored": self.already_restored,
            "error": self.error,
        }


def _of(run_id: uuid.UUID, entity: tuple[str, str] | None) -> Any:
    """The run's vault rows; with `entity`, those of the entity or of the subject it is."""
    where = vault.c.run_id == run_id
    if entity is not None:
        own = (vault.c.entity_type == entity[0]) & (vault.c.entity_id == entity[1])
        where = where & (own | (vault.c.subject == f"{entity[0]}:{entity[1]}"))
    return where


async def _reflect(conn: AsyncConnection, name: str, cache: dict[str, Table]) -> Table:
    if name not in cache:
        cache[name] = await conn.run_sync(lambda sync: Table(name, MetaData(), autoload_with=sync))
    return cache[name]


async def _reinsert(
    conn: AsyncConnection, table: Table, id_column: str, documents: Sequence[str]
) -> set[str]:
    """Insert the rows the documents describe; the ids (as text) that went in."""
    columns = [c.name for c in table.columns if c.computed is None]
    quoted = conn.dialect.identifier_preparer.quote(table.name)
    rows = (
        func.json_populate_recordset(
            literal_column(f"NULL::{quoted}"),
            cast(bindparam("docs", "[" + ",".join(documents) + "]", type_=Text), JSON),
        )
        .table_valued(*columns)
        .alias("restored")
    )
    statement = (
        pg_insert(table)
        .from_select(columns, select(*(rows.c[c] for c in columns)))
        .on_conflict_do_nothing()
        .returning(cast(table.c[id_column], Text))
    )
    return set((await conn.execute(statement)).scalars())


async def _ensure_hold(
    conn: AsyncConnection,
    hold_id: str,
    run_id: uuid.UUID,
    entities: set[tuple[str, str]],
    *,
    by: str,
    now: datetime,
) -> None:
    """Add the restored entities to the run's hold, creating it the first time."""
    await lock_for_creation(conn)
    created = (
        await conn.execute(
            pg_insert(legal_holds)
            .values(
                id=hold_id,
                reason=f"restored from the vault (run {run_id}); release once the policy is fixed",
                created_by=by,
                created_at=now,
            )
            .on_conflict_do_nothing()
            .returning(legal_holds.c.id)
        )
    ).scalar_one_or_none()
    await conn.execute(
        pg_insert(legal_hold_entities).on_conflict_do_nothing(),
        [{"hold_id": hold_id, "entity_type": t, "entity_id": i} for t, i in sorted(entities)],
    )
    if created is not None:
        await append(
            conn,
            [
                AuditEntry(
                    AuditAction.HOLD_CREATE,
                    by,
                    {"hold_id": hold_id, "expires_at": None, "restore_of_run": run_id},
                )
            ],
            at=now,
        )


async def _check_hold(conn: AsyncConnection, hold_id: str) -> None:
    released = (
        await conn.execute(select(legal_holds.c.released_at).where(legal_holds.c.id == hold_id))
    ).first()
    if released is not None and released.released_at is not None:
        raise RestoreError(
            f"hold {hold_id!r} was released: the run's restore is over (its rows would be "
            "purged again by the next run)"
        )


async def _batch(
    conn: AsyncConnection,
    keys: KeyStore,
    report: RestoreReport,
    rows: Sequence[Any],
    tables: dict[str, Table],
    *,
    by: str,
    now: datetime,
) -> None:
    data_keys = await keys.keys_by_id({row.key_id for row in rows})
    by_table: dict[tuple[str, str], list[tuple[Any, str]]] = defaultdict(list)
    for row in rows:
        data_key = data_keys.get(row.key_id)
        if data_key is None:
            report.shredded.append(f"{row.entity_type}:{row.entity_id}")
            continue
        try:
            document = open_row(data_key.key, row)
        except SealError:
            # Altered or moved bytes: never inserted, and loud.
            raise RestoreError(
                f"vault row {row.id} does not open under data key {row.key_id} (altered or moved)"
            ) from None
        by_table[(row.table_name, row.id_column)].append((row, document))
    restored_ids: list[int] = []
    entities: set[tuple[str, str]] = set()
    conflicts: list[str] = []
    for (table_name, id_column), items in by_table.items():
        table = await _reflect(conn, table_name, tables)
        went_in = await _reinsert(conn, table, id_column, [d for _, d in items])
        for row, _ in items:
            entity = f"{row.entity_type}:{row.entity_id}"
            if row.entity_id in went_in:
                restored_ids.append(row.id)
                entities.add((row.entity_type, row.entity_id))
            else:
                conflicts.append(entity)
    if restored_ids:
        await conn.execute(
            update(vault)
            .where(vault.c.id.in_(restored_ids))
            .values(restored_at=now, restored_by=by)
        )
        await _ensure_hold(conn, report.hold_id, report.run_id, entities, by=by, now=now)
    restored = sorted(f"{t}:{i}" for t, i in entities)
    await append(
        conn,
        [
            AuditEntry(
                AuditAction.VAULT_RESTORE,
                by,
                {
                    "run_id": report.run_id,
                    "hold_id": report.hold_id,
                    "restored": restored,
                    "conflicts": conflicts,
                    "crypto_shredded": len(rows) - sum(len(v) for v in by_table.values()),
                },
            )
        ],
        at=now,
    )
    report.restored += restored
    report.conflicts += conflicts


async def restore_run(
    engine: AsyncEngine,
    keys: KeyStore,
    run_id: uuid.UUID,
    *,
    entity: tuple[str, str] | None = None,
    dry_run: bool,
    by: str,
    now: datetime,
    batch_size: int = 1000,
) -> RestoreReport:
    """Restore what `run_id` deleted (one entity's rows with `entity`) that is still
    in its window. `dry_run` does every batch and rolls it back: conflicts are found by
    the database exactly as a real restore would meet them."""
    report = RestoreReport(run_id, hold_name(run_id), dry_run)
    where = _of(run_id, entity)
    async with engine.connect() as conn:
        counts = (
            await conn.execute(
                select(
                    func.count(),
                    func.count().filter(vault.c.restored_at.is_not(None)),
                    func.count().filter(vault.c.restored_at.is_(None), vault.c.expires_at <= now),
                ).where(where)
            )
        ).one()
        await _check_hold(conn, report.hold_id)
    if not counts[0]:
        raise RestoreError(
            f"run {run_id} left nothing in the vault"
            + (f" for {entity[0]}:{entity[1]}" if entity else "")
            + " (no restore_window policy deleted rows in it, or db prune dropped them)"
        )
    report.already_restored, report.expired = int(counts[1]), int(counts[2])
    tables: dict[str, Table] = {}
    after = 0
    while True:
        async with engine.connect() as conn:
            transaction = await conn.begin()
            rows = (
                await conn.execute(
                    select(vault)
                    .where(
                        where,
                        vault.c.restored_at.is_(None),
                        vault.c.expires_at > now,
                        vault.c.id > after,
                    )
                    .order_by(vault.c.id)
                    .limit(batch_size)
                    # A concurrent restore or prune of the same rows waits for this batch.
                    .with_for_update()
                )
            ).all()
            if not rows:
                await transaction.rollback()
                break
            after = rows[-1].id
            try:
                await _batch(conn, keys, report, rows, tables, by=by, now=now)
            except RestoreError:
                await transaction.rollback()
                raise
            except Exception as exc:
                # The whole batch rolls back: nothing of it is restored, nor marked.
                await transaction.rollback()
                report.error = error_text(exc)
                break
            if dry_run:
                await transaction.rollback()
            else:
                await transaction.commit()
    return report
