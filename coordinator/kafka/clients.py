"""The tracker's Kafka ports on aiokafka; each client is made at `start` and dropped at `stop`."""

from __future__ import annotations

import asyncio
import operator
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from coordinator.kafka.ports import ConsumedRecord, OutgoingRecord
from schemas import KafkaSettings

__all__ = [
    "KafkaAckReader",
    "KafkaPublisher",
    "KafkaRegistrationReader",
    "KafkaTopicReader",
]


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _started(client: Any) -> Any:
    if client is None:
        raise RuntimeError("start() has not been called")
    return client


def _records(batches: dict[Any, list[Any]]) -> list[ConsumedRecord]:
    records: list[ConsumedRecord] = []
    add = records.append
    for tp, messages in batches.items():
        topic, partition = tp.topic, tp.partition
        for msg in messages:
            add(
                ConsumedRecord(
                    topic,
                    partition,
                    msg.offset,
                    msg.key,
                    msg.value,
                    _headers(msg.headers),
                    msg.timestamp,
                )
            )
    return records


_VALUE = operator.itemgetter(1)


def _headers(headers: Any) -> tuple[tuple[str, bytes], ...]:
    """A record's headers, a null value as empty, like the SDK reads it: refused or
    copied like any other, never a crash in the tracker. aiokafka's tuple as it is when
    every value is non-empty (checked in C): an ack carries its signature headers, and
    rebuilding them cost about a microsecond a record."""
    if type(headers) is tuple and all(map(_VALUE, headers)):
        return headers
    return tuple([(k, v or b"") for k, v in headers or ()])


def _last_per_partition(records: Sequence[ConsumedRecord]) -> dict[TopicPartition, int]:
    # Keyed by plain tuples, one TopicPartition per partition at the end: a batch holds
    # thousands of records and a handful of partitions.
    last: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        if r.offset > last.get(key, -1):
            last[key] = r.offset
    return {TopicPartition(topic, partition): at for (topic, partition), at in last.items()}


def _rewind(consumer: Any, records: Sequence[ConsumedRecord]) -> None:
    first: dict[TopicPartition, int] = {}
    for r in records:
        first.setdefault(TopicPartition(r.topic, r.partition), r.offset)
    for tp, offset in first.items():
        # A partition revoked meanwhile restarts from its committed offset when reassigned.
        if tp in consumer.assignment():
            consumer.seek(tp, offset)


class KafkaPublisher:
    """`Publisher` on an idempotent `acks=all` producer."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._producer: Any = None

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            **self._kafka.producer_kwargs(), acks="all", enable_idempotence=True
        )
        try:
            await producer.start()
        except BaseException:
            # A broker that cannot be reached leaves a half-started client to close.
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def publish(self, topic: str, records: Sequence[OutgoingRecord]) -> None:
        producer = _started(self._producer)
        sent = await asyncio.gather(
            *(producer.send(topic, value=r.value, key=r.key, headers=r.headers) for r in records)
        )
        await asyncio.gather(*sent)


class KafkaAckReader:
    """`AckReader` on a group consumer with auto-commit off."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        group_id: str,
        max_poll_records: int,
        fetch_max_wait_ms: int = 500,
    ) -> None:
        self._kafka = kafka
        self._group_id = group_id
        self._max_poll_records = max_poll_records
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._consumer: Any = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            self._kafka.topics.acks,
            **self._kafka.client_kwargs(),
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._max_poll_records,
            fetch_max_wait_ms=self._fetch_max_wait_ms,
        )
        await consumer.start()
        self._consumer = consumer

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def read(self, *, timeout_s: float, max_records: int) -> list[ConsumedRecord]:
        consumer = _started(self._consumer)
        return _records(await consumer.getmany(timeout_ms=_ms(timeout_s), max_records=max_records))

    async def commit(self, records: Sequence[ConsumedRecord]) -> None:
        offsets = _last_per_partition(records)
        await _started(self._consumer).commit(
            {tp: OffsetAndMetadata(offset + 1, "") for tp, offset in offsets.items()}
        )

    def rewind(self, records: Sequence[ConsumedRecord]) -> None:
        _rewind(_started(self._consumer), records)


class KafkaTopicReader:
    """A whole topic, read on a consumer without a group from the earliest offset."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self._kafka = kafka
        self._topic = topic
        self._consumer: Any = None

    async def start(self, *, timeout_s: float) -> None:
        topic = self._topic
        consumer = AIOKafkaConsumer(
            topic,
            **self._kafka.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        deadline = time.monotonic() + timeout_s
        # Without a group the consumer assigns itself every partition once the topic's
        # metadata arrives, which for a topic created a moment ago can take a while.
        while not consumer.assignment():
            if time.monotonic() > deadline:
                await self.stop()
                raise LookupError(f"topic {topic} does not exist (run `retention serve` once)")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def read(self, *, timeout_s: float) -> list[ConsumedRecord]:
        return _records(await _started(self._consumer).getmany(timeout_ms=_ms(timeout_s)))

    def rewind(self, records: Sequence[ConsumedRecord]) -> None:
        _rewind(_started(self._consumer), records)

    async def end_offsets(self) -> dict[int, int]:
        consumer = _started(self._consumer)
        ends = await consumer.end_offsets(list(consumer.assignment()))
        return {tp.partition: offset for tp, offset in ends.items()}

    async def positions(self) -> dict[int, int]:
        consumer = _started(self._consumer)
        return {tp.partition: await consumer.position(tp) for tp in consumer.assignment()}

    async def chunks_to_end(self, *, timeout_s: float) -> AsyncIterator[list[ConsumedRecord]]:
        """The records up to the end offsets taken now, one fetch at a time, so that a
        reader of a topic of any size holds one fetch (later records are left unread).

        Raises:
            TimeoutError: the end was not reached within `timeout_s` of reading (the time
                the caller spends on a chunk before asking for the next does not count).
        """
        ends = await self.end_offsets()
        deadline = time.monotonic() + timeout_s
        while True:
            positions = await self.positions()
            if all(positions.get(p, 0) >= end for p, end in ends.items()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._topic} not read to its end within {timeout_s}s")
            fetched = await self.read(timeout_s=0.2)
            chunk = [r for r in fetched if r.offset < ends.get(r.partition, 0)]
            if chunk:
                paused = time.monotonic()
                yield chunk
                deadline += time.monotonic() - paused


class KafkaRegistrationReader(KafkaTopicReader):
    """`RegistrationReader`: the compacted services topic, whole, without a group."""

    def __init__(self, kafka: KafkaSettings) -> None:
        super().__init__(kafka, kafka.topics.services)
