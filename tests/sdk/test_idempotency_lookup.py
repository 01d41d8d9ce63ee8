"""The idempotency lookup probes the primary key per event id, even on a table nobody has
analyzed yet: it never reads every record of the service (quadratic over a backlog)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from consumer_sdk.arrays import array_literal
from consumer_sdk.idempotency import PostgresIdempotencyStore, ProcessedEvent
from schemas import AckStatus, async_database_url

SERVICES = ("billing", "crm", "search")
PER_SERVICE = 20_000
ASKED = 500  # a poll batch: the more ids, the likelier a prefix scan of the service looks cheaper


def _bound(value: Any) -> Any:
    return array_literal(value) if isinstance(value, list) else value


def _read(node: dict[str, Any], table: str) -> int:
    """Rows the plan's scans of `table` read (returned or filtered out, over all loops)."""
    own = 0
    if node.get("Relation Name") == table:
        read = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
        own = read * node["Actual Loops"]
    return own + sum(_read(child, table) for child in node.get("Plans", []))


async def test_lookup_reads_only_the_asked_events_on_an_unanalyzed_table(
    fresh_database: str,
) -> None:
    engine = create_async_engine(async_database_url(fresh_database))
    store = PostgresIdempotencyStore(engine)
    await store.open()
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO retention_processed_events "
                    "SELECT s, gen_random_uuid(), 'completed', 1, now() "
                    "FROM unnest(CAST(:services AS text[])) s, generate_series(1, :n)"
                ),
                {"services": list(SERVICES), "n": PER_SERVICE},
            )
        known = ProcessedEvent(uuid.uuid4(), AckStatus.COMPLETED, 3, datetime.now(UTC))
        async with store.batch("crm") as batch:
            batch.record(known)
        asked = [known.event_id, *(uuid.uuid4() for _ in range(ASKED - 1))]

        assert await store.lookup("crm", asked) == {known.event_id: known}
        assert await store.lookup("billing", asked) == {}

        query = store.lookup_query("crm", asked).compile(
            dialect=engine.dialect, compile_kwargs={"render_postcompile": True}
        )
        params = query.construct_params()
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            # Text, not JSON: the dialect's codecs would decode a json column for us.
            plan = await raw.fetchval(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + query.string,
                # The ids bound as the store binds them: one array literal.
                *(_bound(params[name]) for name in query.positiontup or ()),
            )
    finally:
        await engine.dispose()
    assert _read(
        (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"], store.table.name
    ) <= len(asked)


async def test_a_batch_records_each_events_own_status_count_and_time(
    fresh_database: str,
) -> None:
    """A batch of one status and one time binds them once; a mixed batch as arrays:
    either way each event's record reads back as it was given."""
    engine = create_async_engine(async_database_url(fresh_database))
    store = PostgresIdempotencyStore(engine)
    await store.open()
    at = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    later = datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC)
    uniform = [ProcessedEvent(uuid.uuid4(), AckStatus.COMPLETED, n, at) for n in range(3)]
    mixed = [
        ProcessedEvent(uuid.uuid4(), AckStatus.COMPLETED, 2, at),
        ProcessedEvent(uuid.uuid4(), AckStatus.NOT_FOUND, 0, at),
        ProcessedEvent(uuid.uuid4(), AckStatus.COMPLETED, 5, later),
    ]
    try:
        for recorded in (uniform, mixed):
            async with store.batch("crm") as batch:
                for processed in recorded:
                    batch.record(processed)
            found = await store.lookup("crm", [p.event_id for p in recorded])
            assert found == {p.event_id: p for p in recorded}
        assert await store.lookup("billing", [p.event_id for p in uniform]) == {}
    finally:
        await engine.dispose()
