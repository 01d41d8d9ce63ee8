"""Kafka behind a small typed surface of ours (aiokafka's wheel ships no type hints)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)
from aiokafka.structs import TopicPartition

from schemas import KafkaSettings
from schemas.partitioning import partitions_for

__all__ = [
    "CommitLost",
    "ConsumerPort",
    "Partition",
    "ProducerPort",
    "Record",
    "TransportError",
    "consumed_headers",
    "kafka_consumer",
    "kafka_producer",
    "record_of",
    "table_reader",
]


class Partition(NamedTuple):
    topic: str
    partition: int


class Record(NamedTuple):
    """One consumed record (immutable). A named tuple, not a frozen dataclass: one is
    made per record read, and a frozen dataclass's `__init__` sets each field through
    `object.__setattr__` (0.5 µs against 0.2)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


def record_of(r: Any) -> Record:
    """Ours of an aiokafka `ConsumerRecord`; a null header value (anyone may write one)
    becomes empty bytes."""
    return Record(r.topic, r.partition, r.offset, r.key, r.value, consumed_headers(r.headers))


def consumed_headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    """A consumed record's headers as `Record` holds them: every (name, value) pair in
    the order read, repeated names kept (a verifier refuses a repeated signature header),
    a null value as empty bytes."""
    headers = tuple(raw) if raw else ()
    for header in headers:
        if header.__class__ is not tuple or header[1].__class__ is not bytes:
            return tuple((k, bytes(v or b"")) for k, v in headers)
    # The usual case, checked without building new pairs: every value is bytes already.
    return headers


def table_reader(kafka: KafkaSettings, topic: str, **options: Any) -> Any:
    """A consumer of every partition of `topic` from its start, in no group and committing
    nothing: how a compacted topic is read into a local table. It assigns itself the
    partitions once the topic's metadata arrives, after `start()`."""
    return AIOKafkaConsumer(
        topic,
        **kafka.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **options,
    )


class TransportError(Exception):
    """Kafka failed in a way that retrying later may fix."""


class CommitLost(TransportError):
    """The partition moved to another member before the commit: the records will be redelivered."""


Headers = Sequence[tuple[str, bytes]]
RevokeCallback = Callable[[set[Partition]], Awaitable[None]]


