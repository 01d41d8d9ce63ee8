"""Records sent through the relay's producer come back from the real broker exactly as
sent (keys, values, headers, order per partition), whether the batches were written by
the C module or by aiokafka's builder: the broker accepts the C batches (CRC, sizes,
idempotent producer state) and a consumer reads them back."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from coordinator.kafka import recordbatch
from coordinator.kafka.producer import KafkaEventProducer, OutgoingRecord
from coordinator.settings import RelaySettings
from schemas import KafkaSettings
from tests.outbox import read_records


@pytest.fixture(params=["native", "aiokafka"])
def builder(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "native" and recordbatch.BUILDER != "native":
        pytest.skip("coordinator.kafka._recordbatch is not built")
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
    await producer.start()
    try:
        deliveries = [d async for d in producer.send_all(topics.topics.events, sent)]
        for delivery in deliveries:
            await delivery.future
    finally:
        await producer.stop()
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
