"""The completion tracker: registry and ack consumers, snapshots, reminders, deadlines.

Each step is a method a test can drive on its own; `run_forever` loops over them. The
acks consumer is in a consumer group with manual commits: a batch's offsets commit only
after the transaction that recorded it (docs/tracking.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, TypeVar

import structlog
from prometheus_client import Histogram
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.clock import Clock
from coordinator.copies.verification import answers
from coordinator.kafka.clients import KafkaAckReader, KafkaPublisher, KafkaRegistrationReader
from coordinator.kafka.ports import (
    AckReader,
    ConsumedRecord,
    OutgoingRecord,
    Publisher,
    RegistrationReader,
)
from coordinator.metrics import Metrics
from coordinator.policy.model import DeclaredService
from coordinator.purge import hold_topic
from coordinator.settings import TrackerSettings
from coordinator.tracking import deadlines, drift, ledger, registry, released, snapshot
from schemas import (
    KafkaSettings,
    PoisonRecord,
    RetentionAck,
    RetryPolicy,
    ServiceRegistration,
    Stopped,
    dead_letter,
    decode,
    encode,
    retry,
)
from schemas.collector import fewer_collections
from schemas.dlq import DlqReason, dlq_headers
from schemas.models import EARLIEST, LATEST, MAX_NAME_CHARS
from schemas.retries import any_error
from schemas.signing import (
    SignatureMode,
    Signer,
    Verdict,
    Verifier,
    accepts,
    parse_public_key,
)

__all__ = ["Cycle", "Tracker", "TrackerKafka"]

log = structlog.get_logger("retention.tracker")

_HOUSEKEEPING_LIMIT = 1000
_CONTENDED_RETRIES = 3
"""A batch's immediate retries after `ledger.Contended`. Each locks the events named in
the sorted pass, so they are never contended again: another retry needs yet other
events changed meanwhile (a new delete of an answered entity, a new reopening)."""
_UNDEFINED_OBJECT = "42704"
"""SQLSTATE of a type (or other object) the database does not have: a batch failing on
it may be a database not upgraded to the tracker's types (`Tracker.check_types`)."""
DLQ_SERVICE = "tracker"
"""`DlqHeader.SERVICE` on acks the tracker dead-letters."""

T = TypeVar("T")
_EARLIEST_MS, _LATEST_MS = (int(t.timestamp() * 1000) for t in (EARLIEST, LATEST))


@dataclass(slots=True)
class Cycle:
    """What one housekeeping pass did."""

    registrations: int = 0
    tracked: int = 0
    reminders: int = 0
    overdue: int = 0
    holds_published: int = 0
    republished: int = 0


@dataclass(slots=True)
class _AckBatch:
    """Acks read, decoded and judged on their signatures; not recorded yet."""

    messages: list[ConsumedRecord]
    records: list[ledger.ConsumedAck]
    poison: list[tuple[ConsumedRecord, str]]
    collector: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    """The batch's `fewer_collections`, entered before it is decoded and left once it is
    recorded (`Tracker._apply_acks`) or rewound (`_rewind_ahead`), after its objects
    are dropped (`done`)."""

    def done(self) -> None:
        """Drop the batch's objects, then its hold on the collector's threshold.

        In that order: left while the batch's records, acks and proofs were alive, the
        restored threshold (CPython's 700, far below what the batch allocated) made the
        next allocation collect them all, and promote them into the older generations
        whose collections walk them again (docs/tracking.md, "What session 11 cut")."""
        self.messages = []
        self.records.clear()
        self.poison.clear()
        self.collector.close()


class _Signature(NamedTuple):
    # A NamedTuple: one is made per ack, at a third of a frozen dataclass's cost.
    accepted: bool
    key_id: str | None
    """The verifying key's id; None when unsigned or not checked."""


@dataclass(frozen=True, slots=True)
class TrackerKafka:
    """The tracker's three Kafka clients; `coordinator.kafka.memory` has stand-ins."""

    publisher: Publisher
    acks: AckReader
    registrations: RegistrationReader

    @classmethod
    def connect(cls, kafka: KafkaSettings, settings: TrackerSettings) -> TrackerKafka:
        return cls(
            KafkaPublisher(kafka),
            KafkaAckReader(
                kafka,
                group_id=settings.group_id,
                max_poll_records=settings.batch_size,
                fetch_max_wait_ms=settings.ack_fetch_max_wait_ms,
            ),
            KafkaRegistrationReader(kafka),
        )


