"""Test and benchmark helpers for the outbox: rows to insert and the records they become."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.store.tables import audit_log, outbox
from schemas import KafkaSettings

T0 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def outbox_rows(
    count: int,
    *,
    policy: str = "session_logs",
    entity_type: str = "user",
    event_type: str = "delete",
    start: int = 0,
    entity_ids: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """`count` outbox rows shaped like the purge writes them (~300-byte events).

    Entity ids are `100000 + start + i` unless `entity_ids` names them (one per row).
    """
    if entity_ids is not None and len(entity_ids) != count:
        raise ValueError(f"{len(entity_ids)} entity ids for {count} rows")
    run_id = uuid.uuid4()
    fields = ["customer_name", "email", "address"] if event_type == "anonymize" else []
    return [
        {
            "event_id": uuid.uuid4(),
            "run_id": run_id,
            "policy": policy,
            "event_type": event_type,
            "entity_type": entity_type,
            "entity_id": entity_ids[i] if entity_ids is not None else str(100_000 + start + i),
            "legal_basis": "Legitimate interest (security monitoring)",
            "fields": fields,
            "initiated_at": T0,
            "deadline": T0 + timedelta(days=30),
        }
        for i in range(count)
    ]


async def insert_rows(
    engine: AsyncEngine, rows: Sequence[dict[str, Any]], chunk: int = 5000
) -> None:
    for offset in range(0, len(rows), chunk):
        async with engine.begin() as conn:
            await conn.execute(insert(outbox), list(rows[offset : offset + chunk]))


async def clear_outbox(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(outbox))
        await conn.execute(delete(audit_log))


async def read_records(
    kafka: KafkaSettings,
    topic: str,
    *,
    expected: int,
    timeout_s: float = 30.0,
    settle_s: float = 1.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record on `topic` from the beginning: waits for `expected`, then `settle_s` more.

    The extra wait lets duplicates beyond `expected` show up, so a test can count them.
    """
    # No group: every partition is assigned, read from the earliest offset.
    consumer = AIOKafkaConsumer(
        topic, **kafka.client_kwargs(), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        records: list[ConsumerRecord[bytes, bytes]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        settle_until: float | None = None
        while loop.time() < (settle_until if settle_until is not None else deadline):
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(batch)
            if settle_until is None and len(records) >= expected:
                settle_until = loop.time() + settle_s
        return records
    finally:
        await consumer.stop()
