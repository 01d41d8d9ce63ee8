"""Records sent through the relay's producer come back from the real broker exactly as
sent (keys, values, headers, order per partition), whether the batches were written by
the C module or by aiokafka's builder: the broker accepts the C batches (CRC, sizes) and a
consumer reads them back. The batches as stored, fetched raw, carry the idempotent
producer's id and epoch, contiguous base sequences per partition, and the send's
timestamp in milliseconds."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from coordinator.kafka import recordbatch
from coordinator.kafka.producer import KafkaEventProducer, OutgoingRecord
from coordinator.settings import RelaySettings
from schemas import KafkaSettings
from tests.native import native_or_skip
from tests.outbox import read_records


@pytest.fixture(params=["native", "aiokafka"])
def builder(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "native":
        native_or_skip(recordbatch.BUILDER == "native", "coordinator.kafka._recordbatch")
    chosen = recordbatch.BUILDER
    recordbatch.BUILDER = request.param
    try:
        yield str(request.param)
    finally:
        recordbatch.BUILDER = chosen


def records(count: int) -> list[OutgoingRecord]:
    rng = random.Random(16)
    made = []
    for n in range(count):
        value: bytes | None = rng.randbytes(rng.choice([0, 5, 300, 3000]))
        if n % 97 == 0:
            value = None  # a tombstone
        headers: list[tuple[str, bytes | None]] = [("event_id", f"e-{n}".encode())]
        if n % 3 == 0:
            headers += [("retention-signature", rng.randbytes(90)), ("é-empty", b"")]
        if n % 11 == 0:
            headers.append(("null", None))
        made.append(OutgoingRecord(f"user:{rng.randrange(50)}".encode(), value, headers))  # type: ignore[arg-type]
    return made


async def test_a_consumer_reads_back_exactly_the_records_sent(
    builder: str, topics: KafkaSettings
) -> None:
    sent = records(2000)
    # Small batches: every partition gets several, queued behind each other.
    producer = KafkaEventProducer(topics, RelaySettings(max_batch_size=16_384))
    assert producer._native == (builder == "native")
    started_ms = time.time_ns() // 1_000_000
    await producer.start()
    try:
        deliveries = [d async for d in producer.send_all(topics.topics.events, sent)]
        for delivery in deliveries:
            await delivery.future
    finally:
        await producer.stop()
    ended_ms = time.time_ns() // 1_000_000
    assert sorted(i for d in deliveries for i in d.indexes) == list(range(len(sent)))
    assert len(deliveries) > 3

    got = await read_records(topics, topics.topics.events, expected=len(sent))
    assert len(got) == len(sent)
    # Per partition, the records of the claim in its order; each key on one partition.
    by_partition: dict[int, list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]] = {}
    for record in sorted(got, key=lambda r: (r.partition, r.offset)):
        by_partition.setdefault(record.partition, []).append(
            (record.key, record.value, list(record.headers))
        )
    placed: dict[bytes | None, int] = {}
    for record in got:
        assert placed.setdefault(record.key, record.partition) == record.partition
    expected: dict[int, list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]] = {}
    for record in sent:
        expected.setdefault(placed[record.key], []).append(
            (record.key, record.value, list(record.headers))  # type: ignore[arg-type]
        )
    assert by_partition == expected

    # The idempotent producer's state, as the broker stored it: one producer id and epoch
    # (a batch without them would be taken as non-idempotent), and per partition base
    # sequences that continue where the previous batch ended, from 0.
    stored = await read_batches(topics, topics.topics.events)
    assert sum(len(batches) for batches in stored.values()) == len(deliveries)
    producers = set()
    for batches in stored.values():
        sequence = 0
        for batch in batches:
            assert batch.validate_crc()
            assert batch.base_sequence == sequence
            sequence += batch.last_offset_delta + 1
            producers.add((batch.producer_id, batch.producer_epoch))
            assert started_ms <= batch.first_timestamp <= batch.max_timestamp <= ended_ms
    [(producer_id, epoch)] = producers
    assert producer_id >= 0
    assert epoch >= 0


async def read_batches(kafka: KafkaSettings, topic: str) -> dict[int, list[DefaultRecordBatch]]:
    """Each partition's record batches as stored, in offset order (raw fetches: a consumer
    hides the producer state)."""
    client = AIOKafkaClient(**kafka.client_kwargs())
    await client.bootstrap()
    try:
        await client._wait_on_metadata(topic)
        stored: dict[int, list[DefaultRecordBatch]] = {}
        for partition in sorted(client.cluster.partitions_for_topic(topic) or ()):
            leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            batches = stored.setdefault(partition, [])
            offset = 0
            while True:
                request = FetchRequest(
                    100, 1, 50_000_000, 0, [(topic, [(partition, offset, 50_000_000)])]
                )
                response = await client.send(leader, request)
                data = response.topics[0][1][0][-1]
                records = MemoryRecords(data) if data else None
                before = offset
                while records is not None and (batch := records.next_batch()) is not None:
                    if batch.next_offset > offset:
                        assert isinstance(batch, DefaultRecordBatch)
                        batches.append(batch)
                        offset = batch.next_offset
                if offset == before:
                    break
        return stored
    finally:
        await client.close()