class Tracker:
    """Follows every published event until each expected service has acknowledged it."""

    retry_policy = RetryPolicy(initial_s=0.5, max_s=5.0, jitter_s=0.5)
    """Between failed cycles: soon after a blip, no faster than every 5 s in an outage."""

    def __init__(
        self,
        engine: AsyncEngine,
        kafka: KafkaSettings,
        settings: TrackerSettings,
        *,
        clock: Clock,
        metrics: Metrics,
        clients: TrackerKafka | None = None,
        services: Sequence[DeclaredService],
        signatures: SignatureMode,
        signer: Signer | None,
    ) -> None:
        self._signer = signer
        self._engine = engine
        ledger.learn_bound_types(engine)
        self._kafka = clients if clients is not None else TrackerKafka.connect(kafka, settings)
        self._services_declared = list(services)
        self._declared: snapshot.Declared = [
            (svc.name, entity_type, action)
            for svc in services
            for entity_type, action in sorted(svc.pairs())
        ]
        # Fixed per expected ack at the snapshot (tracking/deadlines.py applies them).
        self._deadlines: snapshot.Deadlines = {
            svc.name: svc.completion_deadline
            for svc in services
            if svc.completion_deadline is not None
        }
        # Acks and registrations are checked against the declared keys only.
        self._verifiers = {
            svc.name: Verifier([parse_public_key(k) for k in svc.public_keys]) for svc in services
        }
        self._mode = signatures
        self._drifting: set[str] = set()
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
        self._started = False
        self._types_missing = 0
        self._gauge_services: set[str] = set()
        self._resurrected_services: set[str] = set()
        self._last_gauges = float("-inf")
        # Where the look for released holds goes on from (tracking/released.py).
        self._released_after: uuid.UUID | None = None

    async def start(self, *, timeout_s: float = 30.0) -> None:
        k = self._kafka
        try:
            await k.publisher.start()
            await k.acks.start()
            await k.registrations.start(timeout_s=timeout_s)
        except BaseException:
            await self.stop()
            raise
        self._started = True

    async def stop(self) -> None:
        self._started = False
        # Each client is closed even when closing one before it failed or was cancelled (a
        # consumer's close can hang on an unreachable broker): an unclosed producer would
        # outlive the tracker.
        async with contextlib.AsyncExitStack() as clients:
            for client in (self._kafka.publisher, self._kafka.registrations, self._kafka.acks):
                clients.push_async_callback(client.stop)

    # --- registry -------------------------------------------------------------------

    async def sync_registry(self, *, timeout_s: float = 30.0) -> int:
        """Read the services topic up to its current end: call before trusting snapshots."""
        reader = self._client(self._kafka.registrations)
        end = await reader.end_offsets()
        applied = 0
        deadline = time.monotonic() + timeout_s
        while any(end.get(p, 0) > at for p, at in (await reader.positions()).items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"services topic not read to its end in {timeout_s}s")
            applied += await self.poll_registry(timeout_s=0.5)
        return applied

    async def poll_registry(self, *, timeout_s: float = 0.0) -> int:
        reader = self._client(self._kafka.registrations)
        messages = await reader.read(timeout_s=timeout_s)
        try:
            records: list[ServiceRegistration | registry.Retirement] = []
            poison: list[tuple[ConsumedRecord, str]] = []
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
            reader.rewind(messages)
            raise

    def _registration_refused(self, msg: ConsumedRecord) -> str | None:
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

    def _signature_ok(self, verifier: Verifier, msg: ConsumedRecord, topic: str) -> bool:
        return self._checked(verifier, msg, topic).accepted

    def _checked(self, verifier: Verifier, msg: ConsumedRecord, topic: str) -> _Signature:
        if self._mode is SignatureMode.OFF:
            return _Signature(True, None)
        checked = verifier.verify(msg.key, msg.value, msg.headers or ())
        if checked.valid:  # what nearly every record is: `accepts` in every mode
            return _Signature(True, checked.key_id)
        if checked.verdict is Verdict.UNSIGNED and self._mode is SignatureMode.PERMISSIVE:
            self._metrics.unsigned_records.labels(topic=topic).inc()
        return _Signature(accepts(self._mode, checked), None)

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
                done = await snapshot.track_published(
                    conn,
                    declared=self._declared,
                    deadlines=self._deadlines,
                    now=self._clock.now(),
                    reminder_interval=self._schedule.interval,
                    limit=self._settings.pass_events,
                )
            total += len(done.tracked)
            if not done.more:
                return total

    async def consume_acks(self, *, timeout_s: float = 1.0) -> ledger.LedgerOutcome | None:
        """Apply one batch of acks in one transaction, then commit its offsets."""
        batch = await self._read_acks(timeout_s=timeout_s)
        if batch is None:
            return None
        try:
            return await self._apply_acks(batch)
        except BaseException:
            # Nothing was recorded: rewind so the batch is read again, not skipped.
            self._client(self._kafka.acks).rewind(batch.messages)
            raise

    async def _read_acks(self, *, timeout_s: float) -> _AckBatch | None:
        """Read a batch of acks, decode them and check their signatures (no database).

        Parsing, decoding and recording a batch collect cyclic garbage less often
        (`TrackerSettings.gc_threshold`): a batch's records, acks, proofs and rows live
        until it is recorded, none in a cycle, and CPython's default threshold scanned
        them again and again and promoted them into generations whose collections walk
        the whole process. The batch holds the raised threshold until it is recorded
        (`_AckBatch.collector`). The wait for acks is not inside: a batch read ahead
        waits there nearly all the time, and the threshold is process-wide (the relay's
        rounds and the API run beside the tracker in `serve`). So what the consumer
        holds already is taken first without waiting, parsed with the threshold raised
        (on a busy topic, nearly every batch); only an empty read waits, and what it
        returns is parsed with CPython's threshold."""
        reader = self._client(self._kafka.acks)
        batch_size = self._settings.batch_size
        collector = contextlib.ExitStack()
        try:
            collector.enter_context(fewer_collections(self._settings.gc_threshold))
            messages = await reader.read(timeout_s=0, max_records=batch_size)
            if not messages:
                collector.close()
                messages = await reader.read(timeout_s=timeout_s, max_records=batch_size)
                if not messages:
                    return None
                collector.enter_context(fewer_collections(self._settings.gc_threshold))
        except BaseException:
            collector.close()
            raise
        try:
            batch = self._decode_batch(messages)
        except BaseException:
            collector.close()
            reader.rewind(messages)
            raise
        batch.collector = collector
        return batch

    def _decode_batch(self, messages: list[ConsumedRecord]) -> _AckBatch:
        batch = _AckBatch(messages, [], [])
        for msg in messages:
            try:
                ack = decode(RetentionAck, msg.value)
            except PoisonRecord as exc:
                batch.records.append(
                    ledger.malformed(msg.topic, msg.partition, msg.offset, exc.reason, msg.value)
                )
                batch.poison.append((msg, exc.reason))
            else:
                refused, key_id = self._refused(ack, msg)
                batch.records.append(
                    ledger.ConsumedAck(
                        msg.topic, msg.partition, msg.offset, ack, None, refused, key_id
                    )
                )
        return batch

    async def _apply_acks(self, batch: _AckBatch) -> ledger.LedgerOutcome:
        """Record a batch read by `_read_acks`, then commit its offsets. On an error the
        caller rewinds it (and any batch read after it), and the batch keeps its
        messages for that; recorded, it is emptied (`_AckBatch.done`)."""
        try:
            outcome = await self._record_batch(batch)
            batch.done()
            return outcome
        finally:
            batch.collector.close()

    async def _record_batch(self, batch: _AckBatch) -> ledger.LedgerOutcome:
        records = batch.records
        if batch.poison:
            await self._dead_letter(batch.poison)
        # One connection for the batch: a checkout pings the server first.
        try:
            async with self._engine.connect() as conn:
                outcome, verified = await self._record_retrying(conn, records)
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == _UNDEFINED_OBJECT:
                await self.check_types()
            raise
        if self._types_missing:
            self._types_missing = 0
            self._metrics.tracker_types_missing.set(0)
        await self._client(self._kafka.acks).commit(batch.messages)
        self._count(outcome)
        self._count_answers(verified)
        return outcome

    async def check_types(self) -> int:
        """How many of the tracker's own types the database lacks (it records no ack
        until `retention db upgrade` makes them), also set as
        `retention_tracker_types_missing`: with the other gauges (the first housekeeping
        pass, then every `gauges_interval_s`) and after a batch failed on one."""
        async with self._engine.connect() as conn:
            missing = len(await ledger.missing_types(conn))
        self._types_missing = missing
        self._metrics.tracker_types_missing.set(missing)
        return missing

    async def _record_retrying(
        self, conn: AsyncConnection, records: list[ledger.ConsumedAck]
    ) -> tuple[ledger.LedgerOutcome, answers.VerifyOutcome]:
        """`_record` in a transaction, again in a new one after what rolled it back:

        - `Overtaken`: tracking takes the audit chain's lock, which the batch's
          transaction would otherwise hold from its start to its commit: track apart,
          then apply. A tracked event stays tracked whatever becomes of the batch; the
          pass would have tracked it anyway.
        - `Contended`: events it had to lock out of their sorted order were held by
          another transaction, or it had not locked them: again with them in the sorted
          pass, where it waits its turn. Raised after `_CONTENDED_RETRIES`: the caller
          rewinds the batch and records it again after its retry pause."""
        track_missing = False
        contended: list[uuid.UUID] = []
        retries = 0
        while True:
            try:
                async with conn.begin():
                    return await self._record(
                        conn, records, track_missing=track_missing, contended=contended
                    )
            except ledger.Overtaken:
                async with conn.begin():
                    await ledger.track_overtaken(
                        conn,
                        records,
                        declared=self._declared,
                        deadlines=self._deadlines,
                        now=self._clock.now(),
                        reminder_interval=self._schedule.interval,
                    )
                track_missing = True
            except ledger.Contended as exc:
                retries += 1
                if retries > _CONTENDED_RETRIES:
                    raise
                log.info("ack_batch_contended", events=len(exc.events), retry=retries)
                contended = ledger.sorted_ids({*contended, *exc.events})

    async def _record(
        self,
        conn: AsyncConnection,
        records: list[ledger.ConsumedAck],
        *,
        track_missing: bool,
        contended: Sequence[uuid.UUID],
    ) -> tuple[ledger.LedgerOutcome, answers.VerifyOutcome]:
        """The batch's statements, in the caller's transaction: acks of verify events are
        answers (coordinator/copies/verification/), the others go to the ledger.
        `contended`: events a previous attempt raised `ledger.Contended` for, locked in
        the sorted pass."""
        now = self._clock.now()
        asked = await answers.verify_event_ids(
            conn, [r.ack.event_id for r in records if r.ack is not None]
        )
        # Nearly always none: no pass over the batch (a UUID's hash is Python code).
        to_ledger = (
            [r for r in records if r.ack is None or r.ack.event_id not in asked]
            if asked
            else records
        )
        # The delete events its answers and later deletes may change, locked with the
        # acks' events, before the audit chain (docs/verification.md, "Lock order").
        answered = await answers.events_to_lock(conn, records, asked)
        also_lock = ledger.sorted_ids({*answered, *contended}) if contended else answered
        reopened: list[uuid.UUID] = []

        async def then_lock(conn: AsyncConnection) -> list[uuid.UUID]:
            reopened[:] = await answers.reopened_to_lock(conn, records, asked)
            return reopened

        outcome = await ledger.apply_acks(
            conn,
            to_ledger,
            declared=self._declared,
            deadlines=self._deadlines,
            now=now,
            reminder_interval=self._schedule.interval,
            track_missing=track_missing,
            also_lock=also_lock,
            then_lock=then_lock,
        )
        locked = [*also_lock, *reopened]
        verified = await answers.apply_answers(
            conn,
            [r for r in records if r.ack is not None and r.ack.event_id in asked] if asked else [],
            now=now,
            locked=locked,
        )
        await answers.delete_again(conn, outcome.accepted, now=now, locked=locked)
        return outcome, verified

    def _refused(
        self, ack: RetentionAck, msg: ConsumedRecord
    ) -> tuple[ledger.RejectReason | None, str | None]:
        """Why the ack is refused (None: it is not), and the id of the key it verified with."""
        verifier = self._verifiers.get(ack.service)
        if verifier is None:
            return ledger.RejectReason.UNKNOWN_SERVICE, None
        checked = self._checked(verifier, msg, self._topics.acks)
        if not checked.accepted:
            return ledger.RejectReason.BAD_SIGNATURE, None
        return None, checked.key_id

    def _count_answers(self, outcome: answers.VerifyOutcome) -> None:
        m = self._metrics
        for (service, status), n in Counter(
            (a.service, a.status.value) for a in outcome.accepted
        ).items():
            m.acks.labels(service=service, status=status).inc(n)
        for reason, n in Counter(why.value for _, why in outcome.rejected).items():
            m.acks_rejected.labels(reason=reason).inc(n)
        for entity_type, _, service in outcome.resurrected:
            # The entity's id stays out of logs (personal data); the console names it.
            log.warning("entity_resurrected", entity_type=entity_type, service=service)

    async def _dead_letter(self, poison: list[tuple[ConsumedRecord, str]]) -> None:
        letters = []
        for msg, reason in poison:
            # Cut to fit: a record too large for the DLQ would fail this batch forever.
            letter = dead_letter(msg.key, msg.value, msg.headers)
            headers = dlq_headers(
                letter.headers,
                topic=msg.topic,
                partition=msg.partition,
                offset=msg.offset,
                service=DLQ_SERVICE,
                reason=DlqReason.POISON,
                error=reason,
                attempts=0,
                truncated=letter.truncated,
            )
            letters.append(OutgoingRecord(letter.key, letter.value, headers))
        await self._client(self._kafka.publisher).publish(self._topics.dlq, letters)

    def _count(self, outcome: ledger.LedgerOutcome) -> None:
        m = self._metrics
        # One labels() lookup per label set, not per ack: it is most of this loop's cost.
        for (service, status), n in Counter(
            (a.service, ledger.STATUS_TEXT[a.status]) for a in outcome.accepted
        ).items():
            m.acks.labels(service=service, status=status).inc(n)
        for reason, n in Counter(why.value for _, why in outcome.rejected).items():
            m.acks_rejected.labels(reason=reason).inc(n)
        # Likewise one labels() per policy, not per event completed.
        histograms: dict[str, Histogram] = {}
        for policy, seconds in outcome.completed:
            if policy not in histograms:
                histograms[policy] = m.completion_seconds.labels(policy=policy)
            histograms[policy].observe(seconds)
        if outcome.rejected:
            log.warning(
                "acks_rejected",
                count=len(outcome.rejected),
                reasons=sorted({reason.value for _, reason in outcome.rejected}),
            )

    # --- reminders and deadlines -------------------------------------------------------

    async def send_reminders(self) -> int:
        """Re-publish due events; counted and scheduled only once the broker has them."""
        publisher = self._client(self._kafka.publisher)
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
                await publisher.publish(
                    self._topics.events,
                    [
                        OutgoingRecord(
                            key,
                            value,
                            [("retention-reminder", str(r.number).encode()), *headers],
                        )
                        for r, (key, value), headers in zip(due, records, signed, strict=True)
                    ],
                )
                await deadlines.record_reminders(conn, due, now=now, schedule=self._schedule)
            for r in due:
                self._metrics.reminders_sent.labels(policy=r.event.policy).inc()
            total += len(due)
            if len(due) < _HOUSEKEEPING_LIMIT:
                return total

    # --- holds ------------------------------------------------------------------------

    async def publish_holds(self) -> int:
        """Publish the hold sets changed since the last pass to the holds topic."""
        return await hold_topic.publish_pending(
            self._engine,
            self._client(self._kafka.publisher),
            topic=self._topics.holds,
            signer=self._signer,
            clock=self._clock,
            limit=_HOUSEKEEPING_LIMIT,
        )

    async def republish_released(self) -> int:
        """Re-publish held events nothing holds any more, for the services that acked
        `held`; they are `pending` again once the broker has the events.

        One chunk of the held events per pass, from a cursor that goes on from pass to pass
        and starts over after the last: a pass costs one chunk whatever the held events
        number, and a released event is found within (held events / chunk) passes."""
        publisher = self._client(self._kafka.publisher)
        async with self._engine.begin() as conn:
            now = self._clock.now()
            scan = await released.released_events(
                conn, now=now, limit=_HOUSEKEEPING_LIMIT, after=self._released_after
            )
            free = scan.released
            if free:
                records = [(r.event.key.encode(), encode(r.event)) for r in free]
                signed = (
                    self._signer.sign_batch(records)
                    if self._signer is not None
                    else [[] for _ in records]
                )
                await publisher.publish(
                    self._topics.events,
                    [
                        OutgoingRecord(key, value, [("retention-released", b"1"), *headers])
                        for (key, value), headers in zip(records, signed, strict=True)
                    ],
                )
                await released.record_released(
                    conn, free, now=now, reminder_interval=self._schedule.interval
                )
        # Moved on only once the chunk is committed: a failed one is looked at again.
        self._released_after = scan.after
        if free:
            log.info("held_events_republished", count=len(free))
        return len(free)

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
            counts = await deadlines.open_acks_by_service(conn, now=self._clock.now())
            resurrected = await answers.resurrected_events(conn)
        await self.check_types()
        for service in self._resurrected_services - resurrected.keys():
            self._metrics.resurrected_events.labels(service=service).set(0)
        for service, count in resurrected.items():
            self._metrics.resurrected_events.labels(service=service).set(count)
        self._resurrected_services |= resurrected.keys()
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
        # Hold sets first: a released event is re-published only once its tombstone is out.
        cycle.holds_published = await self.publish_holds()
        cycle.republished = await self.republish_released()
        cycle.reminders = await self.send_reminders()
        cycle.overdue = await self.escalate_overdue()
        if time.monotonic() - self._last_gauges >= self._settings.gauges_interval_s:
            await self.refresh_gauges()
            self._last_gauges = time.monotonic()
        return cycle

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Acks and housekeeping in two loops side by side: a housekeeping pass (tracking
        a thousand new events, reminders) never holds up the next ack batch, and a busy
        acks topic never delays tracking (docs/tracking.md)."""
        await self.start()
        try:
            await self.sync_registry()
            timeout_s = self._settings.poll_interval_s
            ahead: asyncio.Task[_AckBatch | None] | None = None

            async def next_acks() -> None:
                # The next batch is read, decoded and its signatures checked while this
                # one's statements run in PostgreSQL: the two CPUs overlap. Its offsets
                # commit only after this batch's, once it is recorded in turn.
                nonlocal ahead
                pending, ahead = ahead, None
                batch = await (pending or self._read_acks(timeout_s=timeout_s))
                if batch is None:
                    return
                ahead = asyncio.create_task(self._read_acks(timeout_s=timeout_s))
                try:
                    await self._apply_acks(batch)
                except BaseException:
                    # Read both again, the later one rewound first: a partition in
                    # both restarts at this batch's offset.
                    later, ahead = ahead, None
                    await _rewind_ahead(self._kafka.acks, later)
                    self._client(self._kafka.acks).rewind(batch.messages)
                    raise

            async def next_housekeeping() -> None:
                await self.housekeeping()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout_s)

            try:
                async with asyncio.TaskGroup() as loops:
                    loops.create_task(self._loop(next_acks, "tracker_acks", stop))
                    loops.create_task(self._loop(next_housekeeping, "tracker_housekeeping", stop))
            finally:
                # A batch read ahead and not recorded is not committed: read again later.
                if ahead is not None:
                    await _rewind_ahead(self._kafka.acks, ahead)
        finally:
            await self.stop()

    async def _loop(
        self, step: Callable[[], Awaitable[None]], what: str, stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            try:
                # A failed ack batch was rewound and is read again. Every error is
                # retried; one that is no outage is logged as the bug it is.
                await retry(
                    step, policy=self.retry_policy, what=what, retry_on=any_error, stop=stop
                )
            except Stopped:
                return

    def _client(self, client: T) -> T:
        if not self._started:
            raise RuntimeError("Tracker.start() has not been called")
        return client


async def _rewind_ahead(reader: AckReader, ahead: asyncio.Task[_AckBatch | None]) -> None:
    """Rewind a read-ahead batch, or stop a read still waiting for records.

    A read is either still waiting inside the consumer (cancelled there, it has taken no
    record) or has returned and judged its batch in one go: never halfway."""
    if not ahead.done():
        ahead.cancel()
        await asyncio.gather(ahead, return_exceptions=True)
        return
    if not ahead.cancelled() and ahead.exception() is None and (later := ahead.result()):
        try:
            reader.rewind(later.messages)
        finally:
            later.collector.close()


def _registration(msg: ConsumedRecord) -> ServiceRegistration | registry.Retirement:
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
    if not _EARLIEST_MS <= msg.timestamp_ms < _LATEST_MS:
        raise PoisonRecord("tombstone timestamp out of range", msg.value)
    return registry.Retirement(service, _from_ms(msg.timestamp_ms))


def _from_ms(timestamp_ms: int) -> datetime:
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC)
