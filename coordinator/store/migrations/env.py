"""Alembic environment: runs migrations over the coordinator's async engine."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from coordinator.store.db import make_engine
from coordinator.store.tables import metadata

config = context.config


def _migrate(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "", pool_size=1)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_migrate)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit(
        "offline (SQL script) migrations are not supported; run `retention db upgrade`"
    )
asyncio.run(_run())
