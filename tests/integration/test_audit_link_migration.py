"""Migration 0031 (`audit_link`): it runs beside trackers' transactions, builds its index
on every partition, and its downgrade keeps the evidence the links pointed at."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.evidence.partitions import AUDIT, Month, ensure_months
from coordinator.store.db import make_engine
from coordinator.store.migrate import alembic_config, upgrade
from tests import infra

BEFORE = "0030_ack_row_event_ms"


@pytest.fixture
async def scratch(postgres_url: str) -> AsyncIterator[str]:
    url = await infra.create_database(postgres_url, "audit_link_migration")
    try:
        await upgrade(url, BEFORE)
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                await ensure_months(conn, [Month.of(datetime.now(UTC))], AUDIT)
                await conn.execute(
                    text(
                        "INSERT INTO audit_log (seq, at, action, actor, data, prev_hash, hash)"
                        " SELECT g, now(), 'events_published', 'relay', '{}'::jsonb, 'x', 'y'"
                        " FROM generate_series(1, 2000) g"
                    )
                )
        finally:
            await engine.dispose()
        yield url
    finally:
        await infra.drop_database(url)


async def _migrate_beside(url: str, first: str, *then: str) -> None:
    """Hold a transaction that has done `first`, start the migration, let it queue, then
    do `then` and commit: with a deadlock PostgreSQL would abort one of the two."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.begin()
            await conn.execute(text(first))
            migration = asyncio.create_task(upgrade(url))
            await asyncio.sleep(0.5)
            for statement in then:
                await conn.execute(text(statement))
            await conn.commit()
        await asyncio.wait_for(migration, 60)
    finally:
        await engine.dispose()


async def test_it_runs_beside_an_ack_batch(scratch: str) -> None:
    """An ack batch locks its events' status rows, writes the ledger, then reads the
    chain's head: the migration must not hold the audit log while it waits for those."""
    await _migrate_beside(
        scratch,
        "SELECT event_id FROM retention_event_status FOR UPDATE",
        "SELECT pg_advisory_xact_lock(1)",
        "SELECT seq FROM audit_log ORDER BY seq DESC LIMIT 1",
    )
    await _assert_indexed(scratch)


async def test_it_runs_beside_a_tracking_pass(scratch: str) -> None:
    """A tracking pass reads the chain's head first, then writes status rows."""
    await _migrate_beside(
        scratch,
        "SELECT seq FROM audit_log ORDER BY seq DESC LIMIT 1",
        "SELECT event_id FROM retention_event_status FOR UPDATE",
    )
    await _assert_indexed(scratch)


async def test_queued_behind_a_long_transaction_it_holds_writers_up_a_moment_only(
    scratch: str,
) -> None:
    """A transaction reading the audit log keeps the migration's `ALTER` waiting; the
    log's writers queue behind that `ALTER`, so it gives its turn up every lock timeout
    and tries again, and finishes once the reader is gone."""
    engine = make_engine(scratch)
    try:
        async with engine.connect() as reader, engine.connect() as writer:
            await reader.begin()
            await reader.execute(text("SELECT count(*) FROM audit_log"))
            migration = asyncio.create_task(upgrade(scratch))
            try:
                await _until_a_lock_is_awaited(engine)
                started = asyncio.get_running_loop().time()
                await asyncio.wait_for(
                    writer.execute(
                        text(
                            "INSERT INTO audit_log (seq, at, action, actor, data, prev_hash,"
                            " hash) VALUES (5000, now(), 'events_published', 'relay', '{}',"
                            " 'x', 'y')"
                        )
                    ),
                    10,
                )
                waited = asyncio.get_running_loop().time() - started
                await writer.commit()
                assert not migration.done()
            finally:
                await reader.commit()
            await asyncio.wait_for(migration, 60)
    finally:
        await engine.dispose()
    assert waited < 5
    await _assert_indexed(scratch)


async def _until_a_lock_is_awaited(engine: AsyncEngine) -> None:
    """Until a session of this database waits for a table lock (the migration's)."""
    async with engine.connect() as conn:
        for _ in range(200):
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                    " WHERE d.datname = current_database() AND l.locktype = 'relation'"
                    " AND NOT l.granted"
                )
            )
            await conn.rollback()
            if waiting:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the migration never waited for a lock")


