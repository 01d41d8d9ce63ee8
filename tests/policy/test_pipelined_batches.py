"""A delete's batches run two in flight (coordinator.purge.runner.Runner._pipelined): a
batch that fails to record rolls back the batch acting ahead of it too."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from sqlalchemy import event, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.evidence import audit
from coordinator.policy.model import parse_policies
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.tables import audit_log, outbox_batches
from demo.seed_data import orders
from tests.policy import test_batch_statements as statements
from tests.policy.conftest import NOW, add_orders

POLICY = statements.POLICY.format(fan_out="true")


class Refused(Exception):
    pass


async def test_a_batch_failing_to_record_rolls_back_the_batch_in_flight_behind_it(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings
) -> None:
    await add_orders(engine, range(1, 26), age_days=40)
    deletes: list[Any] = []
    records = 0

    def fail_second_record(*args: Any) -> None:
        nonlocal records
        flat = " ".join(args[2].split())
        if re.search(r"^WITH .*DELETE FROM orders", flat):
            deletes.append(args[4].compiled_parameters[0].get("after"))
        if flat.startswith("WITH batch AS (INSERT INTO retention_outbox_batches"):
            records += 1
            if records == 2:
                raise Refused("the second batch's outbox row")

    event.listen(engine.sync_engine, "before_cursor_execute", fail_second_record)
    try:
        report = await Runner(engine, parse_policies(POLICY), settings, clock=clock).run()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", fail_second_record)
    outcome = report.outcomes[0]
    assert outcome.status == "error"
    # The third batch had deleted its rows, uncommitted, when the second failed.
    assert deletes == [None, 10, 20]
    async with engine.connect() as conn:
        left = (await conn.execute(select(orders.c.id).order_by(orders.c.id))).scalars()
        assert list(left) == list(range(11, 26))
        assert (await conn.execute(select(func.count()).select_from(outbox_batches))).scalar() == 1
        batches = (
            await conn.execute(
                select(func.count()).where(audit_log.c.action == audit.AuditAction.PURGE_BATCH)
            )
        ).scalar()
        assert batches == 1
        assert (await audit.verify(conn))[1] is None


async def test_one_batch_in_flight_runs_the_batches_on_one_connection(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings
) -> None:
    on: dict[int, int] = {}

    def count(*args: Any) -> None:
        if re.search(r"^WITH .*DELETE FROM orders", " ".join(args[2].split())):
            key = id(args[0].connection.dbapi_connection)
            on[key] = on.get(key, 0) + 1

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        for in_flight, connections in ((1, 1), (2, 2)):
            async with engine.begin() as conn:
                await conn.execute(
                    insert(orders),
                    [
                        {
                            "id": 100 * in_flight + i,
                            "customer_name": f"name {i}",
                            "email": f"u{i}@shop.example",
                            "status": "paid",
                            "total": 1,
                            "created_at": NOW - timedelta(days=40, seconds=i),
                        }
                        for i in range(1, 26)
                    ],
                )
            on.clear()
            chosen = settings.model_copy(update={"purge_batches_in_flight": in_flight})
            report = await Runner(engine, parse_policies(POLICY), chosen, clock=clock).run()
            assert report.ok
            assert report.outcomes[0].processed == 25
            assert len(on) == connections
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)


async def test_a_run_with_one_batch_checks_out_no_second_connection(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings
) -> None:
    """The second connection is for a batch ahead: with none due, it is never checked
    out (from a busy pool the checkout would wait its timeout first)."""
    checkouts = 0

    def checkout(*_: Any) -> None:
        nonlocal checkouts
        checkouts += 1

    event.listen(engine.sync_engine.pool, "checkout", checkout)
    counted: list[int] = []
    try:
        # One batch (5 rows, batch size 10), then none, serial then pipelined.
        for first, due in ((100, 5), (200, 5), (0, 0), (0, 0)):
            if due:
                await add_orders(engine, range(first, first + due), age_days=40)
            in_flight = 1 if len(counted) % 2 == 0 else 2
            chosen = settings.model_copy(update={"purge_batches_in_flight": in_flight})
            checkouts = 0
            report = await Runner(engine, parse_policies(POLICY), chosen, clock=clock).run()
            assert report.ok
            assert report.outcomes[0].processed == due
            counted.append(checkouts)
    finally:
        event.remove(engine.sync_engine.pool, "checkout", checkout)
    # Serial and pipelined runs of one batch (and of none) use the same connections.
    assert counted[0] == counted[1]
    assert counted[2] == counted[3]
