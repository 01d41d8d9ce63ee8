"""The relay's producer places every record on the partition Kafka's default partitioner
chooses for its key, keys hashed together per chunk (`partitions_for`)."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiokafka.partitioner import DefaultPartitioner

from coordinator.kafka import recordbatch
from coordinator.kafka.producer import KafkaEventProducer, OutgoingRecord
from coordinator.settings import RelaySettings
from schemas import KafkaSettings
from tests.native import native_or_skip


@pytest.fixture(params=["aiokafka", "native"])
def builder(request: pytest.FixtureRequest) -> str:
    """Both ways of writing the batches: aiokafka's builder, and the C one where built."""
    if request.param == "native":
        native_or_skip(recordbatch.BUILDER == "native", "coordinator.kafka._recordbatch")
    return str(request.param)


def _placed(records: list[OutgoingRecord], partitions: list[int], builder: str) -> dict[int, int]:
    async def fill() -> dict[int, int]:
        producer = KafkaEventProducer(KafkaSettings(), RelaySettings(max_batch_size=16384))
        placed: dict[int, int] = {}
        batches = (producer._fill_native if builder == "native" else producer._fill)(
            partitions, records
        )
        for partition, _, indexes in batches:
            for index in indexes:
                assert index not in placed, "a record in two batches"
                placed[index] = partition
        await producer.stop()
        return placed

    return asyncio.run(fill())


def test_keyed_records_land_where_kafkas_default_partitioner_puts_them(builder: str) -> None:
    rng = random.Random(7)
    keys: list[bytes | None] = [f"user:{rng.randrange(10**6)}".encode() for _ in range(300)]
    # Other lengths mixed in (fewer than a lane group of some), null keys, and values
    # large enough that partitions fill several batches.
    keys += [rng.randbytes(rng.randrange(0, 40)) for _ in range(60)] + [None] * 5
    rng.shuffle(keys)
    records = [OutgoingRecord(key, b"v" * 1000, [("event_id", b"e")]) for key in keys]
    partitions = [0, 1, 2, 3, 4, 5, 6]
    placed = _placed(records, partitions, builder)
    assert sorted(placed) == list(range(len(records)))
    default = DefaultPartitioner()
    for index, key in enumerate(keys):
        if key is not None:
            assert placed[index] == default(key, partitions, partitions), key
        else:
            assert placed[index] in partitions


def test_every_key_of_a_chunk_of_one_length_is_placed_as_alone(builder: str) -> None:
    keys: list[bytes | None] = [f"{n:036d}".encode() for n in range(1000)]
    records = [OutgoingRecord(key, b"x", []) for key in keys]
    placed = _placed(records, [0, 1, 2], builder)
    default = DefaultPartitioner()
    assert [placed[i] for i in range(len(keys))] == [default(k, [0, 1, 2], [0, 1, 2]) for k in keys]
