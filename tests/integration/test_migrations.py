"""The alembic migrations build exactly the schema `coordinator.store.tables` declares."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from coordinator.evidence.partitions import is_partition
from coordinator.store.db import make_engine
from coordinator.store.tables import metadata


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