async def test_run_again_after_an_interruption_it_finishes(scratch: str) -> None:
    """Its statements commit one by one: a run stopped after some of them leaves the
    revision at 0030, and the next run must get past what is already there."""
    await upgrade(scratch)
    await asyncio.to_thread(command.stamp, alembic_config(scratch), BEFORE)
    await upgrade(scratch)
    await _assert_indexed(scratch)


async def _assert_indexed(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            indexes = (
                await conn.execute(
                    text(
                        "SELECT c.relname, x.indisvalid FROM pg_index x"
                        " JOIN pg_class c ON c.oid = x.indexrelid"
                        " JOIN pg_class t ON t.oid = x.indrelid"
                        " WHERE t.relname LIKE 'audit_log%' AND c.relname LIKE '%link%'"
                    )
                )
            ).all()
            partitions = await _one(
                conn, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'audit_log'::regclass"
            )
            plan = "\n".join(
                (
                    await conn.execute(
                        text(
                            "EXPLAIN SELECT seq FROM audit_log"
                            " WHERE link = 7 AND action = 'acks_accepted'"
                        )
                    )
                ).scalars()
            )
    finally:
        await engine.dispose()
    # The parent's (valid once every partition's is attached) and each partition's.
    assert len(indexes) == 1 + partitions, indexes
    assert all(valid for _, valid in indexes), indexes
    assert "link" in plan, plan
    assert "Index" in plan, plan


async def _one(conn: AsyncConnection, sql: str) -> Any:
    return (await conn.execute(text(sql))).scalar_one()


async def test_the_downgrade_writes_each_link_back_as_its_entry_seq(scratch: str) -> None:
    await upgrade(scratch)
    event = uuid.uuid4()
    engine = make_engine(scratch)
    try:
        async with engine.begin() as conn:
            # One batch's entries: accepted and rejected rows share a link, told apart by
            # the action; an older entry with the same action has another link.
            await conn.execute(
                text(
                    "INSERT INTO audit_log (seq, at, action, actor, data, prev_hash, hash, link)"
                    " VALUES (2001, now(), 'acks_accepted', 'tracker', '{}', 'x', 'y', 1),"
                    " (2002, now(), 'acks_accepted', 'tracker', '{}', 'x', 'y', 2),"
                    " (2003, now(), 'acks_rejected', 'tracker', '{}', 'x', 'y', 2),"
                    " (2004, now(), 'events_completed', 'tracker', '{}', 'x', 'y', 2)"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO retention_ack_ledger (received_at, kafka_topic,"
                    " kafka_partition, kafka_offset, event_id, accepted, audit_seq, audit_link,"
                    " event_at) VALUES"
                    " (now(), 'acks', 0, 1, :e, true, NULL, 2, now()),"
                    " (now(), 'acks', 0, 2, NULL, false, NULL, 2, now()),"
                    " (now(), 'acks', 0, 3, NULL, false, 1500, NULL, now())"
                ),
                {"e": event},
            )
            await conn.execute(
                text(
                    "INSERT INTO retention_event_status (event_id, policy, event_type,"
                    " entity_type, entity_id, initiated_at, published_at, deadline, state,"
                    " expected, completed_at, tracked_at, updated_at, completed_audit_link)"
                    " VALUES (:e, 'p', 'delete', 'user', 'u1', now(), now(), now(),"
                    " 'completed', 1, now(), now(), now(), 2)"
                ),
                {"e": event},
            )
        await asyncio.to_thread(command.downgrade, alembic_config(scratch), BEFORE)
        async with engine.connect() as conn:
            seqs = (
                await conn.execute(
                    text("SELECT kafka_offset, audit_seq FROM retention_ack_ledger ORDER BY 1")
                )
            ).all()
            completed = await _one(conn, "SELECT completed_audit_seq FROM retention_event_status")
    finally:
        await engine.dispose()
    assert [tuple(r) for r in seqs] == [(1, 2002), (2, 2003), (3, 1500)]
    assert completed == 2004
