"""The relay on confluent-kafka (RETENTION_RELAY_PRODUCER=confluent), on the real broker:
the same records, keys, partitions, signatures and watermark as with aiokafka."""

from __future__ import annotations

import asyncio
import sys

import pytest
import structlog
import structlog.testing
from aiokafka.partitioner import DefaultPartitioner
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.kafka import librdkafka
from coordinator.kafka.librdkafka import (
    LibrdkafkaEventProducer,
    ProducerError,
    _client_error,
    _Group,
)
from coordinator.kafka.producer import FastExtraMissing, producer_factory
from coordinator.outbox.lookup import event_counts
from coordinator.outbox.relay import OutboxRelay
from coordinator.settings import RelaySettings
from schemas import KafkaSettings, RetentionEvent, decode
from schemas.signing import SignatureSettings, Verdict
from tests.outbox import insert_rows, outbox_rows, read_records

FAST = RelaySettings(
    producer="confluent", batch_size=100, send_chunk=128, idle_sleep_s=0.05, backoff_initial_s=0.05
)


async def test_records_match_aiokafka_keys_partitions_signatures(
    engine: AsyncEngine, topics: KafkaSettings
) -> None:
    rows = outbox_rows(450, policy="session_logs") + outbox_rows(
        70, policy="purchase_records", entity_type="order", event_type="anonymize", start=900
    )
    await insert_rows(engine, rows)
    async with OutboxRelay(engine, topics, settings=FAST) as relay:
        assert await relay.drain(timeout_s=60) == len(rows)
    async with engine.connect() as conn:
        assert await event_counts(conn) == (len(rows), len(rows))

    records = await read_records(topics, topics.topics.events, expected=len(rows))
    by_id = {row["event_id"]: row for row in rows}
    verifier = SignatureSettings().coordinator_verifier()
    partitions = [0, 1, 2]
    partitioner = DefaultPartitioner()
    for record in records:
        event = decode(RetentionEvent, record.value)
        row = by_id[event.event_id]
        assert record.key == f"{row['entity_type']}:{row['entity_id']}".encode()
        assert dict(record.headers)["event_id"] == str(event.event_id).encode()
        assert verifier.verify(record.key, record.value, record.headers).verdict is Verdict.VALID
        # The partition aiokafka (and Java) choose for the key: murmur2, not librdkafka's CRC32.
        assert record.partition == partitioner(record.key, partitions, partitions)
    assert sorted(str(decode(RetentionEvent, r.value).event_id) for r in records) == sorted(
        str(i) for i in by_id
    )


async def test_unacknowledged_records_leave_the_watermark_then_go_out_with_the_same_ids(
    engine: AsyncEngine, topics: KafkaSettings
) -> None:
    rows = outbox_rows(300)
    await insert_rows(engine, rows)
    # A partition that does not exist: librdkafka fails every record of the round.
    missing = topics.model_copy(update={"topic_prefix": topics.topic_prefix + ".absent"})
    hopeless = FAST.model_copy(update={"publish_timeout_s": 2.0})
    async with OutboxRelay(engine, missing, settings=hopeless) as relay:
        result = await relay.publish_batch()
    assert (result.published, result.send_failed) == (0, len(rows))
    async with engine.connect() as conn:
        assert await event_counts(conn) == (len(rows), 0)

    async with OutboxRelay(engine, topics, settings=FAST) as relay:
        assert await relay.drain(timeout_s=60) == len(rows)
    records = await read_records(topics, topics.topics.events, expected=len(rows))
    assert {decode(RetentionEvent, r.value).event_id for r in records} == {
        row["event_id"] for row in rows
    }


async def test_stop_waits_for_open_deliveries(topics: KafkaSettings) -> None:
    from coordinator.kafka.producer import OutgoingRecord

    producer = LibrdkafkaEventProducer(topics, FAST)
    await producer.start()
    records = [OutgoingRecord(f"k{i}".encode(), b"v", []) for i in range(1000)]
    deliveries = [d async for d in producer.send_all(topics.topics.events, records)]
    await producer.stop()
    assert producer.in_flight == 0
    assert all(d.future.done() and d.future.exception() is None for d in deliveries)
    assert sorted(i for d in deliveries for i in d.indexes) == list(range(1000))


def test_without_the_fast_extra_the_relay_refuses_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    monkeypatch.delitem(sys.modules, "coordinator.kafka.librdkafka")
    with pytest.raises(FastExtraMissing, match=r"retention-fanout\[fast\]"):
        producer_factory(KafkaSettings(), FAST)


async def test_a_group_settles_only_once_every_record_is_handed_over() -> None:
    # While librdkafka's queue is full the relay polls, so the first records' reports can
    # come in before the group's last record is produced: that must not settle it.
    producer = LibrdkafkaEventProducer(KafkaSettings(), FAST)
    group = _Group(producer, asyncio.get_running_loop().create_future())
    group.add()
    group.report(None, None)
    assert not group.future.done()
    group.add()
    group.seal()
    assert not group.future.done()
    group.report("Broker: Not enough in-sync replicas", None)
    assert isinstance(group.future.exception(), ProducerError)
    assert producer.in_flight == 0


def test_only_fatal_client_errors_are_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    from confluent_kafka import KafkaError as RdKafkaError

    # A logger first used after an earlier test's `configure_logging` stays cached with
    # that pipeline: use one made for the capture.
    monkeypatch.setattr(librdkafka, "log", structlog.get_logger("retention.relay"))
    with structlog.testing.capture_logs() as logs:
        _client_error(RdKafkaError(RdKafkaError._TRANSPORT, "broker down"))
        assert logs == []
        _client_error(RdKafkaError(RdKafkaError._FENCED, "producer fenced", fatal=True))
    [logged] = logs
    assert logged["event"] == "librdkafka_fatal_error"
    assert "producer fenced" in logged["error"]
