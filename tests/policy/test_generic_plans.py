"""A run whose count says most of the table is due runs its one-pass batches under the
generic plans PostgreSQL caches; any other run plans each batch for its parameters
(coordinator/purge/batch.py `act_batch`, coordinator/purge/planner.py `DueCount`)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.evidence import audit
from coordinator.policy.binding import bind_policies
from coordinator.policy.model import parse_policies
from coordinator.purge.batch import RunStatements, purge_batch
from coordinator.purge.holds import create_hold, entity_types
from coordinator.purge.planner import count_due
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from demo.seed_data import orders
from tests.policy.conftest import NOW, add_orders

POLICY = """
services:
  - {name: billing, owner: tests, handles: {order: [delete]}}
policies:
  - name: orders
    table: orders
    entity_type: order
    timestamp_column: created_at
    retention: 30d
    action: delete
    legal_basis: test
    batch_size: 10
    fan_out: true
"""


async def _analyze(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("ANALYZE orders"))


async def _bound(engine: AsyncEngine, settings: Settings) -> Any:
    async with engine.connect() as conn:
        bound, _ = await bind_policies(conn, parse_policies(POLICY), settings)
    return bound["orders"]


async def test_the_count_says_whether_most_of_the_table_is_due(
    engine: AsyncEngine, settings: Settings
) -> None:
    await add_orders(engine, range(1, 31), age_days=40)
    await add_orders(engine, range(31, 46), age_days=1)
    bound = await _bound(engine, settings)
    async with engine.connect() as conn:
        # Never analyzed: the statistics know nothing, so no generic plans.
        assert not (await count_due(conn, bound, NOW)).mostly_due
    await _analyze(engine)
    async with engine.connect() as conn:
        counted = await count_due(conn, bound, NOW)
        assert (counted.due, counted.mostly_due) == (30, True)
        types = await entity_types(conn, parse_policies(POLICY))
        # Held rows are not due: 30 - 9 = 21 of 45 is less than half.
        await create_hold(
            conn,
            types=types,
            entities=[f"order:{i}" for i in range(1, 10)],
            reason="test",
            created_by="tests",
            now=NOW,
        )
        counted = await count_due(conn, bound, NOW)
        assert (counted.due, counted.mostly_due) == (21, False)


@pytest.mark.parametrize("young", [5, 40])
async def test_a_mostly_due_run_forces_generic_plans_in_each_batch_and_keeps_held_rows(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings, young: int
) -> None:
    await add_orders(engine, range(1, 26), age_days=40)
    await add_orders(engine, range(26, 26 + young), age_days=1)
    async with engine.begin() as conn:
        await create_hold(
            conn,
            types=await entity_types(conn, parse_policies(POLICY)),
            entities=["order:3", "order:17"],
            reason="test",
            created_by="tests",
            now=NOW,
        )
    await _analyze(engine)
    locks: list[bool] = []

    def record(*args: Any) -> None:
        if "pg_advisory_xact_lock_shared" in args[2]:
            locks.append("force_generic_plan" in str(args[3]))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    report = await Runner(engine, parse_policies(POLICY), settings, clock=clock).run()
    event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert report.ok
    assert report.outcomes[0].processed == 23
    # Batches of 10, 10 and 3, on both of the pipelined run's connections.
    assert locks == [young == 5] * 3
    async with engine.connect() as conn:
        left = (await conn.execute(select(orders.c.id).order_by(orders.c.id))).scalars()
        assert list(left) == [3, 17, *range(26, 26 + young)]
        # The hold, run start, 3 batches, run finish.
        assert await audit.verify(conn) == (6, None)


@pytest.mark.parametrize("mostly_due", [True, False])
async def test_the_batch_statement_runs_its_generic_plan_only_inside_such_a_batch(
    engine: AsyncEngine, settings: Settings, mostly_due: bool
) -> None:
    await add_orders(engine, range(1, 46), age_days=40)
    bound = await _bound(engine, settings)
    statements, after = RunStatements(), None
    async with engine.connect() as conn:
        for _ in range(4):
            async with conn.begin():
                batch = await purge_batch(
                    conn,
                    bound,
                    run_id=uuid.uuid4(),
                    cutoff=NOW - bound.policy.retention,
                    now=NOW,
                    after=after,
                    statements=statements,
                    mostly_due=mostly_due,
                )
                assert (await conn.scalar(text("SHOW plan_cache_mode"))) == (
                    "force_generic_plan" if mostly_due else "auto"
                )
            after = batch.last_scanned
            assert len(batch.ids) == 10
        # The setting ended with each batch's transaction.
        assert (await conn.scalar(text("SHOW plan_cache_mode"))) == "auto"
        plans = (
            await conn.execute(
                text(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                    "WHERE statement LIKE 'WITH %DELETE FROM orders%' "
                    "ORDER BY generic_plans + custom_plans"
                )
            )
        ).all()
        # The first batch's statement, then the one of the three batches after it.
        assert [tuple(p) for p in plans] == ([(1, 0), (3, 0)] if mostly_due else [(0, 1), (0, 3)])
        assert (await conn.scalar(select(func.count()).select_from(orders))) == 5
