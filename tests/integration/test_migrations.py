"""The alembic migrations build exactly the schema `coordinator.store.tables` declares."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text

from coordinator.evidence.partitions import AUDIT, OUTBOX, Month, ensure_months, is_partition
from coordinator.store.db import make_engine
from coordinator.store.tables import metadata
from coordinator.tracking import ledger


async def test_migrations_match_declared_tables(coordinator_db: str) -> None:
    def declared(name: str | None, kind: str, parent: object) -> bool:
        # Monthly partitions are made at run time, not declared.
        return not (kind == "table" and name is not None and is_partition(name))

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_name": declared}
        )
        return list(compare_metadata(context, metadata))

    engine = make_engine(coordinator_db)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(diff)
    finally:
        await engine.dispose()
    assert differences == [], "tables.py and the migrations differ: add a migration"


async def test_ack_batch_types_are_the_columns_the_tracker_sends(coordinator_db: str) -> None:
    """`columns.unnest_rows` maps a composite type's attributes onto columns by position:
    a type whose attributes drifted from the tracker's column order would put values in
    the wrong columns (text into text), so both must agree, names and types. The ledger
    row's `event_ms` stands for `event_at` (bigint milliseconds, migration 0030), the
    `…_us` attributes for their `…_at` columns (bigint microseconds, migration 0034)."""
    cases = {
        "retention_ack_row_us": ("retention_ack_ledger", ledger._PER_ROW),
        "retention_ack_change_us": ("retention_expected_acks", ledger._CHANGE_COLUMNS),
    }
    attributes = text(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = :relid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
    )
    engine = make_engine(coordinator_db)
    try:
        async with engine.connect() as conn:
            for type_name, (table, columns) in cases.items():
                type_relid = await conn.scalar(
                    text("SELECT typrelid FROM pg_type WHERE typname = :name"),
                    {"name": type_name},
                )
                table_relid = await conn.scalar(
                    text("SELECT to_regclass(:name)::oid"), {"name": table}
                )
                sent = (await conn.execute(attributes, {"relid": type_relid})).all()
                stored = dict((await conn.execute(attributes, {"relid": table_relid})).all())
                stored.update(event_ms="bigint", acknowledged_us="bigint", first_ack_us="bigint")
                assert [name for name, _ in sent] == list(columns), type_name
                assert all(stored[name] == kind for name, kind in sent), type_name
    finally:
        await engine.dispose()


async def test_large_evidence_values_are_stored_with_lz4(coordinator_db: str) -> None:
    """Migration 0029: the audit data and the outbox's id arrays take lz4 in every
    partition, those made later too (they inherit the parent's setting)."""
    later = Month.of(datetime(2031, 5, 1, tzinfo=UTC))
    compression = text(
        "SELECT c.relname, a.attname, a.attcompression::text FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE (c.relname LIKE 'audit_log%' AND a.attname = 'data') "
        "OR (c.relname LIKE 'retention_outbox_batches%' "
        "AND a.attname IN ('entity_ids', 'subjects'))"
    )
    engine = make_engine(coordinator_db)
    try:
        async with engine.begin() as conn:
            for layout in (AUDIT, OUTBOX):
                await ensure_months(conn, [later], layout)
            found = (await conn.execute(compression)).all()
    finally:
        await engine.dispose()
    names = {name for name, _, _ in found}
    assert {"audit_log", "audit_log_y2031m05", "retention_outbox_batches_y2031m05"} <= names
    assert {(name, column) for name, column, method in found if method != "l"} == set()
