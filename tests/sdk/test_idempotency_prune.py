"""The SDK forgets processed events past `idempotency_retention_days`, nothing younger."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from consumer_sdk import idempotency
from consumer_sdk.idempotency import PostgresIdempotencyStore, ProcessedEvent, PrunableStore
from schemas import AckStatus, async_database_url

NOW = datetime(2026, 6, 1, tzinfo=UTC)


async def test_prune_deletes_only_this_services_old_records(
    fresh_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotency, "PRUNE_BATCH", 3)  # several short transactions
    engine = create_async_engine(async_database_url(fresh_database))
    store = PostgresIdempotencyStore(engine)
    assert isinstance(store, PrunableStore)
    await store.open()
    ages = [40, 35, 31, 30.5, 29, 10, 0]  # days; the cutoff is 30
    records = {
        service: [
            ProcessedEvent(uuid.uuid4(), AckStatus.COMPLETED, 1, NOW - timedelta(days=age))
            for age in ages
        ]
        for service in ("billing", "crm")
    }
    try:
        for service, processed in records.items():
            async with store.batch(service) as batch:
                for p in processed:
                    batch.record(p)
        assert await store.prune("billing", NOW - timedelta(days=30)) == 4
        assert await store.prune("billing", NOW - timedelta(days=30)) == 0
        async with engine.connect() as conn:
            left = {
                (row.service, row.event_id)
                for row in await conn.execute(select(store.table.c.service, store.table.c.event_id))
            }
    finally:
        await engine.dispose()
    kept_billing = {("billing", p.event_id) for p in records["billing"][4:]}
    all_crm = {("crm", p.event_id) for p in records["crm"]}
    assert left == kept_billing | all_crm
