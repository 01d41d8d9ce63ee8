"""A small typed protocol around aiokafka's producer, and the relay's producer settings.

aiokafka's wheel ships no `py.typed`, so the relay talks to `EventProducer` instead:
typed, and replaceable in tests by a producer that hangs the way aiokafka sometimes does.

Records go out through aiokafka's batch API (`create_batch` / `send_batch`), not one
`send()` per record: the relay always has a whole claim in hand, and `send()` costs
~20 µs of Python per record (accumulator bookkeeping and one future each) where
appending to a batch costs ~2 µs. One future per batch means a failed batch fails
exactly the records it carries. Where `coordinator.kafka._recordbatch` was built, a
chunk's batches are written in C in one call instead of one `append` per record
(coordinator/kafka/recordbatch.py): the same batches, byte for byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast, overload

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from coordinator import CoordinatorError
from coordinator.kafka import recordbatch
from coordinator.settings import RelaySettings
from schemas import KafkaSettings
from schemas.partitioning import partitions_for

__all__ = [
    "Delivery",
    "EventProducer",
    "FastExtraMissing",
    "KafkaEventProducer",
    "OutgoingRecord",
    "ProducerFactory",
    "RecordColumns",
    "producer_factory",
    "producer_options",
]


@dataclass(slots=True)
class OutgoingRecord:
    """One record to send. Not frozen: the relay builds one per event, and a frozen
    dataclass's `__init__` costs twice as much (~0.45 µs more); the signer appends its
    headers to `headers` in place anyway."""

    key: bytes | None
    value: bytes | None
    """None: a tombstone (compacted topics: hold sets, expired erased entries)."""
    headers: list[tuple[str, bytes]]


class RecordColumns(Sequence[OutgoingRecord]):
    """Records held as columns: the relay's chunks, with no object per record.

    Record i is `keys[i]`, `values[i]` and, for each header column in order, the header
    `(names[c], columns[c][i])`, left out where that is None (a signature tree of one has
    no proof). A str header value is sent as its UTF-8 (the relay's event ids). The C
    record batches read the columns directly (coordinator/kafka/recordbatch.py); anything
    else reads them as `OutgoingRecord`s, made on access, with the same bytes.
    """

    __slots__ = ("columns", "keys", "names", "values")

    def __init__(
        self,
        keys: list[bytes | None],
        values: list[bytes | None],
        names: tuple[str, ...],
        columns: list[Sequence[bytes | str | None]],
    ) -> None:
        if len(keys) != len(values) or len(names) != len(columns):
            raise ValueError("one value per key and one name per header column")
        if any(len(column) != len(keys) for column in columns):
            raise ValueError("one header value (or None) per record in each column")
        self.keys, self.values, self.names, self.columns = keys, values, names, columns

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, index: int) -> OutgoingRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[OutgoingRecord]: ...

    def __getitem__(self, index: int | slice) -> OutgoingRecord | Sequence[OutgoingRecord]:
        if isinstance(index, slice):
            return RecordColumns(
                self.keys[index],
                self.values[index],
                self.names,
                [column[index] for column in self.columns],
            )
        headers: list[tuple[str, bytes]] = []
        for name, column in zip(self.names, self.columns, strict=True):
            value = column[index]
            if value is not None:
                headers.append((name, value.encode() if isinstance(value, str) else value))
        return OutgoingRecord(self.keys[index], self.values[index], headers)

    def __iter__(self) -> Iterator[OutgoingRecord]:
        return (self[i] for i in range(len(self.keys)))


@dataclass(frozen=True, slots=True)
class Delivery:
    """Records handed to the producer together: their positions, and one future for all."""

    indexes: Sequence[int]
    """Positions in the sequence given to `EventProducer.send_all`."""
    future: asyncio.Future[object]
    """Resolves once the broker has acknowledged every one of these records (acks)."""


class EventProducer(Protocol):
    """What the relay needs from a Kafka producer."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def send_all(self, topic: str, records: Sequence[OutgoingRecord]) -> AsyncIterator[Delivery]:
        """Enqueue every record without awaiting acknowledgements, yielding a `Delivery` for
        each group as it is handed over. Records of one key keep their order; every record
        is in exactly one delivery once the iteration ends."""
        ...


ProducerFactory = Callable[[], EventProducer]


class FastExtraMissing(CoordinatorError, RuntimeError):
    """RETENTION_RELAY_PRODUCER=confluent without confluent-kafka installed."""


def producer_factory(kafka: KafkaSettings, relay: RelaySettings) -> ProducerFactory:
    """New producers of the client `relay.producer` names.

    Raises:
        FastExtraMissing: confluent-kafka (the `fast` extra) is not installed; raised
            here, when the relay is built, not at its first round.
    """
    if relay.producer == "aiokafka":
        return lambda: KafkaEventProducer(kafka, relay)
    try:
        from coordinator.kafka.librdkafka import LibrdkafkaEventProducer
    except ImportError:
        raise FastExtraMissing(
            "RETENTION_RELAY_PRODUCER=confluent needs the `fast` extra: "
            "pip install 'retention-fanout[fast]'"
        ) from None
    return lambda: LibrdkafkaEventProducer(kafka, relay)


def producer_options(relay: RelaySettings) -> dict[str, Any]:
    """The aiokafka producer options the relay uses, beyond the connection settings."""
    return {
        # Idempotence: a retry inside the producer can neither duplicate nor reorder a
        # record within a partition. acks=all: a record counts as published only once
        # every in-sync replica has it, because the outbox row is then marked and never
        # sent again.
        "acks": "all",
        "enable_idempotence": True,
        # The relay enqueues a whole claimed batch without awaiting, so records are
        # already waiting when the sender runs; a short linger only helps the tail of a
        # batch join the same request. Larger values add latency to every batch.
        "linger_ms": relay.linger_ms,
        # The size of one partition's batch builder. aiokafka keeps one request in flight
        # per partition: with the 16 KiB default a 5,000-record claim (~1.8 MB) would
        # leave in ~20 sequential requests per partition; 512 KiB, in about one.
        "max_batch_size": relay.max_batch_size,
        "max_request_size": max(relay.max_batch_size * 2, 1_048_576),
        # Default none: with gzip the only codec every mainstream client reads out of the
        # box, and gzip (level 9 in aiokafka) costs ~3x the producer's CPU per event
        # (bench/compression.py, docs/protocol.md#compression).
        "compression_type": None if relay.compression == "none" else relay.compression,
    }


class KafkaEventProducer:
    """`EventProducer` backed by `aiokafka.AIOKafkaProducer` and its batch API."""

    def __init__(self, kafka: KafkaSettings, relay: RelaySettings) -> None:
        options = producer_options(relay)
        self._producer: Any = AIOKafkaProducer(**kafka.client_kwargs(), **options)
        # The C batches are uncompressed; with a codec aiokafka's builder compresses.
        self._native = recordbatch.BUILDER == "native" and options["compression_type"] is None
        self._max_batch_size: int = options["max_batch_size"]
        # The producer's own default: murmur2 of the key over all partitions, as the Java
        # client does, so a key lands on the partition `send()` would have chosen (keyed
        # records go through `schemas.partitioning`, the same function made faster).
        self._partitioner = DefaultPartitioner()

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send_all(
        self, topic: str, records: Sequence[OutgoingRecord]
    ) -> AsyncIterator[Delivery]:
        # Waits for the topic's metadata, like `send()` (can hang: the caller bounds it).
        partitions = sorted(await self._producer.partitions_for(topic))
        fill = self._fill_native if self._native else self._fill
        for partition, builder, indexes in fill(partitions, records):
            # Queued behind this partition's previous batch until that one has left, so a
            # partition's batches, and the records of a key, reach the broker in order.
            future = await self._producer.send_batch(builder, topic, partition=partition)
            yield Delivery(indexes, future)

    def _fill(
        self, partitions: list[int], records: Sequence[OutgoingRecord]
    ) -> list[tuple[int, Any, list[int]]]:
        """Records appended to one batch per partition; a full batch is left and a new
        one started. Batches come in the order they were started."""
        batches: list[tuple[int, Any, list[int]]] = []
        open_batches: dict[int, tuple[Any, list[int]]] = {}
        for index, (record, partition) in enumerate(
            zip(records, self._partitions(partitions, records), strict=True)
        ):
            current = open_batches.get(partition)
            if current is not None and _append(current[0], record):
                current[1].append(index)
                continue
            builder = self._producer.create_batch()
            # The first record always fits: an empty batch takes a record of any size.
            _append(builder, record)
            current = open_batches[partition] = (builder, [index])
            batches.append((partition, builder, current[1]))
        for builder, _ in open_batches.values():
            # Closed: nothing else may be appended once it is queued.
            builder.close()
        return batches

    def _fill_native(
        self, partitions: list[int], records: Sequence[OutgoingRecord]
    ) -> list[tuple[int, Any, list[int]]]:
        """`_fill` in one C call (coordinator/kafka/recordbatch.py): the same placement, the
        same batches, the same bytes."""
        chosen = None
        if None in _keys(records):
            position = {partition: n for n, partition in enumerate(partitions)}
            chosen = [position[p] for p in self._partitions(partitions, records)]
        if isinstance(records, RecordColumns):
            return cast(
                "list[tuple[int, Any, list[int]]]",
                recordbatch.fill_columns(records, partitions, chosen, self._max_batch_size),
            )
        return cast(
            "list[tuple[int, Any, list[int]]]",
            recordbatch.fill(records, partitions, chosen, self._max_batch_size),
        )

    def _partitions(self, partitions: list[int], records: Sequence[OutgoingRecord]) -> list[int]:
        """Each record's partition. Keyed records are hashed together (`partitions_for`:
        ~0.3 µs a key instead of ~2 µs one by one); a null key goes where aiokafka's own
        partitioner sends it."""
        keys = _keys(records)
        if None not in keys:
            return partitions_for(cast("list[bytes]", keys), partitions)
        keyed = [key for key in keys if key is not None]
        hashed = iter(partitions_for(keyed, partitions))
        return [
            next(hashed) if key is not None else self._partitioner(key, partitions, partitions)
            for key in keys
        ]


def _keys(records: Sequence[OutgoingRecord]) -> Sequence[bytes | None]:
    return records.keys if isinstance(records, RecordColumns) else [r.key for r in records]


def _append(builder: Any, record: OutgoingRecord) -> bool:
    """False when the batch is full (aiokafka then closes it)."""
    metadata = builder.append(
        key=record.key, value=record.value, timestamp=None, headers=record.headers
    )
    return metadata is not None
