"""The leader's oldest-unprocessed gauge reads an index from its oldest end, never counts."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.policy.binding import bind_policies
from coordinator.policy.model import parse_policies
from coordinator.purge.holds import create_hold, entity_types
from coordinator.purge.planner import oldest_due_query
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from demo.seed_data import session_logs
from tests.policy.conftest import NOW
from tests.policy.test_engine import policies

ROWS, HELD = 20_000, 200


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in _nodes(child))]


async def test_oldest_due_is_a_bounded_index_read(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings
) -> None:
    # Oldest first: ids 1..HELD are the oldest rows and held; the newest 10 % are young.
    async with engine.begin() as conn:
        await conn.execute(text("CREATE INDEX ON session_logs (created_at)"))
        await conn.execute(
            insert(session_logs),
            [
                {"id": i, "user_id": "u", "created_at": NOW - timedelta(days=1000 - i * 0.045)}
                for i in range(1, ROWS + 1)
            ],
        )
        await create_hold(
            conn,
            entities=[f"session:{i}" for i in range(1, HELD + 1)],
            types=await entity_types(conn, parse_policies(policies())),
            reason="r",
            created_by="me",
            now=NOW,
        )
        await conn.execute(text("ANALYZE"))
    policy_set = parse_policies(policies())
    async with engine.connect() as conn:
        bound, _ = await bind_policies(conn, policy_set, settings)
        query = oldest_due_query(bound["sessions"], NOW)
        sql = query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
        raw = (await conn.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}"))).scalar_one()
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    scans = [n for n in _nodes(plan) if n.get("Relation Name") == "session_logs"]
    assert scans, plan
    assert all(n["Node Type"] in ("Index Scan", "Index Only Scan") for n in scans), plan
    assert all(n["Index Name"] == "session_logs_created_at_idx" for n in scans), plan
    # It stopped at the first due, unheld row: the held rows before it, plus that one.
    assert sum(n["Actual Rows"] * n["Actual Loops"] for n in scans) <= HELD + 1
    assert not [n for n in _nodes(plan) if n["Node Type"] in ("Sort", "Aggregate", "Hash")]

    ages = await Runner(engine, policy_set, settings, clock=clock).oldest_unprocessed()
    oldest_unheld = NOW - timedelta(days=1000 - (HELD + 1) * 0.045)
    assert ages == {"sessions": round((NOW - oldest_unheld).total_seconds() / 86400, 3)}
