"""The holds table: `data.retention.holds` read to its end before events are handled.

SPEC §11. The coordinator publishes each held entity's current set of holds, keyed
`type:id`, and a tombstone once the set is empty. The SDK reads the whole compacted
topic from its start when it starts (no consumer group), then, before each batch of
events, up to the end offsets the broker reports at that moment: a hold published
before the batch began is always seen. An event whose entity or `subject` is in the
table is acked `held` and not executed.

Records that fail the coordinator's signature (under `RETENTION_SIGNATURES=required`,
or a bad signature under `permissive`) change nothing and are counted in
`retention_consumer_hold_records_rejected`: a forged record can neither lift a hold nor
invent one. A record that is not a hold set is rejected the same way.

The table lives in memory and is rebuilt from the topic at each start. It is never
resumed from a stored position: compaction removes tombstones after
`delete.retention.ms`, so a table resumed after a longer stop could keep a released
hold forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumer_sdk._internal.transport import Record, TransportError, record_of, table_reader
from consumer_sdk._internal.trust import Trust
from schemas import HoldRecord, KafkaSettings, PoisonRecord, RetentionEvent, decode

__all__ = ["HoldReader", "HoldSource", "HoldTable", "kafka_hold_source"]

log = structlog.get_logger("consumer_sdk")


class HoldSource(Protocol):
    """The holds topic, every partition, read from the start (no group)."""

    async def start(self, *, timeout_s: float) -> None:
        """Connect and take every partition; `TransportError` if the topic is missing."""

    async def stop(self) -> None: ...

    async def end_offsets(self) -> dict[int, int]: ...

    async def positions(self) -> dict[int, int]: ...

    async def read(self, *, timeout_s: float) -> list[Record]: ...


class HoldTable:
    """Entity `type:id` → its active hold ids, as the last valid record said."""

    def __init__(self, trust: Trust) -> None:
        self._trust = trust
        self._held: dict[str, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def apply(self, records: Iterable[Record]) -> None:
        for record in records:
            reason = self._refused(record)
            if reason is not None:
                self._trust.metrics.holds_rejected.labels(self._trust.service, reason).inc()
                log.warning(
                    "hold_record_rejected",
                    service=self._trust.service,
                    partition=record.partition,
                    offset=record.offset,
                    reason=reason,
                )

    def _refused(self, record: Record) -> str | None:
        """Apply `record` if it is genuine and well formed; else say why not."""
        refused = self._trust.refused(record)
        if refused is not None:
            return refused
        if record.key is None:
            return "malformed"
        try:
            key = record.key.decode("utf-8")
        except UnicodeDecodeError:
            return "malformed"
        if record.value is None:
            self._held.pop(key, None)
            return None
        try:
            hold = decode(HoldRecord, record.value)
        except PoisonRecord:
            return "malformed"
        if hold.key != key:
            # The key decides what compaction keeps: a value naming another entity would
            # let a later tombstone of this key leave that entity held, or the reverse.
            return "key_mismatch"
        self._held[key] = tuple(hold.holds)
        return None

    def holds_on(self, event: RetentionEvent) -> tuple[str, ...]:
        """The holds that cover the event's entity or its subject (empty: not held)."""
        if not self._held:
            # The usual case, asked of every event: nothing is held at all.
            return ()
        found = self._held.get(event.key, ())
        if event.subject is not None:
            found += self._held.get(event.subject, ())
        return tuple(sorted(set(found))) if found else ()


class HoldReader:
    """Keeps a `HoldTable` up to date from a `HoldSource`."""

    def __init__(self, source: HoldSource, table: HoldTable, *, read_timeout_s: float) -> None:
        self.source = source
        self.table = table
        self._timeout_s = read_timeout_s
        self._lock = asyncio.Lock()

    async def start(self, *, timeout_s: float) -> None:
        await self.source.start(timeout_s=timeout_s)
        try:
            await self.catch_up()
        except BaseException:
            await self.source.stop()
            raise
        log.info("holds_table_read", service=self.table._trust.service, held=len(self.table))

    async def stop(self) -> None:
        await self.source.stop()

    async def catch_up(self) -> None:
        """Read up to the end offsets as of now.

        Raises:
            TransportError: the end was not reached within the read timeout; the caller
                handles no event until a later call succeeds.
        """
        async with self._lock:
            end = await self.source.end_offsets()
            deadline = time.monotonic() + self._timeout_s
            while any(end.get(p, 0) > at for p, at in (await self.source.positions()).items()):
                if time.monotonic() > deadline:
                    raise TransportError(f"holds topic not read to its end in {self._timeout_s}s")
                self.table.apply(await self.source.read(timeout_s=0.2))


class _KafkaHoldSource:
    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._topic = kafka.topics.holds
        self._consumer: Any = None
        self._offsets: Any = None
        self._partitions: list[TopicPartition] = []

    async def start(self, *, timeout_s: float) -> None:
        consumer = table_reader(self._kafka, self._topic, isolation_level="read_committed")
        await consumer.start()
        deadline = time.monotonic() + timeout_s
        # Without a group the consumer assigns itself every partition once the topic's
        # metadata arrives.
        while not consumer.assignment():
            if time.monotonic() > deadline:
                await consumer.stop()
                raise TransportError(
                    f"topic {self._topic} does not exist: the coordinator creates it "
                    "when it starts (retention serve)"
                )
            await asyncio.sleep(0.05)
        self._partitions = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        self._consumer = consumer
        # End offsets on a connection of their own: on the reader's, the broker answers
        # them only after the long-polling fetch in flight (up to fetch_max_wait_ms, 500 ms
        # by default, before every batch); here they take a few milliseconds.
        offsets = AIOKafkaConsumer(
            **self._kafka.client_kwargs(), group_id=None, isolation_level="read_committed"
        )
        try:
            await offsets.start()
        except BaseException:
            await self.stop()
            raise
        self._offsets = offsets

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        offsets, self._offsets = self._offsets, None
        try:
            if offsets is not None:
                await offsets.stop()
        finally:
            if consumer is not None:
                await consumer.stop()

    async def end_offsets(self) -> dict[int, int]:
        try:
            ends: Mapping[TopicPartition, int] = await self._offsets.end_offsets(self._partitions)
        except KafkaError as exc:
            raise TransportError(repr(exc)) from exc
        return {tp.partition: int(offset) for tp, offset in ends.items()}

    async def positions(self) -> dict[int, int]:
        try:
            return {tp.partition: int(await self._consumer.position(tp)) for tp in self._partitions}
        except KafkaError as exc:
            raise TransportError(repr(exc)) from exc

    async def read(self, *, timeout_s: float) -> list[Record]:
        try:
            batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            raise TransportError(repr(exc)) from exc
        return [record_of(r) for records in batches.values() for r in records]


def kafka_hold_source(kafka: KafkaSettings) -> HoldSource:
    return _KafkaHoldSource(kafka)
