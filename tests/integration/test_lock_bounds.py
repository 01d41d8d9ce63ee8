"""A one-shot command's bounded lock waits (RETENTION_CLI_LOCK_TIMEOUT_S) never cut a
step that must follow what is done: a republished batch's audit entry waits for the
chain's lock however long. And every coordinator session reads committed data whatever
the database's default isolation, which the audit chain's writers rely on."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from coordinator.clock import FrozenClock
from coordinator.evidence import audit
from coordinator.evidence.audit import AuditAction, AuditEntry
from coordinator.operations.republish import Republisher, Selection
from coordinator.store import db
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from coordinator.store.tables import audit_log
from tests import infra
from tests.integration.tracking_support import insert_published

T0 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


class _Recording:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def publish(self, topic: str, records: Sequence[Any]) -> None:
        self.sent.extend(records)


async def test_a_republished_batch_waits_for_its_audit_entry_past_the_bound(
    coordinator_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chain's lock held past the command's bound once the batch is sent: the
    republish waits, then audits what it sent (before: records out, no entry, 55P03)."""
    monkeypatch.setattr(db, "_session", dict(db._session))
    plain = make_engine(coordinator_db, pool_size=2)
    db.bound_lock_waits(1.0)
    bounded = make_engine(coordinator_db, pool_size=2)
    try:
        now = datetime.now(UTC)
        [event] = await insert_published(plain, ["u-bound"], published_at=now)
        publisher = _Recording()
        republisher = Republisher(
            bounded, publisher, topic="events", signer=None, clock=FrozenClock(now)
        )
        async with plain.connect() as holder:
            await holder.execute(select(func.pg_advisory_xact_lock(audit.CHAIN_LOCK)))
            running = asyncio.create_task(
                republisher.republish(Selection(event_id=event), actor="test")
            )
            await asyncio.sleep(2.5)
            assert not running.done()
            assert len(publisher.sent) == 1  # sent, its entry waiting for the lock
            await holder.rollback()
        outcome = await running
        async with plain.connect() as conn:
            audited = await conn.scalar(
                select(func.count())
                .select_from(audit_log)
                .where(audit_log.c.action == AuditAction.EVENTS_REPUBLISHED)
            )
    finally:
        await plain.dispose()
        await bounded.dispose()
    assert outcome.sent == [event]
    assert audited == 1


async def test_sessions_read_committed_whatever_the_database_default(postgres_url: str) -> None:
    """Under a database default of REPEATABLE READ, a writer whose snapshot predates the
    chain lock's release would read a stale head and fork the chain; our sessions set
    READ COMMITTED themselves, so the second writer chains onto the first."""
    url = await infra.create_database(postgres_url, "isolation")
    try:
        await upgrade(url)
        engine = make_engine(url, pool_size=4)
        try:
            async with engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                name = await conn.scalar(select(func.current_database()))
                await conn.execute(
                    text(
                        f'ALTER DATABASE "{name}" SET default_transaction_isolation'
                        " = 'repeatable read'"
                    )
                )
            await engine.dispose()
            async with engine.connect() as conn:
                assert await conn.scalar(text("SHOW transaction_isolation")) == "read committed"
            entry = AuditEntry(AuditAction.PURGE_BATCH, "test", {"count": 1})
            async with engine.connect() as first:
                await first.begin()
                await audit.append(first, [entry], at=T0)

                async def second() -> None:
                    async with engine.begin() as conn:
                        await conn.execute(select(1))  # a snapshot before the lock's wait
                        await audit.append(conn, [entry], at=T0 + timedelta(seconds=1))

                waiting = asyncio.create_task(second())
                await asyncio.sleep(0.5)
                assert not waiting.done()
                await first.commit()
            await waiting
            async with engine.connect() as conn:
                checked, broken = await audit.verify(conn)
                seqs = list(
                    (
                        await conn.execute(select(audit_log.c.seq).order_by(audit_log.c.seq))
                    ).scalars()
                )
        finally:
            await engine.dispose()
    finally:
        await infra.drop_database(url)
    assert broken is None
    assert seqs == list(range(1, checked + 1))


@pytest.mark.parametrize("autocommit", [True, False])
async def test_unbounded_lock_waits_lift_the_bound_and_bring_it_back(
    coordinator_db: str, monkeypatch: pytest.MonkeyPatch, autocommit: bool
) -> None:
    """Inside, no bound; after, the session's bound again, also when the step failed (on
    an autocommit session nothing else would put it back: the pool reuses the session)."""
    monkeypatch.setattr(db, "_session", dict(db._session))
    db.bound_lock_waits(1.5)
    engine = make_engine(coordinator_db, pool_size=1)
    bound = select(func.current_setting("lock_timeout"))
    try:
        async with engine.connect() as conn:
            if autocommit:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
            async with db.unbounded_lock_waits(conn):
                assert await conn.scalar(bound) == "0"
            assert await conn.scalar(bound) == "1500ms"
            with pytest.raises(DBAPIError, match="division by zero"):
                async with db.unbounded_lock_waits(conn):
                    await conn.execute(text("SELECT 1 / 0"))
            if not autocommit:
                await conn.rollback()
            assert await conn.scalar(bound) == "1500ms"
    finally:
        await engine.dispose()


async def test_a_cancelled_unbounded_wait_stays_a_cancellation(
    coordinator_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait inside cancelled (a timeout, a stopping `serve`, Ctrl-C) comes out as the
    cancellation, not as the restore's failure on the session the cancellation
    invalidated (an erasure's `except Exception` would have recorded it as a table's
    error and gone on); the pool's session has its bound (review30)."""
    monkeypatch.setattr(db, "_session", dict(db._session))
    db.bound_lock_waits(1.5)
    holder_engine = make_engine(coordinator_db, pool_size=1)
    engine = make_engine(coordinator_db, pool_size=1)
    key = 730_301
    try:
        async with holder_engine.connect() as holder:
            await holder.execution_options(isolation_level="AUTOCOMMIT")
            await holder.execute(select(func.pg_advisory_lock(key)))

            async def wait() -> None:
                async with engine.connect() as conn:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                    async with db.unbounded_lock_waits(conn):
                        await conn.execute(select(func.pg_advisory_lock(key)))

            with pytest.raises(TimeoutError):
                await asyncio.wait_for(wait(), 3.0)
            await holder.execute(select(func.pg_advisory_unlock(key)))
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.current_setting("lock_timeout"))) == "1500ms"
    finally:
        await engine.dispose()
        await holder_engine.dispose()
