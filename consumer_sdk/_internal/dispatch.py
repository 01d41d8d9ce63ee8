"""From fetched records to the acks and DLQ records to send: decode, look up, execute.

Shared by the aiokafka runtime (per fetched batch and partition) and the Faust adapter
(per event): both commit nothing here; each awaits the returned sends before it lets
its consumer commit the records' offsets.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from consumer_sdk._internal.executor import Abandoned, EventExecutor
from consumer_sdk._internal.registry import HandlerRegistry, HandlerSpec
from consumer_sdk._internal.transport import ProducerPort, Record
from consumer_sdk.dlq import DlqHeader, DlqReason
from consumer_sdk.idempotency import IdempotencyStore, ProcessedEvent
from consumer_sdk.metrics import ConsumerMetrics
from schemas import (
    AckStatus,
    PoisonRecord,
    RetentionEvent,
    Topics,
    clip_text,
    dead_letter,
    decode,
    encode,
    utc_now,
)

__all__ = ["Dispatched", "Dispatcher", "dlq_headers"]

log = structlog.get_logger("consumer_sdk")


def dlq_headers(
    record: Record, *, service: str, reason: DlqReason, error: str, attempts: int
) -> list[tuple[str, bytes]]:
    """The original headers, then ours saying why the record is in the DLQ."""
    return _headers(record, record.headers, "", service, reason, error, attempts)


def _headers(
    record: Record,
    original: Sequence[tuple[str, bytes]],
    truncated: str,
    service: str,
    reason: DlqReason,
    error: str,
    attempts: int,
) -> list[tuple[str, bytes]]:
    ours = {
        DlqHeader.REASON: reason.value,
        DlqHeader.ERROR: error,
        DlqHeader.SERVICE: service,
        DlqHeader.ATTEMPTS: str(attempts),
        DlqHeader.ORIGINAL_TOPIC: record.topic,
        DlqHeader.ORIGINAL_PARTITION: str(record.partition),
        DlqHeader.ORIGINAL_OFFSET: str(record.offset),
        DlqHeader.FAILED_AT: utc_now().isoformat().replace("+00:00", "Z"),
    }
    if truncated:
        ours[DlqHeader.TRUNCATED] = truncated
    kept = [(k, v) for k, v in original if k not in set(ours)]
    return kept + [(k.value, clip_text(v)) for k, v in ours.items()]


@dataclass(slots=True)
class Dispatched:
    """What a run over records produced: sends to await, and how far it got."""

    sends: list[Awaitable[Any]] = field(default_factory=list)
    last_done: int | None = None
    """Offset of the last record whose outcome is in `sends` (None: not even the first)."""


class Dispatcher:
    def __init__(
        self,
        *,
        service: str,
        topics: Topics,
        registry: HandlerRegistry,
        store: IdempotencyStore | None,
        metrics: ConsumerMetrics,
        executor: EventExecutor,
        producer: ProducerPort,
    ) -> None:
        self.service = service
        self.topics = topics
        self.registry = registry
        self.store = store
        self.metrics = metrics
        self.executor = executor
        self.producer = producer

    async def dispatch(
        self, records: Sequence[Record], stopping: asyncio.Event | None = None
    ) -> Dispatched:
        """Handle records in order (one store lookup for all); stop early if `stopping` is set.

        Raises what the store lookup or the producer raise; the caller re-reads from its
        last commit.
        """
        decoded: list[tuple[Record, RetentionEvent | PoisonRecord]] = []
        for record in records:
            try:
                decoded.append((record, decode(RetentionEvent, record.value)))
            except PoisonRecord as poison:
                decoded.append((record, poison))
        wanted = [
            item.event_id
            for _, item in decoded
            if isinstance(item, RetentionEvent) and self.registry.get(item.entity_type, item.type)
        ]
        known: dict[uuid.UUID, ProcessedEvent] = (
            dict(await self.store.lookup(self.service, wanted)) if self.store and wanted else {}
        )
        done = Dispatched()
        for record, item in decoded:
            if stopping is not None and stopping.is_set():
                break
            if isinstance(item, PoisonRecord):
                log.warning(
                    "poison record to the DLQ",
                    service=self.service,
                    partition=record.partition,
                    offset=record.offset,
                    reason=item.reason,
                )
                done.sends.append(await self._dead_letter(record, DlqReason.POISON, item.reason, 0))
                done.last_done = record.offset
                continue
            spec = self.registry.get(item.entity_type, item.type)
            if spec is None:
                self.metrics.skipped.labels(self.service).inc()
                done.last_done = record.offset
                continue
            try:
                done.sends.extend(await self._handle(record, item, spec, known, stopping))
            except Abandoned:
                break
            done.last_done = record.offset
        return done

    async def _handle(
        self,
        record: Record,
        event: RetentionEvent,
        spec: HandlerSpec,
        known: dict[uuid.UUID, ProcessedEvent],
        stopping: asyncio.Event | None,
    ) -> list[Awaitable[Any]]:
        outcome = await self.executor.execute(
            event, spec, known.get(event.event_id), stopping=stopping
        )
        if outcome.status is not AckStatus.FAILED:
            # A second copy of the event later in this batch is a redelivery too.
            known[event.event_id] = outcome.processed(event)
        ack = outcome.ack(self.service, event)
        self.metrics.handled.labels(
            self.service, spec.entity_type, spec.action.value, outcome.status.value
        ).inc()
        log.info(
            "event handled",
            service=self.service,
            event_id=str(event.event_id),
            entity_type=event.entity_type,
            action=spec.action.value,
            status=outcome.status.value,
            records_affected=outcome.records_affected,
            attempts=outcome.attempts,
            redelivered=outcome.redelivered,
            partition=record.partition,
            offset=record.offset,
        )
        sends = [await self.producer.send(self.topics.acks, encode(ack), key=ack.key.encode())]
        if outcome.status is AckStatus.FAILED:
            sends.append(
                await self._dead_letter(record, DlqReason.FAILED, outcome.detail, outcome.attempts)
            )
        return sends

    async def _dead_letter(
        self, record: Record, reason: DlqReason, error: str, attempts: int
    ) -> Awaitable[Any]:
        self.metrics.dead_lettered.labels(self.service, reason.value).inc()
        # Cut to fit: a record too large for the DLQ would fail this send on every re-read.
        letter = dead_letter(record.key, record.value, record.headers)
        return await self.producer.send(
            self.topics.dlq,
            letter.value,
            key=letter.key,
            headers=_headers(
                record, letter.headers, letter.truncated, self.service, reason, error, attempts
            ),
        )
