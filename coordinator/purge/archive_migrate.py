"""Encrypting an existing plain archive in place (`retention archive encrypt`).

Archives made before encryption (`<table>_archive`: the table's columns plus
`archived_at`, all in clear) become the encrypted layout of `coordinator.purge.archive`
without moving a row:

1. the sealed and key-id columns are added (nullable for now), and the columns that will
   be sealed stop being NOT NULL;
2. batch by batch, each a transaction of its own: rows not sealed yet are locked, sealed
   under their subject's data key like any archived row, and their clear copies set to
   NULL. An interrupted migration resumes where it stopped: the rows left are exactly the
   ones whose sealed column is still NULL;
3. once none is left, in one transaction: the two columns become NOT NULL and the
   now-empty clear columns are dropped, audited (`archive.encrypted`);
4. `VACUUM FULL` rewrites the table, so no earlier row version with the clear values is
   left in its data files (WAL and backups keep them until they cycle: docs/operations.md).

Until step 3 is done the policy does not bind ("being encrypted in place"): no run
archives into a half-migrated table, and nothing reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import MetaData, Table, bindparam, func, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator import CoordinatorError
from coordinator.copies.crypto.keystore import KeyStore
from coordinator.evidence.audit import AuditAction, AuditEntry, append
from coordinator.policy.model import Action, PolicySet
from coordinator.purge.archive import (
    ARCHIVED_AT,
    KEY_ID,
    SEALED,
    clear_columns,
    key_scope,
    owners,
    seal_row,
)
from coordinator.store.db import unbounded_lock_waits

__all__ = ["Encrypted", "MigrationError", "encrypt_plain_archive"]


class MigrationError(CoordinatorError, ValueError):
    """The policy has no plain archive to encrypt, or the table cannot be migrated."""


@dataclass
class Encrypted:
    table: str
    rows: int = 0
    """Rows sealed by this invocation."""
    batches: int = 0
    finished: bool = False
    already: bool = False
    """The archive was encrypted before this invocation."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "rows": self.rows,
            "batches": self.batches,
            "finished": self.finished,
            "already_encrypted": self.already,
        }


async def _reflect(conn: AsyncConnection, name: str) -> Table | None:
    def reflect(sync: Any) -> Table | None:
        if not inspect(sync).has_table(name):
            return None
        return Table(name, MetaData(), autoload_with=sync)

    return await conn.run_sync(reflect)


