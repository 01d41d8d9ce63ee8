"""The foundation's proof: a real broker and a real database, end to end."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from sqlalchemy import Column, MetaData, Table, Text, Uuid, select

from coordinator.store.db import make_engine
from schemas import EventType, KafkaSettings, RetentionEvent, decode, encode


async def test_event_through_kafka_into_postgres(
    topics: KafkaSettings, fresh_database: str
) -> None:
    now = datetime.now(UTC)
    event = RetentionEvent(
        event_id=uuid.uuid4(),
        type=EventType.DELETE,
        entity_type="user",
        entity_id="42",
        policy="session_logs",
        legal_basis="Legitimate interest (security monitoring)",
        initiated_at=now,
        deadline=now + timedelta(days=30),
    )
    producer = AIOKafkaProducer(**topics.client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        metadata = await producer.send_and_wait(
            topics.topics.events,
            encode(event),
            key=event.key.encode(),
            headers=[("event_id", str(event.event_id).encode())],
        )
    finally:
        await producer.stop()

    group = f"{topics.topic_prefix}.roundtrip"
    consumer = AIOKafkaConsumer(
        topics.topics.events,
        **topics.client_kwargs(),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        record = await consumer.getone()
        received = decode(RetentionEvent, record.value)
        await consumer.commit()
        tp = TopicPartition(record.topic, record.partition)
        assert await consumer.committed(tp) == record.offset + 1
    finally:
        await consumer.stop()
    assert received == event
    assert record.key == b"user:42"
    assert (record.partition, dict(record.headers)["event_id"]) == (
        metadata.partition,
        str(event.event_id).encode(),
    )

    table = Table(
        "received_events",
        MetaData(),
        Column("event_id", Uuid, primary_key=True),
        Column("entity", Text, nullable=False),
    )
    engine = make_engine(fresh_database)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.create_all)
            await conn.execute(
                table.insert(), {"event_id": received.event_id, "entity": received.key}
            )
        async with engine.connect() as conn:
            rows = (await conn.execute(select(table.c.event_id, table.c.entity))).all()
    finally:
        await engine.dispose()
    assert rows == [(event.event_id, "user:42")]
