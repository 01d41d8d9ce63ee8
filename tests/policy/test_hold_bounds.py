"""A batch's hold check reads only the holds whose entity id lies in the text bounds of
its key window (coordinator/purge/planner.py `_text_bounds`): windows that cross a power
of ten or start below zero must still see every hold, which text order would put
outside a naive range ("10" < "9", "-1" before or beside "1")."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.policy.model import parse_policies
from coordinator.purge.holds import create_hold, entity_types
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from demo.seed_data import orders
from tests.policy.conftest import NOW

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
    batch_size: {batch}
    fan_out: true
"""

IDS = [
    *range(-1005, -995),
    *range(-12, 13),
    *range(95, 106),
    *range(995, 1006),
    *range(99_995, 100_006),
    *range(9_999_999_999_999_995, 10_000_000_000_000_006),
]
# Both sides of every power of ten, zero, negatives, and the ends of the range.
HELD = {
    -1001,
    -1000,
    -999,
    -10,
    -9,
    -1,
    0,
    1,
    9,
    10,
    12,
    99,
    100,
    101,
    999,
    1000,
    99_999,
    100_000,
    100_005,
    9_999_999_999_999_999,
    10_000_000_000_000_000,
    10_000_000_000_000_005,
}


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 5000])
async def test_no_hold_is_missed_across_powers_of_ten_and_zero(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings, batch: int
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(orders),
            [
                {
                    "id": i,
                    "customer_name": "n",
                    "email": "e@shop.example",
                    "status": "paid",
                    "total": 1,
                    "created_at": NOW - timedelta(days=40),
                }
                for i in IDS
            ],
        )
        await create_hold(
            conn,
            types=await entity_types(conn, parse_policies(POLICY.format(batch=batch))),
            entities=[f"order:{i}" for i in sorted(HELD)],
            reason="r",
            created_by="me",
            now=NOW,
        )
    runner = Runner(engine, parse_policies(POLICY.format(batch=batch)), settings, clock=clock)
    outcome = (await runner.run()).outcomes[0]
    async with engine.connect() as conn:
        left = set((await conn.scalars(select(orders.c.id))).all())
    assert left == HELD
    assert (outcome.processed, outcome.held) == (len(IDS) - len(HELD), len(HELD))


ACTIONS = """
services:
  - {{name: billing, owner: tests, handles: {{order: [{handled}]}}}}
policies:
  - name: orders
    table: orders
    entity_type: order
    timestamp_column: created_at
    retention: 30d
    action: {action}
    legal_basis: test
    batch_size: {batch}
    fan_out: true
{extra}"""


@pytest.mark.parametrize("batch", [3, 7])
@pytest.mark.parametrize("action", ["anonymize", "archive"])
async def test_anonymize_and_archive_windows_see_every_hold(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings, batch: int, action: str
) -> None:
    # The bound is derived from the window's keys; anonymize (rows stay, the next run
    # resumes from a mark) and archive (copy then delete) act on the same keys.
    extra = "    anonymize:\n      email: fake_email\n" if action == "anonymize" else ""
    policies = parse_policies(
        ACTIONS.format(
            action=action,
            handled="anonymize" if action == "anonymize" else "delete",
            batch=batch,
            extra=extra,
        )
    )
    async with engine.begin() as conn:
        await conn.execute(
            insert(orders),
            [
                {
                    "id": i,
                    "customer_name": "n",
                    "email": f"u{i}@shop.example",
                    "status": "paid",
                    "total": 1,
                    "created_at": NOW - timedelta(days=40),
                }
                for i in IDS
            ],
        )
        await create_hold(
            conn,
            types=await entity_types(conn, policies),
            entities=[f"order:{i}" for i in sorted(HELD)],
            reason="r",
            created_by="me",
            now=NOW,
        )
    outcome = (await Runner(engine, policies, settings, clock=clock).run()).outcomes[0]
    async with engine.connect() as conn:
        rows = (await conn.execute(select(orders.c.id, orders.c.email))).all()
    untouched = {i for i, email in rows if email == f"u{i}@shop.example"}
    assert untouched == HELD
    if action == "archive":
        assert {i for i, _ in rows} == HELD
    assert (outcome.processed, outcome.held) == (len(IDS) - len(HELD), len(HELD))
