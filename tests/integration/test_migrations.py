"""The alembic migrations build exactly the schema `coordinator.store.tables` declares."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text

from coordinator.evidence.partitions import is_partition
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
    the wrong columns (text into text), so both must agree, names and types."""
    cases = {
        "retention_ack_row": ("retention_ack_ledger", ledger._PER_ROW),
        "retention_ack_change": ("retention_expected_acks", ledger._KEY + ledger._ACK_FIELDS),
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
                assert [name for name, _ in sent] == list(columns), type_name
                assert all(stored[name] == kind for name, kind in sent), type_name
    finally:
        await engine.dispose()
