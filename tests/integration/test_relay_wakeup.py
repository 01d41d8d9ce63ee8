"""The relay wakes on the outbox writers' NOTIFY; polling stays the backstop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.outbox import relay as relay_module
from coordinator.outbox import write as write_module
from coordinator.outbox.lookup import event_counts
from coordinator.outbox.relay import OutboxRelay
from coordinator.outbox.wakeup import CHANNEL, MIN_GAP_S, Wakeup
from coordinator.outbox.write import EventBatch, enqueue
from coordinator.settings import RelaySettings
from coordinator.store.db import connect_outside_pool
from schemas import KafkaSettings
from tests.outbox import insert_rows, outbox_rows

# The idle sleep of the tests that rely on the notification: longer than each test.
IDLE_LONG = 30.0

_LISTENERS = text(
    "SELECT pid FROM pg_stat_activity"
    " WHERE datname = current_database() AND query = :listen AND pid <> pg_backend_pid()"
)


async def listeners(engine: AsyncEngine) -> list[int]:
    """Backends of this database listening on the relay's channel."""
    async with engine.connect() as conn:
        rows = await conn.execute(_LISTENERS, {"listen": f'LISTEN "{CHANNEL}"'})
        return [row.pid for row in rows]


async def eventually(check: Callable[[], Awaitable[bool]], *, within_s: float) -> None:
    """Wait until `check()` holds; fail the test after `within_s`."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < within_s, f"not within {within_s}s"
        await asyncio.sleep(0.05)


async def published(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return (await event_counts(conn))[1]


@asynccontextmanager
async def running(
    engine: AsyncEngine, topics: KafkaSettings, settings: RelaySettings
) -> AsyncIterator[None]:
    """A relay's `run_forever`, stopped at the end of the block."""
    stop = asyncio.Event()
    async with OutboxRelay(engine, topics, settings=settings) as relay:
        task = asyncio.create_task(relay.run_forever(stop))
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    # Stopping closes the listening connection too.
    await eventually(lambda: _has_no_listener(engine), within_s=10)


async def test_a_batch_written_while_the_relay_idles_is_published_on_its_notification(
    engine: AsyncEngine, topics: KafkaSettings
) -> None:
    settings = RelaySettings(idle_sleep_s=IDLE_LONG)
    async with running(engine, topics, settings):
        await eventually(lambda: _has_listener(engine), within_s=10)
        # The rounds the start and the listener's opening cause are over: the relay idles.
        await asyncio.sleep(1.0)
        await insert_rows(engine, outbox_rows(40))
        await eventually(lambda: _published(engine, 40), within_s=5)
        # A second batch, after the first's round: woken again.
        await insert_rows(engine, outbox_rows(25, start=100))
        await eventually(lambda: _published(engine, 65), within_s=5)


async def test_a_killed_listener_comes_back_and_polling_publishes_meanwhile(
    engine: AsyncEngine, topics: KafkaSettings
) -> None:
    settings = RelaySettings(idle_sleep_s=0.5, backoff_initial_s=0.05)
    async with running(engine, topics, settings):
        await eventually(lambda: _has_listener(engine), within_s=10)
        (first,) = await listeners(engine)
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        await insert_rows(engine, outbox_rows(30))
        await eventually(lambda: _published(engine, 30), within_s=10)
        await eventually(lambda: _has_listener(engine, other_than=first), within_s=10)
    # Listening again after a kill: with the idle sleep long, a batch still goes out at once.
    settings = RelaySettings(idle_sleep_s=IDLE_LONG)
    async with running(engine, topics, settings):
        await eventually(lambda: _has_listener(engine), within_s=10)
        await asyncio.sleep(1.0)
        (second,) = await listeners(engine)
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": second})
        await eventually(lambda: _has_listener(engine, other_than=second), within_s=10)
        await insert_rows(engine, outbox_rows(20, start=100))
        await eventually(lambda: _published(engine, 50), within_s=5)


