"""In-memory stand-ins for the Kafka ports and the topic admin, for tests without a broker.

`MemoryKafka` holds topics as lists of records; its publisher appends to them and its
readers read them, so a test writes acks or registrations, drives the tracker, and
inspects what the tracker published (reminders, dead letters) and committed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from coordinator.kafka.admin import TopicSpec
from coordinator.kafka.ports import ConsumedRecord, OutgoingRecord

__all__ = [
    "MemoryAckReader",
    "MemoryKafka",
    "MemoryPublisher",
    "MemoryRegistrationReader",
    "MemoryTopicAdmin",
]


@dataclass(eq=False)
class MemoryKafka:
    """One partition per topic; offsets count from 0."""

    topics: dict[str, list[ConsumedRecord]] = field(default_factory=lambda: defaultdict(list))
    committed: dict[str, int] = field(default_factory=dict)
    """Per topic, the committed next offset of the (one) consumer group."""

    def append(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        timestamp_ms: int = 0,
    ) -> ConsumedRecord:
        log = self.topics[topic]
        record = ConsumedRecord(topic, 0, len(log), key, value, tuple(headers), timestamp_ms)
        log.append(record)
        return record


class MemoryPublisher:
    """`Publisher` appending to `MemoryKafka`; `fail_with` refuses the next publishes."""

    def __init__(self, kafka: MemoryKafka) -> None:
        self.kafka = kafka
        self.fail_with: list[BaseException] = []
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def publish(self, topic: str, records: Sequence[OutgoingRecord]) -> None:
        if self.fail_with:
            raise self.fail_with.pop(0)
        for r in records:
            self.kafka.append(topic, r.value, key=r.key, headers=r.headers)


class _MemoryReader:
    def __init__(self, kafka: MemoryKafka, topic: str) -> None:
        self.kafka = kafka
        self.topic = topic
        self.position = 0
        self.started = False

    async def stop(self) -> None:
        self.started = False

    def rewind(self, records: Sequence[ConsumedRecord]) -> None:
        if records:
            self.position = min(r.offset for r in records)

    def _take(self, max_records: int | None) -> list[ConsumedRecord]:
        log = self.kafka.topics[self.topic]
        end = len(log) if max_records is None else min(len(log), self.position + max_records)
        records = log[self.position : end]
        self.position = end
        return records


class MemoryAckReader(_MemoryReader):
    """`AckReader` over one topic of `MemoryKafka`, resuming from its committed offset."""

    async def start(self) -> None:
        self.started = True
        self.position = self.kafka.committed.get(self.topic, 0)

    async def read(self, *, timeout_s: float, max_records: int) -> list[ConsumedRecord]:
        return self._take(max_records)

    async def commit(self, records: Sequence[ConsumedRecord]) -> None:
        if records:
            self.kafka.committed[self.topic] = max(r.offset for r in records) + 1


class MemoryRegistrationReader(_MemoryReader):
    """`RegistrationReader` over one topic of `MemoryKafka`, from its start."""

    async def start(self, *, timeout_s: float) -> None:
        if self.topic not in self.kafka.topics:
            raise LookupError(f"topic {self.topic} does not exist")
        self.started = True
        self.position = 0

    async def read(self, *, timeout_s: float) -> list[ConsumedRecord]:
        return self._take(None)

    async def end_offsets(self) -> dict[int, int]:
        return {0: len(self.kafka.topics[self.topic])}

    async def positions(self) -> dict[int, int]:
        return {0: self.position}


class MemoryTopicAdmin:
    """`TopicAdmin` over a set of names; `created` keeps every spec it was given."""

    def __init__(self, existing: set[str] | None = None) -> None:
        self.existing = set(existing or ())
        self.created: list[TopicSpec] = []

    async def list_topics(self) -> set[str]:
        return set(self.existing)

    async def create_topics(self, topics: Sequence[TopicSpec]) -> list[str]:
        self.created.extend(topics)
        new = [t.name for t in topics if t.name not in self.existing]
        self.existing |= set(new)
        return new

    async def delete_topics(self, names: Sequence[str]) -> None:
        self.existing -= set(names)
