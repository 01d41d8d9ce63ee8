"""Hung handlers in a batch transaction on the real database, through the dispatcher.

A handler (per event or per batch) that hangs in a statement, or that swallows its
cancellation, must neither wedge its batch nor leave a transaction open: the batch ends,
the events before the culprit are committed, the culprit fails (`HandlerTimeout` after
its attempts, `HandlerAbandoned` at once), and the events after it complete.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from consumer_sdk import AckStatus, ConsumerSettings, RetentionConsumer, RetentionEvent
from consumer_sdk.idempotency import PostgresIdempotencyStore
from consumer_sdk.testing import TestConsumer
from coordinator.store.db import make_engine
from tests.sdk.helpers import event

SETTINGS = ConsumerSettings(
    database_url=None, handler_timeout_s=0.3, handler_cancel_grace_s=0.3, max_attempts=2
)


@pytest.fixture
async def engine(fresh_database: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(fresh_database)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS erased (entity_id text PRIMARY KEY)"))
        await conn.execute(text("TRUNCATE erased"))
    yield engine
    await engine.dispose()


async def _hang(kind: str, conn: AsyncConnection, released: asyncio.Event) -> None:
    if kind == "sleep":
        await conn.execute(text("SELECT pg_sleep(3600)"))
    while kind == "swallow" and not released.is_set():
        try:
            await released.wait()
        except asyncio.CancelledError:  # the mistake under test
            continue


async def _open_transactions(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND (state <> 'idle' OR xact_start IS NOT NULL)"
            )
        )
    return int(found or 0)


async def _erased(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(text("SELECT entity_id FROM erased"))).scalars())


@pytest.mark.parametrize("batch", [False, True], ids=["per-event", "batch"])
@pytest.mark.parametrize("kind", ["sleep", "swallow"])
async def test_a_hung_handler_ends_its_batch_and_no_transaction_stays_open(
    engine: AsyncEngine, fresh_database: str, batch: bool, kind: str
) -> None:
    app = RetentionConsumer("svc", settings=SETTINGS, database_url=fresh_database)
    released = asyncio.Event()

    async def erase(e: RetentionEvent, conn: AsyncConnection) -> int:
        await conn.execute(text("INSERT INTO erased VALUES (:id)"), {"id": e.entity_id})
        if e.entity_id == "culprit":
            await _hang(kind, conn, released)
        return 1

    if batch:

        @app.on_delete_batch("user")
        async def erase_all(events: Sequence[RetentionEvent], conn: AsyncConnection) -> list[int]:
            return [await erase(e, conn) for e in events]

    else:

        @app.on_delete("user")
        async def erase_one(e: RetentionEvent, conn: AsyncConnection) -> int:
            return await erase(e, conn)

    events = [event("before"), event("culprit"), event("after")]
    try:
        async with TestConsumer(app, store=PostgresIdempotencyStore(engine)) as t:
            delivery = asyncio.ensure_future(t.deliver(*events))
            # Not wait_for: it would wait for a handler that ignores its cancellation.
            done, _ = await asyncio.wait({delivery}, timeout=30)
            assert done, "the hung handler wedged its batch"
            acks = {a.entity_id: a for a in delivery.result()}
            open_transactions = await _open_transactions(engine)
    finally:
        released.set()
    culprit = acks["culprit"]
    expected = ("HandlerAbandoned", 1) if kind == "swallow" else ("HandlerTimeout", 2)
    assert (culprit.status, culprit.detail, culprit.attempt) == (AckStatus.FAILED, *expected)
    assert {acks["before"].status, acks["after"].status} == {AckStatus.COMPLETED}
    assert await _erased(engine) == {"before", "after"}
    assert open_transactions == 0
