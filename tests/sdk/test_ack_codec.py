"""`RETENTION_KAFKA_COMPRESSION`: the codec of the SDK's acks, as the broker hands them out."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.consumer import fetcher
from aiokafka.record.memory_records import MemoryRecords

from consumer_sdk._internal.transport import kafka_producer
from schemas import KafkaSettings
from schemas.kafka import Compression

# Record batch attribute bits 0-2 (the Kafka protocol's codec ids).
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def test_the_codec_is_a_validated_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KafkaSettings().compression == "none"
    monkeypatch.setenv("RETENTION_KAFKA_COMPRESSION", "zstd")
    settings = KafkaSettings()
    assert settings.producer_kwargs()["compression_type"] == "zstd"
    assert settings.environ()["RETENTION_KAFKA_COMPRESSION"] == "zstd"
    # Consumers and admin clients take no codec.
    assert "compression_type" not in settings.client_kwargs()
    monkeypatch.setenv("RETENTION_KAFKA_COMPRESSION", "brotli")
    with pytest.raises(ValueError, match="RETENTION_KAFKA_COMPRESSION"):
        KafkaSettings()


async def _codecs_on_the_broker(kafka: KafkaSettings, monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """The codec of every record batch the broker returns for the acks topic."""
    seen: set[int] = set()

    class Spying:
        """MemoryRecords (a C type: its methods can't be patched), noting each batch's codec."""

        def __init__(self, raw: Any) -> None:
            self._records = MemoryRecords(raw)

        def next_batch(self) -> Any:
            batch = self._records.next_batch()
            if batch is not None:
                seen.add(batch.compression_type)
            return batch

        def __getattr__(self, name: str) -> Any:
            return getattr(self._records, name)

    monkeypatch.setattr(fetcher, "MemoryRecords", Spying)
    consumer = AIOKafkaConsumer(
        kafka.topics.acks, **kafka.client_kwargs(), group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        read = 0
        while read < 20:
            batches = await consumer.getmany(timeout_ms=5000)
            assert batches, "the acks did not come back"
            read += sum(len(m) for m in batches.values())
    finally:
        await consumer.stop()
    return seen


@pytest.mark.parametrize("codec", ["none", "gzip", "zstd"])
async def test_acks_are_written_in_the_configured_codec(
    topics: KafkaSettings, codec: Compression, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = topics.model_copy(update={"compression": codec})
    producer = kafka_producer(kafka)
    await producer.start()
    try:
        done = await producer.send_many(
            kafka.topics.acks,
            [(f"user:{i}".encode(), b'{"status": "completed"}' * 4) for i in range(20)],
        )
        await done
    finally:
        await producer.stop()
    assert await _codecs_on_the_broker(kafka, monkeypatch) == {CODEC_IDS[codec]}
