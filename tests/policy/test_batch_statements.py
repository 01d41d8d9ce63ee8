"""What one purge batch sends to PostgreSQL: its round trips, with the audit chain's lock
taken last (coordinator/purge/batch.py, coordinator/outbox/write.py)."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.evidence import audit
from coordinator.outbox.wakeup import CHANNEL
from coordinator.policy.model import parse_policies
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.db import connect_outside_pool
from coordinator.store.tables import audit_log, outbox_batches
from demo.seed_data import orders
from tests.policy.conftest import NOW, add_orders

POLICY = """
services:
  - {{name: billing, owner: tests, handles: {{order: [delete]}}}}
policies:
  - name: orders
    table: orders
    entity_type: order
    timestamp_column: created_at
    retention: 30d
    action: delete
    legal_basis: test
    batch_size: 10
    fan_out: {fan_out}
"""

KINDS = (
    ("hold lock", r"pg_advisory_xact_lock_shared"),
    ("choose + act, waking the relays", r"^WITH .*DELETE FROM orders.*pg_notify"),
    ("choose + act", r"^WITH .*DELETE FROM orders"),
    ("relay wake-up", r"pg_notify"),
    ("chain lock", r"pg_advisory_xact_lock\("),
    ("chain head", r"FROM audit_log ORDER BY"),
    ("outbox row + audit entry", r"^WITH batch AS \(INSERT INTO retention_outbox_batches"),
    ("audit entry", r"^INSERT INTO audit_log"),
)


def kind(statement: str) -> str:
    flat = " ".join(statement.split())
    return next((k for k, pattern in KINDS if re.search(pattern, flat)), "other")


@pytest.mark.parametrize("fan_out", [True, False])
async def test_a_batch_is_four_statements_and_the_run_stops_after_a_short_window(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings, fan_out: bool
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(orders),
            [
                {
                    "id": i,
                    "customer_name": f"name {i}",
                    "email": f"u{i}@shop.example",
                    "status": "paid",
                    "total": 1,
                    # 25 due, then 3 young ones
                    "created_at": NOW - timedelta(days=40 if i <= 25 else 1, seconds=i),
                }
                for i in range(1, 29)
            ],
        )
    sent: list[str] = []
    # A delete's batches run two in flight on two connections (Runner._pipelined): each
    # batch's statements are in order on its own connection.
    on: dict[int, list[str]] = {}

    afters: list[Any] = []

    def record(*args: Any) -> None:
        sent.append(kind(args[2]))
        on.setdefault(id(args[0].connection.dbapi_connection), []).append(sent[-1])
        if sent[-1].startswith("choose + act"):
            afters.append(args[4].compiled_parameters[0].get("after"))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    policies = parse_policies(POLICY.format(fan_out=str(fan_out).lower()))
    runner = Runner(engine, policies, settings, clock=clock)
    report = await runner.run()
    event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert report.ok
    assert report.outcomes[0].processed == 25

    # Windows of 10, 10 and 5: the short one ends the run, no empty batch follows.
    starts = [n for n, got in enumerate(sent) if got == "hold lock"]
    assert len(starts) == 3
    # The run builds its batch statement once (coordinator.purge.batch.RunStatements):
    # each batch still starts after the one before.
    assert afters == [None, 10, 20]
    # An outbox row wakes the relays (coordinator/outbox/wakeup.py), asked by the choose
    # + act statement itself, before the chain's lock: nothing but the chain's head and
    # the inserts wait for that lock.
    locked = ["chain lock", "chain head"]
    expected = (
        ["hold lock", "choose + act, waking the relays", *locked, "outbox row + audit entry"]
        if fan_out
        else ["hold lock", "choose + act", *locked, "audit entry"]
    )
    batches = 0
    for statements in on.values():
        for start in (n for n, got in enumerate(statements) if got == "hold lock"):
            assert statements[start : start + len(expected)] == expected
            batches += 1
    assert batches == 3
    async with engine.connect() as conn:
        assert await audit.verify(conn) == (5, None)  # run start, 3 batches, run finish
        # Recorded in the batches' order, whichever connection each ran on.
        logged = (
            await conn.execute(
                select(audit_log.c.data["ids"][0].astext)
                .where(audit_log.c.action == audit.AuditAction.PURGE_BATCH)
                .order_by(audit_log.c.seq)
            )
        ).scalars()
        assert list(logged) == ["1", "11", "21"]
        firsts = (
            await conn.execute(
                select(outbox_batches.c.entity_ids[1]).order_by(outbox_batches.c.seq)
            )
        ).scalars()
        assert list(firsts) == (["1", "11", "21"] if fan_out else [])


async def test_a_fanning_out_run_wakes_the_relays_only_for_batches_that_wrote_events(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings
) -> None:
    """The wake-up rides in the choose + act statement, conditioned on rows touched: each
    committed batch with events notifies, a run with nothing due notifies nobody."""
    await add_orders(engine, range(1, 16), age_days=40)
    received: list[str] = []
    listener = await connect_outside_pool(engine)
    try:
        await listener.add_listener(CHANNEL, lambda *args: received.append(args[3]))
        runner = Runner(
            engine, parse_policies(POLICY.format(fan_out="true")), settings, clock=clock
        )
        assert (await runner.run()).outcomes[0].processed == 15
        await asyncio.sleep(0.5)
        assert received == ["", ""]  # batches of 10 and 5, one notification per commit
        received.clear()
        assert (await runner.run()).outcomes[0].processed == 0
        await asyncio.sleep(0.5)
        assert received == []
    finally:
        await listener.close()
