"""Test and benchmark helpers for the outbox: rows to insert and the records they become."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.outbox.events import event_id
from coordinator.outbox.write import EventBatch, enqueue
from coordinator.store.tables import audit_log, outbox_batches, outbox_cursors, outbox_marks
from schemas import EventReason, KafkaSettings

T0 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


class QuietProducer:
    """A stand-in producer's start and stop, which do nothing: its `send_all` is the test."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


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


_SHARED_KEYS = ("run_id", "policy", "event_type", "entity_type", "legal_basis", "initiated_at")


def _same_batch(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = (*_SHARED_KEYS, "deadline", "reason", "request_id", "published_at")
    return all(a.get(k) == b.get(k) for k in keys) and list(a.get("fields") or []) == list(
        b.get("fields") or []
    )


async def insert_rows(
    engine: AsyncEngine, rows: Sequence[dict[str, Any]], chunk: int = 5000
) -> list[uuid.UUID]:
    """Write per-event rows as outbox batches (consecutive rows sharing their columns make
    one); each row's `event_id` is set to the id its event gets. A row with `published_at`
    is marked published (with everything before it)."""
    ids: list[uuid.UUID] = []
    for offset in range(0, len(rows), chunk):
        part = list(rows[offset : offset + chunk])
        async with engine.begin() as conn:
            start = 0
            while start < len(part):
                end = start + 1
                while end < len(part) and _same_batch(part[start], part[end]):
                    end += 1
                group, first = part[start:end], part[start]
                seq = await enqueue(
                    conn,
                    EventBatch(
                        policy=first["policy"],
                        event_type=first["event_type"],
                        entity_type=first["entity_type"],
                        legal_basis=first["legal_basis"],
                        initiated_at=first["initiated_at"],
                        deadline=first["deadline"],
                        entity_ids=[r["entity_id"] for r in group],
                        subjects=[r.get("subject") for r in group],
                        fields=list(first.get("fields") or []),
                        run_id=first.get("run_id"),
                        reason=EventReason(first.get("reason", EventReason.RETENTION_POLICY)),
                        request_id=first.get("request_id"),
                    ),
                )
                b = outbox_batches.c
                base, id_first = (
                    await conn.execute(select(b.id_base, b.id_first).where(b.seq == seq))
                ).one()
                for n, row in enumerate(group):
                    row["event_id"] = event_id(base, id_first + n)
                    ids.append(row["event_id"])
                if first.get("published_at") is not None:
                    await conn.execute(
                        insert(outbox_marks).values(
                            up_to=seq, published_at=first["published_at"], events=len(group)
                        )
                    )
                start = end
    return ids


async def clear_outbox(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for table in (outbox_marks, outbox_cursors, outbox_batches, audit_log):
            await conn.execute(delete(table))


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
