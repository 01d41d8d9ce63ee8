"""Holds against a delete's two batches in flight (coordinator.purge.runner.Runner._pipelined).

The serial proofs (test_hold_race.py) run a policy with a `before_purge` hook, which
runs its batches one by one; these run the pipelined path: a hold created while batch
N+1 has deleted (uncommitted) and N has committed protects every row purged after it,
and a batch that fails while recording, with a hold's creation queued behind it and the
batch ahead queued behind the creation, ends the run instead of hanging it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.policy.model import parse_policies
from coordinator.purge.holds import HOLD_LOCK, create_hold, entity_types
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from demo.seed_data import orders
from tests.policy.conftest import NOW, add_orders
from tests.policy.test_hold_race import _assert_no_purge_after_hold
from tests.policy.test_pipelined_batches import POLICY, Refused

T = TypeVar("T")


def in_thread(url: str, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """`work` on its own engine and event loop: the run's loop is paused in a callback."""
    out: list[T] = []

    async def go() -> None:
        engine = make_engine(url, pool_size=1)
        try:
            out.append(await work(engine))
        finally:
            await engine.dispose()

    thread = threading.Thread(target=asyncio.run, args=(go(),))
    thread.start()
    thread.join(30)
    assert out, "the helper connection did not answer within 30 s"
    return out[0]


async def creation_queued(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        waiting = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND mode = 'ExclusiveLock' AND objid = :key AND database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"key": HOLD_LOCK},
        )
    return bool(waiting)


async def test_a_hold_created_while_the_next_batch_is_in_flight_protects_what_follows(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings, coordinator_db: str
) -> None:
    await add_orders(engine, range(1, 61), age_days=40)
    policies = parse_policies(POLICY)
    # Batch 3's window (ids 21-30) and later ones: batch 3 deleted its rows before the
    # hold existed and may purge them; no batch recorded after the hold may.
    targets = {f"order:{i}" for i in range(21, 61, 3)}
    created: list[Any] = []

    async def create(other: AsyncEngine) -> None:
        async with other.begin() as conn:
            created.append(
                await create_hold(
                    conn,
                    types=await entity_types(conn, policies),
                    entities=targets,
                    reason="race",
                    created_by="legal",
                    now=NOW,
                )
            )

    async def next_batch_deleted(other: AsyncEngine) -> bool:
        async with other.connect() as conn:
            idle = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state = 'idle in transaction' AND query LIKE 'WITH%DELETE FROM orders%'"
                )
            )
        return bool(idle)

    creations: list[threading.Thread] = []

    def progress(policy: str, processed: int, due: int) -> None:
        if processed != 20:  # batch 2 committed; batch 3 is in flight
            return
        deadline = time.monotonic() + 10
        while not in_thread(coordinator_db, next_batch_deleted):
            assert time.monotonic() < deadline, "batch 3 never deleted while batch 2 recorded"
            time.sleep(0.02)
        creation = threading.Thread(target=in_thread, args=(coordinator_db, create))
        creations.append(creation)
        creation.start()
        deadline = time.monotonic() + 20
        while creation.is_alive() and not in_thread(coordinator_db, creation_queued):
            assert time.monotonic() < deadline, "the hold's creation neither queued nor done"
            time.sleep(0.02)

    report = await Runner(engine, policies, settings, clock=clock).run(progress=progress)
    creations[0].join(30)
    assert created, "the hold was not created"
    assert report.ok, report.as_dict()
    await _assert_no_purge_after_hold(engine)


@pytest.mark.parametrize("failure", ["python", "server"])
async def test_a_batch_failing_to_record_with_a_hold_queued_behind_it_ends_the_run(
    engine: AsyncEngine,
    clock: FrozenClock,
    settings: Settings,
    coordinator_db: str,
    failure: str,
) -> None:
    # Batch 2 holds the shared hold lock and is recording; a hold's creation queues for
    # the lock exclusively; batch 3 asks for it shared and queues behind the creation;
    # then batch 2 fails. A Python-side failure leaves its transaction open: unless it
    # is rolled back before the run waits for batch 3, nothing ever moves.
    await add_orders(engine, range(1, 36), age_days=40)
    shared_locks = 0
    outbox_rows = 0
    created = threading.Event()

    async def create(other: AsyncEngine) -> None:
        # What a hold's creation does first: the exclusive lock, in its transaction.
        async with other.begin() as conn:
            await conn.execute(select(func.pg_advisory_xact_lock(HOLD_LOCK)))
        created.set()

    def interleave(*args: Any) -> tuple[str, Any]:
        nonlocal shared_locks, outbox_rows
        statement, parameters = args[2], args[3]
        flat = " ".join(statement.split())
        if "pg_advisory_xact_lock_shared" in flat:
            shared_locks += 1
            if shared_locks == 3:  # batch 3 is about to ask; batch 2 holds the lock
                threading.Thread(target=in_thread, args=(coordinator_db, create)).start()
                deadline = time.monotonic() + 20
                while not in_thread(coordinator_db, creation_queued):
                    assert time.monotonic() < deadline, "the hold's creation never queued"
                    time.sleep(0.02)
        if flat.startswith("WITH batch AS (INSERT INTO retention_outbox_batches"):
            outbox_rows += 1
            if outbox_rows == 2 and failure == "python":
                raise Refused("batch 2's outbox row")
            if outbox_rows == 2 and failure == "server":
                return "SELECT 1/0", ()
        return statement, parameters

    event.listen(engine.sync_engine, "before_cursor_execute", interleave, retval=True)
    try:
        async with asyncio.timeout(30):
            report = await Runner(engine, parse_policies(POLICY), settings, clock=clock).run()
    except TimeoutError:
        pytest.fail("the run hung: the batch ahead waits on the hold's creation, which waits")
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", interleave)
    assert created.wait(30), "the hold's creation never went through"
    assert not report.ok
    async with engine.connect() as conn:
        left = await conn.scalar(select(func.count()).select_from(orders))
    assert left == 35 - 10, "batch 1 purged; the failed batch and the one ahead rolled back"
