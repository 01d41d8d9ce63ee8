"""What tracker tests (and bench/tracker_throughput.py) need to play relay and services:
outbox rows as the relay leaves them, registrations and acks as the SDK sends them."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from aiokafka import AIOKafkaProducer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import Clock
from coordinator.metrics import Metrics
from coordinator.policy.model import DeclaredService
from coordinator.settings import TrackerSettings
from coordinator.store.db import make_engine
from coordinator.store.tables import ack_ledger
from coordinator.tracking.tracker import Tracker
from schemas import (
    AckStatus,
    EventType,
    HandledEntity,
    KafkaSettings,
    RetentionAck,
    ServiceRegistration,
    encode,
)
from schemas.signing import SignatureMode, Signer
from tests import keys
from tests.outbox import insert_rows

DEFAULT_SIGNER = keys.signer()

__all__ = [
    "ack",
    "drain",
    "insert_published",
    "ledger_row_at",
    "make_tracker",
    "produce",
    "registration",
]


async def insert_published(
    engine: AsyncEngine,
    entity_ids: Sequence[str],
    *,
    published_at: datetime | None,
    entity_type: str = "user",
    policy: str = "inactive_users",
    completion_deadline: timedelta = timedelta(days=30),
    subjects: Sequence[str | None] | None = None,
) -> list[uuid.UUID]:
    """Outbox rows as the purge wrote them and the relay marked them (published_at)."""
    initiated = (published_at or datetime.now().astimezone()) - timedelta(minutes=5)
    run_id = uuid.uuid4()  # one purge: its rows share an outbox batch (per 2000)
    rows = [
        {
            "event_id": uuid.uuid4(),
            "run_id": run_id,
            "policy": policy,
            "event_type": EventType.DELETE.value,
            "entity_type": entity_type,
            "entity_id": entity_id,
            "legal_basis": "GDPR Art. 5(1)(e) storage limitation",
            "fields": [],
            "initiated_at": initiated,
            "deadline": initiated + completion_deadline,
            "created_at": initiated,
            "published_at": published_at,
            "subject": subjects[n] if subjects is not None else None,
        }
        for n, entity_id in enumerate(entity_ids)
    ]
    return await insert_rows(engine, rows, chunk=2000)


def registration(
    service: str, at: datetime, *entity_types: str, version: str = "0.1.0"
) -> ServiceRegistration:
    return ServiceRegistration(
        service=service,
        handles=[
            HandledEntity(entity_type=t, actions=[EventType.DELETE, EventType.ANONYMIZE])
            for t in entity_types or ("user",)
        ],
        sdk_version=version,
        registered_at=at,
    )


def ack(
    event_id: uuid.UUID,
    service: str,
    entity_id: str,
    at: datetime,
    *,
    status: AckStatus = AckStatus.COMPLETED,
    attempt: int = 1,
    entity_type: str = "user",
    records: int = 1,
) -> RetentionAck:
    return RetentionAck(
        event_id=event_id,
        service=service,
        entity_type=entity_type,
        entity_id=entity_id,
        status=status,
        records_affected=0 if status is not AckStatus.COMPLETED else records,
        detail="handler raised TimeoutError" if status is AckStatus.FAILED else "",
        attempt=attempt,
        acknowledged_at=at,
    )


async def produce(
    kafka: KafkaSettings,
    topic: str,
    records: Iterable[RetentionAck | ServiceRegistration | tuple[bytes | None, bytes | None]],
    *,
    signer: Signer | None = DEFAULT_SIGNER,
) -> int:
    """Send models (keyed as on the wire) or raw (key, value) pairs, signed by `signer` (the
    test services' key unless told otherwise; None: unsigned); wait for all."""
    producer = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=5)
    await producer.start()
    count = 0
    try:
        futures = []
        for record in records:
            if isinstance(record, tuple):
                key, value = record
            else:
                key, value = record.key.encode(), encode(record)
            headers = [] if signer is None else signer.sign_record(key, value)
            futures.append(await producer.send(topic, value=value, key=key, headers=headers))
            count += 1
        for future in futures:
            await future
    finally:
        await producer.stop()
    return count


async def drain(tracker: Tracker, records: int, *, max_polls: int = 200) -> int:
    """Consume ack batches until `records` records went through the ledger."""
    seen = 0
    for _ in range(max_polls):
        outcome = await tracker.consume_acks(timeout_s=0.2)
        if outcome is not None:
            seen += outcome.records
        if seen >= records:
            return seen
    raise AssertionError(f"only {seen} of {records} ack records arrived")


def make_tracker(
    database_url: str,
    kafka: KafkaSettings,
    clock: Clock,
    *,
    services: Sequence[DeclaredService],
    signatures: SignatureMode = SignatureMode.REQUIRED,
    reminder_interval: timedelta = timedelta(hours=1),
    max_reminders: int = 2,
    batch_size: int = 1000,
) -> tuple[Tracker, AsyncEngine, Metrics]:
    engine = make_engine(database_url)
    metrics = Metrics()
    settings = TrackerSettings(
        group_id=f"{kafka.topic_prefix}.tracker",
        batch_size=batch_size,
        poll_interval_s=0.01,
        reminder_interval_s=reminder_interval.total_seconds(),
        reminder_backoff=2.0,
        max_reminders=max_reminders,
    )
    tracker = Tracker(
        engine,
        kafka,
        settings,
        clock=clock,
        metrics=metrics,
        services=services,
        signatures=signatures,
        signer=keys.signer(keys.COORDINATOR),
    )
    return tracker, engine, metrics


async def ledger_row_at(engine: AsyncEngine, offset: int) -> tuple[object, ...]:
    """What the ledger kept of the record at `offset`: entity type and id, accepted, reason."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    ack_ledger.c.entity_type,
                    ack_ledger.c.entity_id,
                    ack_ledger.c.accepted,
                    ack_ledger.c.reject_reason,
                ).where(ack_ledger.c.kafka_offset == offset)
            )
        ).one()
    return tuple(row)