class ConsumerPort(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def getmany(self, *, timeout_s: float, max_records: int) -> dict[Partition, list[Record]]:
        """Fetched records per partition; `TransportError` when Kafka fails."""

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit next-offsets; `CommitLost` if the partition is no longer ours."""

    def assignment(self) -> set[Partition]: ...
    def pause(self, partition: Partition) -> None: ...
    def resume(self, partition: Partition) -> None: ...
    def highwater(self, partition: Partition) -> int | None: ...


class ProducerPort(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: Headers = ()
    ) -> Awaitable[Any]:
        """Enqueue a record; the returned awaitable resolves once the broker has it (acks=all)."""

    async def send_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes, bytes]],
        *,
        headers: Sequence[Headers] | None = None,
    ) -> Awaitable[Any]:
        """Enqueue (key, value) records in one call, each partition's in order, with
        `headers[i]` on record i; the returned awaitable resolves once the broker has them
        all."""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped base class
    def __init__(self, on_revoked: RevokeCallback, on_assigned: RevokeCallback) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._on_revoked({Partition(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._on_assigned({Partition(tp.topic, tp.partition) for tp in assigned})


class _AiokafkaConsumer:
    def __init__(self, consumer: Any, topic: str, listener: _Listener) -> None:
        self._consumer = consumer
        self._topic = topic
        self._listener = listener

    async def start(self) -> None:
        self._consumer.subscribe([self._topic], listener=self._listener)
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def getmany(self, *, timeout_s: float, max_records: int) -> dict[Partition, list[Record]]:
        try:
            batches = await self._consumer.getmany(
                timeout_ms=int(timeout_s * 1000), max_records=max_records
            )
        except KafkaError as exc:
            raise TransportError(repr(exc)) from exc
        return {
            Partition(tp.topic, tp.partition): [record_of(r) for r in records]
            for tp, records in batches.items()
        }

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        try:
            await self._consumer.commit(
                {TopicPartition(p.topic, p.partition): o for p, o in offsets.items()}
            )
        except (CommitFailedError, IllegalStateError) as exc:
            raise CommitLost(repr(exc)) from exc
        except KafkaError as exc:
            raise TransportError(repr(exc)) from exc

    def assignment(self) -> set[Partition]:
        return {Partition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def pause(self, partition: Partition) -> None:
        self._consumer.pause(TopicPartition(partition.topic, partition.partition))

    def resume(self, partition: Partition) -> None:
        tp = TopicPartition(partition.topic, partition.partition)
        if tp in self._consumer.assignment():
            self._consumer.resume(tp)

    def highwater(self, partition: Partition) -> int | None:
        tp = TopicPartition(partition.topic, partition.partition)
        if tp not in self._consumer.assignment():
            return None
        value = self._consumer.highwater(tp)
        return int(value) if value is not None else None


_LOST_SEQUENCE = (OutOfOrderSequenceNumber, UnknownProducerId)
"""The broker lost this idempotent producer's sequence state (it was SIGKILLed): aiokafka
keeps the producer id and fails every later send the same way, so only a new producer
(a new id) gets acks out again (fault scenario 3)."""

_STOP_TIMEOUT_S = 5.0


class _AiokafkaProducer:
    def __init__(self, create: Callable[[], Any]) -> None:
        self._create = create
        self._producer = create()
        self._lost_sequence = False

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: Headers = ()
    ) -> Awaitable[Any]:
        if self._lost_sequence:
            await self._replace()
        try:
            future: asyncio.Future[Any] = await self._producer.send(
                topic, value, key=key, headers=list(headers)
            )
        except KafkaError as exc:
            raise TransportError(repr(exc)) from exc
        future.add_done_callback(self._note_failure)
        return future

    async def send_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes, bytes]],
        *,
        headers: Sequence[Headers] | None = None,
    ) -> Awaitable[Any]:
        """aiokafka's batch API: one batch builder per partition instead of a `send()`
        per record; the key picks the partition as `send()` would (murmur2, of all keys
        at once)."""
        if self._lost_sequence:
            await self._replace()
        futures: list[asyncio.Future[Any]] = []
        try:
            partitions = sorted(await self._producer.partitions_for(topic))
            chosen = partitions_for([key for key, _ in records], partitions)
            open_batches: dict[int, Any] = {}
            for index, (key, value) in enumerate(records):
                extra = list(headers[index]) if headers is not None else []
                partition = chosen[index]
                builder = open_batches.get(partition)
                if (
                    builder is None
                    or builder.append(key=key, value=value, timestamp=None, headers=extra) is None
                ):
                    if builder is not None:  # full: it leaves, a new one takes the record
                        futures.append(
                            await self._producer.send_batch(builder, topic, partition=partition)
                        )
                    builder = open_batches[partition] = self._producer.create_batch()
                    builder.append(key=key, value=value, timestamp=None, headers=extra)
            for partition, builder in open_batches.items():
                futures.append(await self._producer.send_batch(builder, topic, partition=partition))
        except KafkaError as exc:
            raise TransportError(repr(exc)) from exc
        for future in futures:
            future.add_done_callback(self._note_failure)
        return asyncio.gather(*futures)

    def _note_failure(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and isinstance(future.exception(), _LOST_SEQUENCE):
            self._lost_sequence = True

    async def _replace(self) -> None:
        old, self._producer = self._producer, self._create()
        self._lost_sequence = False
        # The old producer's batches all failed already; a hung close must not block acks.
        with suppress(KafkaError, TimeoutError):
            await asyncio.wait_for(old.stop(), _STOP_TIMEOUT_S)
        try:
            await self._producer.start()
        except KafkaError as exc:
            self._lost_sequence = True  # try a fresh one again on the next send
            raise TransportError(repr(exc)) from exc


def kafka_consumer(
    kafka: KafkaSettings,
    *,
    group_id: str,
    max_records: int,
    on_revoked: RevokeCallback,
    on_assigned: RevokeCallback,
) -> ConsumerPort:
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_records,
        # Only committed, whole records matter to us: the relay may write transactionally.
        isolation_level="read_committed",
    )
    return _AiokafkaConsumer(consumer, kafka.topics.events, _Listener(on_revoked, on_assigned))


def kafka_producer(
    kafka: KafkaSettings, *, linger_ms: int = 5, max_batch_bytes: int = 16 * 1024
) -> ProducerPort:
    """Acks of one batch are sent together and awaited together: a short linger packs them;
    a consumer that awaits each ack on its own (the Faust adapter) passes 0.

    `max_batch_bytes` is one partition's record batch: aiokafka sends a partition's next
    batch only once the one before it left, so a batch's acks (~850 bytes each, signed)
    in 16 KiB batches (aiokafka's default) took ~20 produce requests one after the
    other per partition; the runtime passes `RETENTION_CONSUMER_ACK_BATCH_BYTES`."""
    return _AiokafkaProducer(
        lambda: AIOKafkaProducer(
            # Acks and registrations in RETENTION_KAFKA_COMPRESSION's codec.
            **kafka.producer_kwargs(),
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            max_batch_size=max_batch_bytes,
        )
    )
