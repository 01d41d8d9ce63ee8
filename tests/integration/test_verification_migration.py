"""Migration 0032 (`verification_retention`): queued behind a long transaction it holds
readers of the verifications up a moment only, and its downgrade refuses once a prune
has written what the previous version would lose."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.store.db import make_engine
from coordinator.store.migrate import alembic_config, upgrade
from coordinator.store.migrations import patience
from tests import infra

BEFORE = "0031_audit_link"
_INSERT = (
    "INSERT INTO retention_verifications (event_id, entity_type, entity_id, policy, trigger,"
    " requested_by, requested_at) VALUES (:id, 'user', 'u-1', 'p', 'sample', 'test', now())"
)


@pytest.fixture
async def scratch(postgres_url: str) -> AsyncIterator[str]:
    url = await infra.create_database(postgres_url, "verification_migration")
    try:
        await upgrade(url, BEFORE)
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(_INSERT), {"id": uuid.uuid4()})
        finally:
            await engine.dispose()
        yield url
    finally:
        await infra.drop_database(url)


async def test_queued_behind_a_long_transaction_it_holds_readers_up_a_moment_only(
    scratch: str,
) -> None:
    """A transaction reading the verifications keeps the `ALTER` waiting; the tracker's
    reads queue behind it, so it gives its turn up every lock timeout."""
    engine = make_engine(scratch)
    try:
        async with engine.connect() as holder, engine.connect() as tracker:
            await holder.begin()
            await holder.execute(text("SELECT count(*) FROM retention_verifications"))
            migration = asyncio.create_task(upgrade(scratch))
            try:
                for _ in range(200):
                    async with engine.connect() as conn:
                        waiting = await conn.scalar(
                            text(
                                "SELECT count(*) FROM pg_locks l JOIN pg_database d"
                                " ON d.oid = l.database WHERE d.datname = current_database()"
                                " AND l.locktype = 'relation' AND NOT l.granted"
                            )
                        )
                    if waiting:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the migration never waited for a lock")
                started = asyncio.get_running_loop().time()
                await asyncio.wait_for(
                    tracker.execute(text("SELECT count(*) FROM retention_verifications")), 10
                )
                waited = asyncio.get_running_loop().time() - started
                await tracker.commit()
                assert not migration.done()
            finally:
                await holder.commit()
            await asyncio.wait_for(migration, 60)
        async with engine.connect() as conn:
            valid = await conn.scalar(
                text(
                    "SELECT indisvalid FROM pg_index WHERE indexrelid ="
                    " to_regclass('ix_retention_verifications_unpseudonymised')"
                )
            )
    finally:
        await engine.dispose()
    assert waited < 5
    assert valid is True


@pytest.mark.parametrize("column", ["published_at", "pseudonymised_at"])
async def test_the_downgrade_refuses_once_a_prune_used_the_columns(
    scratch: str, column: str
) -> None:
    await upgrade(scratch)
    engine = make_engine(scratch)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"UPDATE retention_verifications SET {column} = now()"))
        with pytest.raises(RuntimeError, match="Not downgrading"):
            await asyncio.to_thread(command.downgrade, alembic_config(scratch), BEFORE)
        async with engine.begin() as conn:
            await conn.execute(text(f"UPDATE retention_verifications SET {column} = NULL"))
        await asyncio.to_thread(command.downgrade, alembic_config(scratch), BEFORE)
        async with engine.connect() as conn:
            left = await conn.scalar(
                text(
                    "SELECT count(*) FROM information_schema.columns WHERE table_name ="
                    " 'retention_verifications' AND column_name IN"
                    " ('published_at', 'pseudonymised_at')"
                )
            )
    finally:
        await engine.dispose()
    assert left == 0


async def test_a_downgrade_behind_a_long_transaction_gives_up_naming_what_to_run_again(
    scratch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The downgrade's `ALTER` waits patiently too; past its last try it fails with a
    message that says which table stayed locked and to run the downgrade again."""
    await upgrade(scratch)
    monkeypatch.setattr(patience, "LOCK_TRIES", 2)
    monkeypatch.setattr(patience, "LOCK_TIMEOUT", "50ms")
    monkeypatch.setattr(patience, "LOCK_PAUSE_S", 0)
    engine = make_engine(scratch)
    try:
        async with engine.connect() as holder:
            await holder.begin()
            await holder.execute(text("SELECT count(*) FROM retention_verifications"))
            with pytest.raises(
                DBAPIError,
                match="0032: retention_verifications stayed locked through 2 tries; "
                "run the downgrade again",
            ):
                await asyncio.to_thread(command.downgrade, alembic_config(scratch), BEFORE)
            await holder.commit()
        await asyncio.to_thread(command.downgrade, alembic_config(scratch), BEFORE)
    finally:
        await engine.dispose()


async def test_an_index_build_interrupted_before_is_dropped_and_built_again(scratch: str) -> None:
    """A CONCURRENTLY build that failed half-way leaves an invalid index of the name the
    migration builds; the migration replaces it with its own, valid one."""
    engine = make_engine(scratch)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            # Division by zero while scanning the table's row: the build fails after the
            # index's catalog entry is committed, as a killed build would leave it.
            with pytest.raises(DBAPIError, match="division by zero"):
                await conn.execute(
                    text(
                        "CREATE INDEX CONCURRENTLY ix_retention_verifications_unpseudonymised"
                        " ON retention_verifications"
                        " ((1 / (length(entity_id) - length(entity_id))))"
                    )
                )
            assert await _index(conn) == (False, "no WHERE")
        await upgrade(scratch)
        async with engine.connect() as conn:
            assert await _index(conn) == (True, "WHERE (pseudonymised_at IS NULL)")
    finally:
        await engine.dispose()


async def _index(conn: AsyncConnection) -> tuple[bool, str]:
    valid, definition = (
        await conn.execute(
            text(
                "SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index"
                " WHERE indexrelid = to_regclass('ix_retention_verifications_unpseudonymised')"
            )
        )
    ).one()
    where = definition.partition(" WHERE ")[2]
    return valid, f"WHERE {where}" if where else "no WHERE"
