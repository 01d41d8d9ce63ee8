"""A small typed protocol around aiokafka's producer, and the relay's producer settings.

aiokafka's wheel ships no `py.typed`, so the relay talks to `EventProducer` instead:
typed, and replaceable in tests by a producer that hangs the way aiokafka sometimes does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer

from coordinator.settings import RelaySettings
from schemas import KafkaSettings

__all__ = ["EventProducer", "KafkaEventProducer", "ProducerFactory", "producer_options"]


class EventProducer(Protocol):
    """What the relay needs from a Kafka producer."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self, topic: str, value: bytes, *, key: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> asyncio.Future[object]:
        """Enqueue one record; the returned future resolves once the broker has it (acks)."""
        ...


ProducerFactory = Callable[[], EventProducer]


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
        # aiokafka keeps one request in flight per partition: with the 16 KiB default a
        # 1,000-record claim (~300 KB) needs ~20 sequential round trips spread over the
        # partitions. 512 KiB lets one claim leave in about one request per partition.
        "max_batch_size": relay.max_batch_size,
        "max_request_size": max(relay.max_batch_size * 2, 1_048_576),
        # lz4: JSON events with repeated field names shrink ~3x at a CPU cost that does
        # not show in throughput (measured in bench/relay_throughput.py); gzip (level 9
        # in aiokafka) costs more CPU than it saves on a small machine.
        "compression_type": None if relay.compression == "none" else relay.compression,
    }


class KafkaEventProducer:
    """`EventProducer` backed by `aiokafka.AIOKafkaProducer`."""

    def __init__(self, kafka: KafkaSettings, relay: RelaySettings) -> None:
        self._producer: Any = AIOKafkaProducer(**kafka.client_kwargs(), **producer_options(relay))

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(
        self, topic: str, value: bytes, *, key: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> asyncio.Future[object]:
        future: asyncio.Future[object] = await self._producer.send(
            topic, value, key=key, headers=list(headers)
        )
        return future
