"""What the tracker needs from Kafka, as protocols in seconds.

aiokafka ships no types and speaks milliseconds; these say what the coordinator means.
`coordinator.kafka.clients` implements them on aiokafka, `coordinator.kafka.memory` in
memory, for tests without a broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from coordinator.kafka.producer import OutgoingRecord

__all__ = ["AckReader", "ConsumedRecord", "OutgoingRecord", "Publisher", "RegistrationReader"]


@dataclass(slots=True)
class ConsumedRecord:
    # Not frozen: the tracker makes one per ack, and a frozen dataclass sets each field
    # through object.__setattr__. Nothing changes one.
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = 0


class Publisher(Protocol):
    """Publishes records (re-sent events, dead letters) with `acks=all`, idempotently."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, topic: str, records: Sequence[OutgoingRecord]) -> None:
        """Return once the broker acknowledged every record; raise if any was refused."""


class AckReader(Protocol):
    """The acks topic, in the tracker's consumer group, offsets committed by hand."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def read(self, *, timeout_s: float, max_records: int) -> list[ConsumedRecord]:
        """Up to `max_records` records, waiting up to `timeout_s` for the first."""

    async def commit(self, records: Sequence[ConsumedRecord]) -> None:
        """Commit past the last of `records` in each partition."""

    def rewind(self, records: Sequence[ConsumedRecord]) -> None:
        """Read `records` again: each partition from its first one here."""


class RegistrationReader(Protocol):
    """The compacted services topic, read whole from its start by every tracker (no group)."""

    async def start(self, *, timeout_s: float) -> None:
        """Connect and take every partition; `LookupError` if the topic is not there."""

    async def stop(self) -> None: ...

    async def read(self, *, timeout_s: float) -> list[ConsumedRecord]: ...

    def rewind(self, records: Sequence[ConsumedRecord]) -> None:
        """Read `records` again: each partition from its first one here."""

    async def end_offsets(self) -> dict[int, int]:
        """Per partition, the offset the next record written will get."""

    async def positions(self) -> dict[int, int]:
        """Per partition, the offset of the next record `read` returns."""