async def test_a_relay_that_cannot_listen_polls_and_says_so_once(
    engine: AsyncEngine, topics: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = 0

    async def refused(_engine: AsyncEngine) -> Any:
        nonlocal attempts
        attempts += 1
        raise ConnectionRefusedError(111, "Connect call failed")

    monkeypatch.setattr(relay_module, "connect_outside_pool", refused)
    settings = RelaySettings(idle_sleep_s=0.3, backoff_initial_s=0.05, backoff_max_s=0.2)
    with structlog.testing.capture_logs() as logs:
        async with running(engine, topics, settings):
            await insert_rows(engine, outbox_rows(30))
            await eventually(lambda: _published(engine, 30), within_s=10)
            await eventually(lambda: _attempted(attempts, 4), within_s=10)
    down = [e for e in logs if e["event"] == "relay_listener_down"]
    assert down == [
        {
            "event": "relay_listener_down",
            "log_level": "warning",
            "error": "ConnectionRefusedError errno 111",
            "polling": True,
        }
    ]


async def test_the_outbox_writer_notifies_on_commit_only(engine: AsyncEngine) -> None:
    received: list[str] = []
    listener = await connect_outside_pool(engine)
    try:
        await listener.add_listener(CHANNEL, lambda *args: received.append(args[3]))

        async with engine.connect() as conn, conn.begin() as transaction:
            await enqueue_one(conn)
            await transaction.rollback()
        # Two transactions, two batches each: one notification per commit.
        await insert_rows(engine, outbox_rows(10) + outbox_rows(5, policy="other", start=50))
        await insert_rows(engine, outbox_rows(10, start=100) + outbox_rows(5, start=200))
        await eventually(lambda: _received(received, 2), within_s=5)
        await asyncio.sleep(0.5)
    finally:
        await listener.close()
    assert received == ["", ""]


async def enqueue_one(conn: AsyncConnection) -> None:
    """An outbox batch of one event, written inside `conn`'s transaction."""
    row = outbox_rows(1)[0]
    await enqueue(
        conn,
        EventBatch(
            policy=row["policy"],
            event_type=row["event_type"],
            entity_type=row["entity_type"],
            legal_basis=row["legal_basis"],
            initiated_at=row["initiated_at"],
            deadline=row["deadline"],
            entity_ids=[row["entity_id"]],
        ),
    )


async def _has_listener(engine: AsyncEngine, *, other_than: int | None = None) -> bool:
    return any(pid != other_than for pid in await listeners(engine))


async def _has_no_listener(engine: AsyncEngine) -> bool:
    return not await listeners(engine)


async def _published(engine: AsyncEngine, events: int) -> bool:
    return await published(engine) >= events


async def _attempted(attempts: int, at_least: int) -> bool:
    return attempts >= at_least


async def _received(received: list[str], count: int) -> bool:
    return len(received) >= count


async def test_no_notification_while_the_servers_queue_is_past_the_bound(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notification queue filled by anyone must not fail the outbox's writers at commit:
    past the bound (here 0, so always) the batch is written and nobody is woken."""
    monkeypatch.setattr(write_module, "_NOTIFY", write_module.notify_statement(below=0.0))
    received: list[str] = []
    listener = await connect_outside_pool(engine)
    try:
        await listener.add_listener(CHANNEL, lambda *args: received.append(args[3]))
        async with engine.begin() as conn:
            await enqueue_one(conn)
        await asyncio.sleep(0.5)
    finally:
        await listener.close()
    assert received == []
    async with engine.connect() as conn:
        assert (await event_counts(conn))[0] == 1


async def test_a_flood_of_notifications_wakes_no_more_often_than_the_least_gap() -> None:
    """Anyone who can connect may NOTIFY the channel: woken back to back, the relay still
    waits MIN_GAP_S between two wake-ups (and a stop ends the wait at once)."""
    wakeup, stop = Wakeup(), asyncio.Event()
    woken = 0
    start = time.monotonic()
    while time.monotonic() - start < 0.5:
        wakeup._on_notification()
        await wakeup.wait(stop, IDLE_LONG)
        woken += 1
    assert woken <= 0.5 / MIN_GAP_S + 2
    wakeup._on_notification()
    stop.set()
    started = time.monotonic()
    await wakeup.wait(stop, IDLE_LONG)
    assert time.monotonic() - started < MIN_GAP_S


class _SlowToClose:
    """A listening connection whose close takes a while."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()

    def add_termination_listener(self, callback: Callable[[Any], None]) -> None:
        pass

    async def add_listener(self, channel: str, callback: Callable[..., None]) -> None:
        pass

    async def close(self, timeout: float) -> None:
        self.closing.set()
        await asyncio.sleep(timeout)

    def terminate(self) -> None:
        pass


async def test_cancelling_the_task_that_closes_the_wakeup_is_not_swallowed() -> None:
    conn = _SlowToClose()

    async def connect() -> _SlowToClose:
        return conn

    async def run() -> None:
        async with Wakeup(connect):
            await asyncio.sleep(0.05)

    task = asyncio.create_task(run())
    await asyncio.wait_for(conn.closing.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