def _quote(conn: AsyncConnection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


async def _prepare(conn: AsyncConnection, archive: Table, sealed_later: list[str]) -> None:
    """Step 1, idempotent: the new columns, and no NOT NULL on what will be sealed."""
    table = _quote(conn, archive.name)
    for column, sql_type in ((KEY_ID, "uuid"), (SEALED, "bytea")):
        await conn.exec_driver_sql(
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {_quote(conn, column)} {sql_type}"
        )
    for name in sealed_later:
        if not archive.c[name].nullable:
            await conn.exec_driver_sql(
                f"ALTER TABLE {table} ALTER COLUMN {_quote(conn, name)} DROP NOT NULL"
            )


async def encrypt_plain_archive(
    engine: AsyncEngine,
    keys: KeyStore,
    policy_set: PolicySet,
    policy_name: str,
    *,
    now: datetime,
    by: str,
    batch_size: int = 1000,
    vacuum: bool = True,
    after_batch: Callable[[Encrypted], None] | None = None,
) -> Encrypted:
    """Encrypt the policy's plain archive in place; safe to run again after a crash."""
    try:
        policy = policy_set.get(policy_name)
    except KeyError:
        raise MigrationError(f"unknown policy {policy_name!r}") from None
    if policy.action is not Action.ARCHIVE:
        raise MigrationError(f"policy {policy_name!r} does not archive")
    subject = policy_set.subject_of(policy)
    name = f"{policy.table}_archive"
    report = Encrypted(name)
    async with engine.begin() as conn:
        archive = await _reflect(conn, name)
        if archive is None:
            raise MigrationError(f"policy {policy_name!r} has no archive table {name!r}")
        already = SEALED in archive.c and not archive.c[SEALED].nullable
        if not already:
            wanted = [policy.id_column, policy.timestamp_column, ARCHIVED_AT]
            if subject is not None:
                wanted.append(subject.column)
            if missing := [c for c in wanted if c not in archive.c]:
                raise MigrationError(f"archive table {name!r} lacks column(s) {', '.join(missing)}")
            clear = clear_columns(archive, [c for c in wanted if c != ARCHIVED_AT])
            sealed_later = [
                c.name for c in archive.c if c.name not in {*clear, ARCHIVED_AT, KEY_ID, SEALED}
            ]
            await _prepare(conn, archive, sealed_later)
    if already:
        # A run stopped before its vacuum, or one run with --no-vacuum: running it again
        # vacuums, so the data files lose their clear row versions in the end.
        report.finished = report.already = True
        if vacuum:
            await _vacuum(engine, name)
        return report
    async with engine.connect() as conn:
        archive = await _reflect(conn, name)
    assert archive is not None
    subject_of = (subject.entity_type, subject.column) if subject is not None else None
    id_column = policy.id_column
    seal_update = (
        update(archive)
        .where(
            archive.c[id_column] == bindparam("b_id"),
            archive.c[ARCHIVED_AT] == bindparam("b_at"),
            archive.c[SEALED].is_(None),
        )
        .values(
            {
                KEY_ID: bindparam("b_key"),
                SEALED: bindparam("b_sealed"),
                **{c: None for c in sealed_later},
            }
        )
    )
    while True:
        async with engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(archive)
                    .where(archive.c[SEALED].is_(None))
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                break
            scopes = [
                key_scope(policy.name, *whose)
                for whose in owners(
                    rows, entity_type=policy.entity_type, id_column=id_column, subject=subject_of
                )
            ]
            data_keys = await keys.keys_for(scopes, create=True, now=now)
            await conn.execute(
                seal_update,
                [
                    {
                        "b_id": row._mapping[id_column],
                        "b_at": row._mapping[ARCHIVED_AT],
                        "b_key": data_keys[scope].key_id,
                        "b_sealed": seal_row(
                            data_keys[scope],
                            archive,
                            row._mapping,
                            id_column=id_column,
                            clear=clear,
                        ),
                    }
                    for row, scope in zip(rows, scopes, strict=True)
                ],
            )
        report.rows += len(rows)
        report.batches += 1
        if after_batch is not None:
            after_batch(report)
    await _finish(engine, archive, sealed_later, report, policy_name, by=by, now=now)
    if vacuum:
        await _vacuum(engine, name)
    return report


async def _vacuum(engine: AsyncEngine, name: str) -> None:
    """`VACUUM FULL` the archive: its data files keep no earlier row version with the
    clear values. It waits for its lock however long a reader holds the table: giving up
    (a bounded one-shot command) would leave those versions with the work reported done."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        async with unbounded_lock_waits(conn):
            await conn.exec_driver_sql(f"VACUUM FULL {_quote(conn, name)}")


async def _finish(
    engine: AsyncEngine,
    archive: Table,
    sealed_later: list[str],
    report: Encrypted,
    policy: str,
    *,
    by: str,
    now: datetime,
) -> None:
    table = archive.name
    async with engine.begin() as conn:
        quoted = _quote(conn, table)
        # No run or read touches a half-migrated archive; this only keeps out a second
        # `archive encrypt` sealing rows while the columns go.
        await conn.exec_driver_sql(f"LOCK TABLE {quoted} IN ACCESS EXCLUSIVE MODE")
        left = (
            await conn.execute(
                select(func.count()).select_from(archive).where(archive.c[SEALED].is_(None))
            )
        ).scalar_one()
        if left:
            return
        for column in (KEY_ID, SEALED):
            await conn.exec_driver_sql(
                f"ALTER TABLE {quoted} ALTER COLUMN {_quote(conn, column)} SET NOT NULL"
            )
        for column in sealed_later:
            await conn.exec_driver_sql(f"ALTER TABLE {quoted} DROP COLUMN {_quote(conn, column)}")
        await append(
            conn,
            [
                AuditEntry(
                    AuditAction.ARCHIVE_ENCRYPTED,
                    by,
                    {"policy": policy, "table": table, "sealed_columns": sealed_later},
                )
            ],
            at=now,
        )
    report.finished = True
