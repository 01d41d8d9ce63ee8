"""The tracker's open-backlog gauges read indexes, never the whole backlog joined."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, insert, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Select

from coordinator.store.db import make_engine
from coordinator.store.tables import event_status, expected_acks
from coordinator.tracking import deadlines, queries

NOW = datetime(2026, 6, 1, tzinfo=UTC)
SERVICES = ("billing", "crm")
COMPLETED, PENDING, OVERDUE = 20_000, 300, 7


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in _nodes(child))]


async def _plan(conn: AsyncConnection, query: Select[Any]) -> list[dict[str, Any]]:
    sql = query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    raw = (await conn.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}"))).scalar_one()
    return _nodes((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"])


async def test_backlog_gauges_are_index_reads_and_count_right(coordinator_db: str) -> None:
    states = ["completed"] * COMPLETED + ["pending"] * PENDING + ["overdue"] * OVERDUE
    events = [(uuid.uuid4(), state) for state in states]
    engine = make_engine(coordinator_db)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(event_status),
                [
                    {
                        "event_id": event_id,
                        "policy": "p",
                        "event_type": "delete",
                        "entity_type": "user",
                        "entity_id": str(n),
                        "initiated_at": NOW,
                        "published_at": NOW,
                        "deadline": NOW + timedelta(days=30),
                        "state": state,
                        "expected": len(SERVICES),
                        "tracked_at": NOW,
                        "updated_at": NOW,
                    }
                    for n, (event_id, state) in enumerate(events)
                ],
            )
            # billing acked everything that is not completed-by-both; crm nothing open.
            await conn.execute(
                insert(expected_acks),
                [
                    {
                        "event_id": event_id,
                        "service": service,
                        "status": "completed"
                        if state == "completed" or service == "billing"
                        else "pending",
                    }
                    for event_id, state in events
                    for service in SERVICES
                ],
            )
        # VACUUM sets the visibility map, which an index-only scan needs (autovacuum's
        # job in production); it cannot run in a transaction.
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.execute(text("VACUUM ANALYZE retention_expected_acks"))
            await auto.execute(text("VACUUM ANALYZE retention_event_status"))
        async with engine.connect() as conn:
            late = NOW + timedelta(days=31)
            assert await deadlines.open_acks_by_service(conn, now=late) == {
                "crm": (PENDING + OVERDUE, OVERDUE)
            }
            pending = await _plan(conn, deadlines.open_acks_query())
            overdue = await _plan(conn, deadlines.overdue_acks_query(late))
            statements: list[tuple[str, Any]] = []

            def grab(*args: Any) -> None:
                statements.append((args[2], args[3]))  # statement, parameters

            event.listen(engine.sync_engine, "before_cursor_execute", grab)
            try:
                page = await queries.service_events(
                    conn, "crm", state="overdue", now=late, limit=100
                )
            finally:
                event.remove(engine.sync_engine, "before_cursor_execute", grab)
            assert len(page) == 100  # every open one is past the deadline by then
            [(sql, params)] = statements
            raw = (
                await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
            ).scalar_one()
            service_page = _nodes((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"])
    finally:
        await engine.dispose()

    acks = [n for n in pending if n.get("Relation Name") == "retention_expected_acks"]
    assert [(n["Node Type"], n["Index Name"]) for n in acks] == [
        ("Index Only Scan", "ix_retention_expected_acks_open")
    ], pending
    assert acks[0]["Actual Rows"] == PENDING + OVERDUE  # the open entries, nothing else

    # The overdue events come from their partial index (a plain or a bitmap index scan),
    # and only those: never a scan of the table or of the open backlog.
    statuses = [n for n in overdue if n.get("Index Name") == "ix_retention_event_status_overdue"]
    assert [n["Actual Rows"] for n in statuses] == [OVERDUE], overdue
    assert not [n for n in overdue if n["Node Type"] == "Seq Scan"], overdue

    # One service's late acknowledgements start from the open events' partial index, never
    # from a scan of every event.
    assert not [n for n in service_page if n["Node Type"] == "Seq Scan"], service_page
