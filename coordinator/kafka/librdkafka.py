"""`EventProducer` on confluent-kafka (librdkafka), the `fast` extra (RETENTION_RELAY_PRODUCER).

aiokafka does all of a producer's work in Python on the event loop: partitioning
(murmur2), building batches, the protocol. librdkafka does it in C on threads of its own,
so the relay's Python thread only encodes, signs and hands records over (`produce`),
while the previous chunk is already on the wire. bench/relay_throughput.py measures both.

The guarantees are the aiokafka producer's: `acks=all` and idempotence (no duplicate and
no reordering from the producer's own retries), a record of one key always on the
partition Java and aiokafka choose (murmur2 of the key), and a delivery future resolved
only once the broker acknowledged every record it carries, or failed with the first
error. Delivery reports come from `poll()`, which a task of this producer calls on the
event loop while deliveries are open, so futures are only ever touched on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from typing import Any

import structlog
from aiokafka.errors import KafkaError
from confluent_kafka import Producer  # the `fast` extra: import this module only to use it

from coordinator import CoordinatorError
from coordinator.kafka.producer import Delivery, OutgoingRecord
from coordinator.settings import RelaySettings
from schemas import KafkaSettings

__all__ = ["LibrdkafkaEventProducer", "ProducerError", "producer_config"]

log = structlog.get_logger(__name__)

_POLL_INTERVAL_S = 0.002
"""How often delivery reports are collected while a delivery is open."""
_FULL_QUEUE_PAUSE_S = 0.005
"""How long to let librdkafka drain its queue when it is full before producing again."""


class ProducerError(CoordinatorError, KafkaError):  # type: ignore[misc]  # aiokafka: untyped
    """librdkafka refused or failed a record; the text is librdkafka's, with no secret."""

    retriable = True


def producer_config(kafka: KafkaSettings, relay: RelaySettings) -> dict[str, Any]:
    """librdkafka's configuration for the relay: `kafka`'s connection (TLS, SASL) and the
    options `coordinator.kafka.producer.producer_options` gives aiokafka. It holds the
    SASL password in clear: never log it."""
    return {
        **kafka.librdkafka_config(),
        "acks": "all",
        "enable.idempotence": True,
        # Java's and aiokafka's partitioner, so a key's records share one partition
        # whichever client sent them (librdkafka's default hashes with CRC32).
        "partitioner": "murmur2_random",
        "linger.ms": relay.linger_ms,
        "batch.size": relay.max_batch_size,
        "message.max.bytes": max(relay.max_batch_size * 2, 1_048_576),
        "compression.type": relay.compression,
        "request.timeout.ms": int(kafka.request_timeout_s * 1000),
        # A record not acknowledged within the relay's bound fails (and is sent again next
        # round) instead of lingering in librdkafka's queue for its 5-minute default.
        "message.timeout.ms": int(relay.publish_timeout_s * 1000),
        "error_cb": _client_error,
    }


def _client_error(error: Any) -> None:
    # librdkafka reports connection trouble here and retries by itself; what matters to
    # the relay reaches it as failed deliveries, or as a stall the watchdog acts on. A
    # fatal error (the idempotent producer's state is lost) leaves this producer unusable
    # until the watchdog replaces it: say so. Its text names brokers, never credentials.
    if error.fatal():
        log.warning("librdkafka_fatal_error", error=str(error))


def _retrieve(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


class _Group:
    """The records of one `Delivery`: resolves its future once it is sealed (every record
    handed over) and every record's report came in."""

    __slots__ = ("error", "future", "left", "owner", "sealed")

    def __init__(self, owner: LibrdkafkaEventProducer, future: asyncio.Future[object]) -> None:
        self.owner = owner
        self.future = future
        self.left = 0
        self.sealed = False
        self.error: BaseException | None = None
        # A group whose hand-over failed midway is never given to the caller: its
        # outcome is retrieved here so asyncio does not report it as unretrieved.
        future.add_done_callback(_retrieve)

    def add(self) -> None:
        self.left += 1
        self.owner.in_flight += 1

    def report(self, error: Any, message: Any) -> None:
        if error is not None and self.error is None:
            self.error = ProducerError(str(error))
        self.left -= 1
        self.owner.in_flight -= 1
        self._settle()

    def seal(self) -> None:
        """No record will be added: reports of the first ones may have come in already
        (while librdkafka's queue was full), so only now can the last one settle it."""
        self.sealed = True
        self._settle()

    def _settle(self) -> None:
        if self.sealed and self.left == 0 and not self.future.done():
            if self.error is None:
                self.future.set_result(None)
            else:
                self.future.set_exception(self.error)


class LibrdkafkaEventProducer:
    """`EventProducer` backed by `confluent_kafka.Producer`."""

    def __init__(self, kafka: KafkaSettings, relay: RelaySettings, *, group: int = 512) -> None:
        self._producer: Any = Producer(producer_config(kafka, relay))
        self._metadata_timeout_s = kafka.request_timeout_s
        self._group = group
        self.in_flight = 0
        self._wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect: fetch the cluster's metadata, as aiokafka's `start` does."""
        try:
            await asyncio.to_thread(self._producer.list_topics, timeout=self._metadata_timeout_s)
        except Exception as exc:  # confluent_kafka.KafkaException
            raise ProducerError(str(exc)) from None
        self._poller = asyncio.create_task(self._poll(), name="librdkafka-delivery-reports")

    async def stop(self) -> None:
        """Wait for open deliveries (the caller bounds the wait), then stop polling."""
        try:
            while self.in_flight > 0:
                self._producer.poll(0)
                await asyncio.sleep(_POLL_INTERVAL_S)
        finally:
            if self._poller is not None:
                self._poller.cancel()
                with suppress(asyncio.CancelledError):
                    await self._poller
                self._poller = None

    async def _poll(self) -> None:
        while True:
            await self._wake.wait()
            self._producer.poll(0)
            if self.in_flight == 0:
                self._wake.clear()
            await asyncio.sleep(_POLL_INTERVAL_S)

    async def send_all(
        self, topic: str, records: Sequence[OutgoingRecord]
    ) -> AsyncIterator[Delivery]:
        """Hand records over in groups of `group`, one future per group; librdkafka
        partitions, batches and sends them on its own threads, in order per partition."""
        loop = asyncio.get_running_loop()
        produce = self._producer.produce
        for start in range(0, len(records), self._group):
            group = _Group(self, loop.create_future())
            report = group.report
            indexes = range(start, min(start + self._group, len(records)))
            for index in indexes:
                record = records[index]
                while True:
                    try:
                        produce(
                            topic,
                            record.value,
                            record.key,
                            headers=record.headers,
                            on_delivery=report,
                        )
                        break
                    except BufferError:
                        # librdkafka's queue is full: collect reports, let it send.
                        self._wake.set()
                        self._producer.poll(0)
                        await asyncio.sleep(_FULL_QUEUE_PAUSE_S)
                    except Exception as exc:  # confluent_kafka.KafkaException and kin
                        raise ProducerError(str(exc)) from None
                group.add()
            group.seal()
            self._wake.set()
            yield Delivery(indexes, group.future)
            # Let the loop run between groups: delivery reports, the database, signals.
            await asyncio.sleep(0)
