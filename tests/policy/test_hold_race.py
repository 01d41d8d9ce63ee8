"""A hold committed while a purge batch runs never loses (50 interleavings).

The hook pauses a batch *after* it selected its rows and *before* it deletes them, and
starts creating a hold over due rows (some in this batch, some in later ones) on another
connection. It lets the batch continue only once the hold creation is blocked on a lock,
or finished. Without the lock of coordinator.purge.holds the hold commits during the pause and
the batch then deletes rows under a committed hold; the audit log shows it, because both
append to it in their transactions and the chain lock orders them by commit.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.policy.model import parse_policies
from coordinator.purge.batch import PurgeBatch
from coordinator.purge.holds import create_hold, entity_types
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.tables import audit_log, legal_hold_entities, legal_holds
from demo.seed_data import session_logs
from tests.policy import hooks
from tests.policy.conftest import NOW

POLICY = """
policies:
  - name: sessions
    table: session_logs
    entity_type: session
    timestamp_column: created_at
    retention: 90d
    action: delete
    legal_basis: test
    batch_size: 5
    before_purge: "tests.policy.hooks:record"
"""
ROWS = 20


async def _blocked_on_lock(conn: AsyncConnection) -> bool:
    # Activity is snapshotted per transaction; this runs inside the batch's transaction.
    await conn.execute(select(func.pg_stat_clear_snapshot()))
    waiting = await conn.execute(
        select(func.count())
        .select_from(text("pg_stat_activity"))
        .where(
            text("wait_event_type = 'Lock' AND wait_event = 'advisory'"),
            text("pid <> pg_backend_pid()"),
            text("datname = current_database()"),  # the shared server's other databases
        )
    )
    return bool(waiting.scalar())


async def _one_race(
    engine: AsyncEngine, runner: Runner, rng: random.Random
) -> tuple[set[str], set[str]]:
    async with engine.begin() as conn:
        await conn.execute(delete(session_logs))
        await conn.execute(delete(legal_hold_entities))
        await conn.execute(delete(legal_holds))
        await conn.execute(
            insert(session_logs),
            [
                {"id": i, "user_id": "u", "created_at": NOW - timedelta(days=100 + i)}
                for i in range(1, ROWS + 1)
            ],
        )
    targets = {f"session:{i}" for i in rng.sample(range(1, ROWS + 1), 6)}
    pause_at = rng.randrange(ROWS // 5)
    hold_task: asyncio.Task[object] | None = None

    async def create() -> object:
        async with engine.begin() as conn:
            return await create_hold(
                conn,
                types=await entity_types(conn, parse_policies(POLICY, hook_modules=hooks.ALLOWED)),
                entities=targets,
                reason="race",
                created_by="legal",
                now=NOW,
            )

    async def interleave(conn: AsyncConnection, batch: PurgeBatch) -> None:
        nonlocal hold_task
        if len(hooks.calls) - 1 != pause_at:
            return
        hold_task = asyncio.create_task(create())
        for _ in range(1000):
            if hold_task.done() or await _blocked_on_lock(conn):
                return
            await asyncio.sleep(0.002)
        raise AssertionError("hold creation neither finished nor blocked")

    hooks.calls.clear()
    hooks.interceptor = interleave
    try:
        report = await runner.run()
    finally:
        hooks.interceptor = None
    assert hold_task is not None
    await hold_task
    assert report.ok, report.as_dict()
    async with engine.connect() as conn:
        remaining = {
            f"session:{i}" for i in (await conn.execute(select(session_logs.c.id))).scalars()
        }
    return targets, remaining


async def _assert_no_purge_after_hold(engine: AsyncEngine) -> None:
    """No purge batch commits after a hold covering one of its rows committed."""
    async with engine.connect() as conn:
        entries = (await conn.execute(select(audit_log).order_by(audit_log.c.seq))).all()
    held: set[str] = set()
    for entry in entries:
        if entry.action == "hold.create":
            held |= set(entry.data["entities"])
        elif entry.action == "purge.batch":
            purged = {f"{entry.data['entity_type']}:{i}" for i in entry.data["ids"]}
            assert not purged & held, f"batch at seq {entry.seq} purged held {purged & held}"
        elif entry.action == "run.finish":
            held = set()


async def test_hold_committed_during_a_batch_is_never_lost(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings
) -> None:
    runner = Runner(
        engine, parse_policies(POLICY, hook_modules=hooks.ALLOWED), settings, clock=clock
    )
    rng = random.Random(20261129)
    for _ in range(50):
        targets, remaining = await _one_race(engine, runner, rng)
        # every held row that was not purged before the hold committed is still there
        purged_before_hold = {f"session:{i}" for i in range(1, ROWS + 1)} - remaining
        assert targets - purged_before_hold <= remaining
        await _assert_no_purge_after_hold(engine)
        async with engine.begin() as conn:
            await conn.execute(delete(audit_log))
