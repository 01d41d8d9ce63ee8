"""The completion tracker: registry and ack consumers, snapshots, reminders, deadlines.

Each step is a method a test can drive on its own; `run_forever` loops over them. The
acks consumer is in a consumer group with manual commits: a batch's offsets commit only
after the transaction that recorded it (docs/tracking.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import Clock
from coordinator.metrics import Metrics
from coordinator.policy.model import DeclaredService
from coordinator.settings import TrackerSettings
from coordinator.tracking import deadlines, drift, ledger, registry, snapshot
from schemas import (
    KafkaSettings,
    PoisonRecord,
    RetentionAck,
    ServiceRegistration,
    clip_text,
    dead_letter,
    decode,
    encode,
)
from schemas.errors import error_text
from schemas.models import EARLIEST, LATEST, MAX_NAME_CHARS
from schemas.signing import (
    SignatureMode,
    Signer,
    Verdict,
    Verifier,
    accepts,
    parse_public_key,
)

__all__ = ["Cycle", "Tracker"]

log = structlog.get_logger("retention.tracker")

_HOUSEKEEPING_LIMIT = 1000
_RETRY_DELAY_S = 2.0
_OUTAGES = (DBAPIError, KafkaError, OSError, TimeoutError)
_EARLIEST_MS, _LATEST_MS = (int(t.timestamp() * 1000) for t in (EARLIEST, LATEST))


@dataclass(slots=True)
class Cycle:
    """What one `process_once` did."""

    registrations: int = 0
    tracked: int = 0
    acks: ledger.LedgerOutcome | None = None
    reminders: int = 0
    overdue: int = 0


class Tracker:
    """Follows every published event until each expected service has acknowledged it."""

    def __init__(
        self,
        engine: AsyncEngine,
        kafka: KafkaSettings,
        settings: TrackerSettings,
        *,
        clock: Clock,
        metrics: Metrics,
        services: Sequence[DeclaredService],
        signatures: SignatureMode,
        signer: Signer | None,
    ) -> None:
        self._signer = signer
        self._engine = engine
        self._services_declared = list(services)
        self._declared: snapshot.Declared = [
            (svc.name, entity_type, action)
            for svc in services
            for entity_type, action in sorted(svc.pairs())
        ]
        # Acks and registrations are checked against the declared keys only.
        self._verifiers = {
            svc.name: Verifier([parse_public_key(k) for k in svc.public_keys]) for svc in services
        }
        self._mode = signatures
        self._drifting: set[str] = set()
        self._kafka = kafka
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._topics = kafka.topics
        self._schedule = deadlines.ReminderSchedule(
            interval=timedelta(seconds=settings.reminder_interval_s),
            backoff=settings.reminder_backoff,
            max_reminders=settings.max_reminders,
            slow_interval=timedelta(seconds=settings.slow_reminder_interval_s),
        )
        self._producer: AIOKafkaProducer | None = None
        self._acks: AIOKafkaConsumer | None = None
        self._services: AIOKafkaConsumer | None = None
        self._gauge_services: set[str] = set()
        self._last_housekeeping = float("-inf")
        self._last_gauges = float("-inf")

    async def start(self) -> None:
        common = self._kafka.client_kwargs()
        self._producer = AIOKafkaProducer(**common, acks="all", enable_idempotence=True)
        self._acks = AIOKafkaConsumer(
            self._topics.acks,
            **common,
            group_id=self._settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._settings.batch_size,
        )
        # No group: every tracker reads the whole compacted topic from its start.
        self._services = AIOKafkaConsumer(
            self._topics.services,
            **common,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            await self._producer.start()
            await self._acks.start()
            await self._services.start()
            await self._assign_services()
        except BaseException:
            await self.stop()
            raise

    async def _assign_services(self, *, timeout_s: float = 30.0) -> None:
        consumer, topic = self._services_, self._topics.services
        deadline = time.monotonic() + timeout_s
        # Without a group the consumer assigns itself every partition once the topic's
        # metadata arrives, which for a topic created a moment ago can take a while.
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} does not exist (run `retention serve` once)")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for client in (self._acks, self._services, self._producer):
            if client is not None:
                await client.stop()
        self._acks = self._services = self._producer = None

    # --- registry -------------------------------------------------------------------

    async def sync_registry(self, *, timeout_s: float = 30.0) -> int:
        """Read the services topic up to its current end: call before trusting snapshots."""
        consumer = self._services_
        assigned = list(consumer.assignment())
        end = await consumer.end_offsets(assigned)
        applied = 0
        deadline = time.monotonic() + timeout_s
        while [tp for tp in assigned if await consumer.position(tp) < end[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"services topic not read to its end in {timeout_s}s")
            applied += await self.poll_registry(timeout_ms=500)
        return applied

    async def poll_registry(self, *, timeout_ms: int = 0) -> int:
        consumer = self._services_
        batches = await consumer.getmany(timeout_ms=timeout_ms)
        try:
            records: list[ServiceRegistration | registry.Retirement] = []
            poison = []
            for messages in batches.values():
                for msg in messages:
                    refused = self._registration_refused(msg)
                    if refused is not None:
                        self._metrics.registrations_rejected.labels(reason=refused).inc()
                        log.warning(
                            "registration_rejected",
                            partition=msg.partition,
                            offset=msg.offset,
                            reason=refused,
                        )
                        continue
                    try:
                        records.append(_registration(msg))
                    except PoisonRecord as exc:
                        self._metrics.registrations_rejected.labels(reason="malformed").inc()
                        log.warning(
                            "registration_rejected",
                            partition=msg.partition,
                            offset=msg.offset,
                            reason=exc.reason,
                        )
                        poison.append((msg, exc.reason))
            if poison:
                await self._dead_letter(poison)
            if not records:
                return 0
            records.sort(
                key=lambda r: r.registered_at if isinstance(r, ServiceRegistration) else r.at
            )
            async with self._engine.begin() as conn:
                return await registry.apply_registrations(conn, records)
        except BaseException:
            # Nothing was applied: read the batch again rather than lose a registration.
            _rewind(consumer, batches)
            raise

    def _registration_refused(self, msg: Any) -> str | None:
        """Why a services-topic record (registration or tombstone) is ignored, if it is.

        The record key names the service. A declared service's record must carry its
        signature, so nobody can make it look drifted or retired. An undeclared service has
        no key to check: its registration is kept, since showing it as `undeclared` drift
        is the point, and the registry decides nothing.
        """
        if msg.key is None:
            return "malformed"
        verifier = self._verifiers.get(msg.key.decode("utf-8", "replace"))
        if verifier is not None and not self._signature_ok(verifier, msg, self._topics.services):
            return "bad_signature"
        return None

    def _signature_ok(self, verifier: Verifier, msg: Any, topic: str) -> bool:
        if self._mode is SignatureMode.OFF:
            return True
        checked = verifier.verify(msg.key, msg.value, msg.headers or ())
        if checked.verdict is Verdict.UNSIGNED and self._mode is SignatureMode.PERMISSIVE:
            self._metrics.unsigned_records.labels(topic=topic).inc()
        return accepts(self._mode, checked)

    async def check_drift(self) -> dict[str, drift.Drift]:
        """Compare registrations with the declaration; gauge every service, log new drift."""
        async with self._engine.connect() as conn:
            found = await drift.service_drift(conn, self._services_declared)
        for name, state in found.items():
            self._metrics.service_drift.labels(service=name).set(1 if state.drifting else 0)
        drifting = {name for name, state in found.items() if state.drifting}
        for name in sorted(drifting - self._drifting):
            log.warning("service_drift_started", service=name, problem=found[name].problem)
        self._drifting = drifting
        return found

    # --- events and acks ---------------------------------------------------------------

    async def track_published(self) -> int:
        """Snapshot the expected acknowledgers of newly published events."""
        total = 0
        while True:
            async with self._engine.begin() as conn:
                tracked = await snapshot.track_published(
                    conn,
                    declared=self._declared,
                    now=self._clock.now(),
                    reminder_interval=self._schedule.interval,
                    limit=_HOUSEKEEPING_LIMIT,
                )
            total += len(tracked)
            if len(tracked) < _HOUSEKEEPING_LIMIT:
                return total

    async def consume_acks(self, *, timeout_ms: int = 1000) -> ledger.LedgerOutcome | None:
        """Apply one batch of acks in one transaction, then commit its offsets."""
        consumer = self._acks_
        batches = await consumer.getmany(
            timeout_ms=timeout_ms, max_records=self._settings.batch_size
        )
        try:
            records: list[ledger.ConsumedAck] = []
            poison = []
            for tp, messages in batches.items():
                for msg in messages:
                    try:
                        ack = decode(RetentionAck, msg.value)
                    except PoisonRecord as exc:
                        records.append(
                            ledger.ConsumedAck(tp.topic, tp.partition, msg.offset, None, exc.reason)
                        )
                        poison.append((msg, exc.reason))
                    else:
                        refused = self._refused(ack, msg)
                        records.append(
                            ledger.ConsumedAck(
                                tp.topic, tp.partition, msg.offset, ack, refused=refused
                            )
                        )
            if not records:
                return None
            if poison:
                await self._dead_letter(poison)
            async with self._engine.begin() as conn:
                outcome = await ledger.apply_acks(
                    conn,
                    records,
                    declared=self._declared,
                    now=self._clock.now(),
                    reminder_interval=self._schedule.interval,
                )
        except BaseException:
            # Nothing was recorded: rewind so the batch is read again, not skipped.
            _rewind(consumer, batches)
            raise
        await consumer.commit(
            {tp: OffsetAndMetadata(msgs[-1].offset + 1, "") for tp, msgs in batches.items() if msgs}
        )
        self._count(outcome)
        return outcome

    def _refused(self, ack: RetentionAck, msg: Any) -> ledger.RejectReason | None:
        verifier = self._verifiers.get(ack.service)
        if verifier is None:
            return ledger.RejectReason.UNKNOWN_SERVICE
        if not self._signature_ok(verifier, msg, self._topics.acks):
            return ledger.RejectReason.BAD_SIGNATURE
        return None

    async def _dead_letter(self, poison: list[tuple[Any, str]]) -> None:
        producer = self._producer_
        sends = []
        for msg, reason in poison:
            # Cut to fit: a record too large for the DLQ would fail this batch forever.
            letter = dead_letter(msg.key, msg.value, msg.headers or ())
            headers = [
                *letter.headers,
                ("retention-error", clip_text(reason)),
                ("retention-source", f"{msg.topic}:{msg.partition}:{msg.offset}".encode()),
            ]
            if letter.truncated:
                headers.append(("retention-truncated", letter.truncated.encode()))
            sends.append(
                producer.send(self._topics.dlq, value=letter.value, key=letter.key, headers=headers)
            )
        await asyncio.gather(*await asyncio.gather(*sends))

    def _count(self, outcome: ledger.LedgerOutcome) -> None:
        m = self._metrics
        # One labels() lookup per label set, not per ack: it is most of this loop's cost.
        for (service, status), n in Counter(
            (a.service, a.status.value) for a in outcome.accepted
        ).items():
            m.acks.labels(service=service, status=status).inc(n)
        for reason, n in Counter(why.value for _, why in outcome.rejected).items():
            m.acks_rejected.labels(reason=reason).inc(n)
        for policy, seconds in outcome.completed:
            m.completion_seconds.labels(policy=policy).observe(seconds)
        if outcome.rejected:
            log.warning(
                "acks_rejected",
                count=len(outcome.rejected),
                reasons=sorted({reason.value for _, reason in outcome.rejected}),
            )

    # --- reminders and deadlines -------------------------------------------------------

    async def send_reminders(self) -> int:
        """Re-publish due events; counted and scheduled only once the broker has them."""
        producer = self._producer_
        total = 0
        while True:
            async with self._engine.begin() as conn:
                now = self._clock.now()
                due = await deadlines.due_reminders(
                    conn, now=now, limit=_HOUSEKEEPING_LIMIT, schedule=self._schedule
                )
                if not due:
                    return total
                records = [(r.event.key.encode(), encode(r.event)) for r in due]
                signed = (
                    self._signer.sign_batch(records)
                    if self._signer is not None
                    else [[] for _ in records]
                )
                sent = await asyncio.gather(
                    *(
                        producer.send(
                            self._topics.events,
                            value=value,
                            key=key,
                            headers=[("retention-reminder", str(r.number).encode()), *headers],
                        )
                        for r, (key, value), headers in zip(due, records, signed, strict=True)
                    )
                )
                await asyncio.gather(*sent)
                await deadlines.record_reminders(conn, due, now=now, schedule=self._schedule)
            for r in due:
                self._metrics.reminders_sent.labels(policy=r.event.policy).inc()
            total += len(due)
            if len(due) < _HOUSEKEEPING_LIMIT:
                return total

    async def escalate_overdue(self) -> int:
        total = 0
        while True:
            async with self._engine.begin() as conn:
                overdue = await deadlines.escalate_overdue(
                    conn, now=self._clock.now(), limit=_HOUSEKEEPING_LIMIT
                )
            if overdue:
                log.warning("events_overdue", count=len(overdue))
            total += len(overdue)
            if len(overdue) < _HOUSEKEEPING_LIMIT:
                return total

    async def refresh_gauges(self) -> None:
        async with self._engine.connect() as conn:
            counts = await deadlines.open_acks_by_service(conn)
        for service in self._gauge_services - counts.keys():
            self._metrics.pending_acks.labels(service=service).set(0)
            self._metrics.overdue_events.labels(service=service).set(0)
        for service, (pending, overdue) in counts.items():
            self._metrics.pending_acks.labels(service=service).set(pending)
            self._metrics.overdue_events.labels(service=service).set(overdue)
        self._gauge_services |= counts.keys()

    # --- loop ----------------------------------------------------------------------------

    async def housekeeping(self) -> Cycle:
        """Everything but acks: registry, new publications, reminders, deadlines, gauges."""
        cycle = Cycle()
        cycle.registrations = await self.poll_registry()
        await self.check_drift()
        cycle.tracked = await self.track_published()
        cycle.reminders = await self.send_reminders()
        cycle.overdue = await self.escalate_overdue()
        if time.monotonic() - self._last_gauges >= self._settings.gauges_interval_s:
            await self.refresh_gauges()
            self._last_gauges = time.monotonic()
        return cycle

    async def process_once(self, *, timeout_ms: int = 1000) -> Cycle:
        """One batch of acks, then housekeeping if it is due."""
        outcome = await self.consume_acks(timeout_ms=timeout_ms)
        cycle = Cycle()
        if time.monotonic() - self._last_housekeeping >= self._settings.poll_interval_s:
            cycle = await self.housekeeping()
            self._last_housekeeping = time.monotonic()
        cycle.acks = outcome
        return cycle

    async def run_forever(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await self.sync_registry()
            timeout_ms = int(self._settings.poll_interval_s * 1000)
            while not stop.is_set():
                try:
                    await self.process_once(timeout_ms=timeout_ms)
                except Exception as exc:
                    # The batch was rewound; try again later. Outages are expected: one
                    # line each, not a traceback per retry. Anything else is a bug.
                    if isinstance(exc, _OUTAGES):
                        log.warning("tracker_cycle_failed", error=error_text(exc))
                    else:
                        log.exception("tracker_cycle_failed")
                    with suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), _RETRY_DELAY_S)
        finally:
            await self.stop()

    @property
    def _producer_(self) -> AIOKafkaProducer:
        return _started(self._producer)

    @property
    def _acks_(self) -> AIOKafkaConsumer:
        return _started(self._acks)

    @property
    def _services_(self) -> AIOKafkaConsumer:
        return _started(self._services)


def _started(client: Any) -> Any:
    if client is None:
        raise RuntimeError("Tracker.start() has not been called")
    return client


def _rewind(consumer: AIOKafkaConsumer, batches: dict[Any, list[Any]]) -> None:
    for tp, messages in batches.items():
        if messages:
            consumer.seek(tp, messages[0].offset)


def _registration(msg: Any) -> ServiceRegistration | registry.Retirement:
    """A registration, or a tombstone retiring the service named by its key."""
    if msg.value is not None or msg.key is None:
        return decode(ServiceRegistration, msg.value)
    try:
        service = msg.key.decode("utf-8")
    except UnicodeDecodeError:
        raise PoisonRecord("tombstone key is not UTF-8", msg.value) from None
    # The key becomes a service name in the registry: the same bounds as on the wire.
    if not 0 < len(service) <= MAX_NAME_CHARS or "\x00" in service:
        raise PoisonRecord("tombstone key is not a service name", msg.value)
    # The producer sets a record's timestamp: any int64 can arrive here.
    if not _EARLIEST_MS <= msg.timestamp < _LATEST_MS:
        raise PoisonRecord(f"tombstone timestamp {msg.timestamp} out of range", msg.value)
    return registry.Retirement(service, _from_ms(msg.timestamp))


def _from_ms(timestamp_ms: int) -> datetime:
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC)
