"""The outbox relay: publishes committed outbox rows as `RetentionEvent`s, at least once.

One batch is one database transaction: claim the oldest unpublished rows with
`FOR UPDATE SKIP LOCKED`, send them all to Kafka without awaiting each, wait for the
broker's acknowledgements, then mark the acknowledged rows published, with one audit
entry, in one statement each. The row locks are held across the send on purpose: if
the relay dies anywhere before the commit, the transaction rolls back, the rows are
unlocked and unpublished, and the next claim sends them again with the same
`event_id`. Nothing is lost; a consumer may see a duplicate, which the SDK's
idempotency store absorbs. Several relays can run at once: SKIP LOCKED gives each its
own rows. docs/relay.md has the whole design.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

import structlog
from aiokafka.errors import KafkaError
from sqlalchemy import ARRAY, Uuid, any_, bindparam, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator import CoordinatorError, audit
from coordinator.clock import Clock, SystemClock
from coordinator.kafka.producer import (
    Delivery,
    EventProducer,
    KafkaEventProducer,
    OutgoingRecord,
    ProducerFactory,
)
from coordinator.metrics import Metrics
from coordinator.outbox.events import EVENT_COLUMNS, RecordEncoder, event_from_row
from coordinator.settings import RelaySettings
from coordinator.store.tables import outbox
from schemas import KafkaSettings, RetryPolicy, Stopped, is_transient, retry
from schemas.errors import error_text
from schemas.signing import SignatureSettings

__all__ = [
    "AUDIT_ACTION",
    "BatchResult",
    "OutboxRelay",
    "PublishFailed",
    "Watchdog",
    "draining_outage",
    "event_from_row",
    "serving_outage",
]

AUDIT_ACTION = audit.AuditAction.EVENTS_PUBLISHED

log = structlog.get_logger(__name__)

_IDS = bindparam("ids", type_=ARRAY(Uuid))
_POLICY = EVENT_COLUMNS.index("policy")


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one claim-publish-mark transaction did."""

    claimed: int = 0
    published: int = 0
    send_failed: int = 0
    """Rows the broker did not acknowledge in time, or refused: they stay unpublished."""
    unbuildable: int = 0
    """Rows that do not make a valid RetentionEvent (a writer's bug): left unpublished."""


@dataclass(eq=False, slots=True)
class _Claim:
    """A claimed batch: its open transaction, its encoded records, and their deliveries."""

    conn: AsyncConnection
    claimed: int
    event_ids: list[uuid.UUID] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    records: list[OutgoingRecord] = field(default_factory=list)
    """One per built event, in claim order; `event_ids` and `policies` run alongside."""
    unbuildable: list[uuid.UUID] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    enqueue_error: BaseException | None = None
    deadline: float = 0.0

    async def close(self) -> None:
        """Release the rows: closing rolls back whatever was not committed."""
        await self.conn.close()

    async def __aenter__(self) -> _Claim:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class Watchdog:
    """Notices when the relay has rows to publish but has made no progress for a while.

    aiokafka has open bugs where a producer never recovers after a broker outage
    (aio-libs/aiokafka#1101: `send` and `stop` hang forever; #1017: an idempotent
    producer stuck on OutOfOrderSequenceNumber until restarted; #551: empty metadata
    after a broker restart). Every Kafka await in the relay is bounded, so the loop
    always regains control; this class decides when to replace the producer.
    """

    def __init__(self, stall_after_s: float, *, monotonic: Callable[[], float] = time.monotonic):
        self._stall_after_s = stall_after_s
        self._monotonic = monotonic
        self._last_progress = monotonic()

    def progress(self) -> None:
        """A batch went through completely, or there was nothing to do."""
        self._last_progress = self._monotonic()

    def stalled(self) -> bool:
        return self._monotonic() - self._last_progress > self._stall_after_s


def _consume_outcome(future: asyncio.Future[object]) -> None:
    # A send we stopped waiting for may still fail later; retrieve its exception so
    # asyncio does not report it as never retrieved. The row is already marked for retry.
    if not future.cancelled():
        future.exception()


def draining_outage(exc: BaseException) -> bool:
    """What `drain` (inside `retention run`) waits out: Kafka trouble and unreachable
    servers. Not `is_transient`: a database error, a disconnect included, is reported to
    the run (its purge is committed; `serve` publishes the rest), and every Kafka error
    is waited out, even one aiokafka does not mark retriable, because one that reaches
    this loop is about the broker: a record the broker refuses only counts an attempt."""
    return isinstance(exc, KafkaError | OSError | TimeoutError)


def serving_outage(exc: BaseException) -> bool:
    """What `run_forever` (inside `retention serve`) waits out: every `is_transient`
    outage, and beyond it every Kafka error (see `draining_outage`) and every database
    error. A database that refuses connections (ALLOW_CONNECTIONS false, too many
    clients) is no disconnect, but an outage all the same."""
    return draining_outage(exc) or is_transient(exc) or isinstance(exc, DBAPIError)


class PublishFailed(CoordinatorError, KafkaError):  # type: ignore[misc]  # aiokafka: untyped
    """The broker acknowledged none of a batch's records: wait, then send them again."""

    retriable = True


@dataclass(eq=False, slots=True)
class _LoopState:
    total: int = 0
    inflight: _Claim | None = None
    result: BatchResult | None = None


class OutboxRelay:
    """Publishes the outbox to the events topic; use as `async with OutboxRelay(...) as r`."""

    def __init__(
        self,
        engine: AsyncEngine,
        kafka: KafkaSettings,
        *,
        settings: RelaySettings | None = None,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
        producer_factory: ProducerFactory | None = None,
        actor: str = "relay",
        signatures: SignatureSettings | None = None,
    ) -> None:
        self._engine = engine
        # Every record is signed as sent; a missing key under `required` fails here.
        self._signer = (signatures or SignatureSettings()).coordinator_signer()
        self._topic = kafka.topics.events
        self._settings = settings if settings is not None else RelaySettings()
        self._metrics = metrics if metrics is not None else Metrics()
        self._clock = clock if clock is not None else SystemClock()
        relay_settings = self._settings
        self._factory: ProducerFactory = producer_factory or (
            lambda: KafkaEventProducer(kafka, relay_settings)
        )
        self._actor = actor
        self._producer: EventProducer | None = None
        self._watchdog = Watchdog(self._settings.stall_timeout_s)
        self.retry_policy = RetryPolicy(
            initial_s=self._settings.backoff_initial_s,
            max_s=self._settings.backoff_max_s,
            jitter_s=self._settings.backoff_initial_s,
        )
        """After a failed batch; what is retried depends on the mode (see `_loop`)."""
        self._backlog_refreshed = float("-inf")
        self._claim_query = (
            select(*(outbox.c[name] for name in EVENT_COLUMNS))
            .where(outbox.c.published_at.is_(None))
            .order_by(outbox.c.created_at)
            .limit(self._settings.batch_size)
            .with_for_update(skip_locked=True)
        )

    async def __aenter__(self) -> OutboxRelay:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the producer (bounded: a hung aiokafka producer is abandoned)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop(producer)

    async def drain(self, *, timeout_s: float | None = None) -> int:
        """Publish until nothing is left unpublished; return how many this relay published.

        Rows another relay has claimed are waited for (it may roll back). Rows that cannot
        become a valid event are logged and left behind. Kafka failures are retried with
        backoff and the watchdog; database errors propagate.

        Raises:
            TimeoutError: `timeout_s` passed first; what was published stays published.
        """
        async with asyncio.timeout(timeout_s):
            return await self._loop(asyncio.Event(), until_empty=True)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Publish as rows arrive until `stop` is set; survives broker and database outages."""
        await self._loop(stop, until_empty=False)

    async def backlog(self) -> int:
        """Unpublished rows (claimed ones included); also sets the backlog gauge."""
        async with self._engine.connect() as conn:
            count = (
                await conn.execute(
                    select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
                )
            ).scalar_one()
        self._metrics.outbox_backlog.set(count)
        self._backlog_refreshed = time.monotonic()
        return int(count)

    async def publish_batch(self) -> BatchResult:
        """One claim-send-mark transaction, with the producer (re)started as needed."""
        producer = await self._healthy_producer()
        claim = await self._claim()
        if claim is None:
            return BatchResult()
        async with claim:
            await self._enqueue(producer, claim)
            return await self._finish(claim)

    async def _claim(self) -> _Claim | None:
        """Open a transaction, lock the oldest unpublished rows, and encode their events."""
        conn = await self._engine.connect()
        try:
            await conn.begin()
            rows = (await conn.execute(self._claim_query)).all()
            if not rows:
                await conn.close()
                return None
            claim = _Claim(conn, claimed=len(rows))
            encode = RecordEncoder()
            for row in rows:
                event_id = row[0]  # EVENT_COLUMNS starts with it
                try:
                    key, value = encode(row)
                except ValueError as exc:  # pydantic's ValidationError included
                    claim.unbuildable.append(event_id)
                    log.error(
                        "outbox_row_unpublishable", event_id=str(event_id), error=error_text(exc)
                    )
                    continue
                claim.event_ids.append(event_id)
                claim.policies.append(row[_POLICY])
                claim.records.append(
                    OutgoingRecord(key, value, [("event_id", str(event_id).encode())])
                )
            if self._signer is not None:
                self._sign(claim)
            return claim
        except BaseException:
            await conn.close()
            raise

    def _sign(self, claim: _Claim) -> None:
        """One Ed25519 signature per `signature_batch` records (a Merkle root), a proof in
        each: smaller trees keep the proof header short, larger ones sign less often."""
        assert self._signer is not None
        self._signer.sign_in_place(claim.records, self._settings.signature_batch)

    async def _enqueue(self, producer: EventProducer, claim: _Claim) -> None:
        """Hand every record to the producer without waiting for acknowledgements."""
        loop = asyncio.get_running_loop()
        claim.deadline = loop.time() + self._settings.publish_timeout_s
        try:
            # Enqueueing awaits topic metadata, which can hang (aiokafka#759).
            async with asyncio.timeout_at(claim.deadline):
                async for delivery in producer.send_all(self._topic, claim.records):
                    claim.deliveries.append(delivery)
        except (KafkaError, TimeoutError) as exc:
            claim.enqueue_error = exc

    async def _finish(self, claim: _Claim) -> BatchResult:
        """Wait (bounded) for the acknowledgements, mark what was acknowledged, commit."""
        outcomes = await self._outcomes(claim)
        published = [i for i, error in enumerate(outcomes) if error is None]
        failed = [claim.event_ids[i] for i, error in enumerate(outcomes) if error is not None]
        if failed:
            first = next(error for error in outcomes if error is not None)
            log.warning(
                "publish_failed", rows=len(failed), topic=self._topic, error=error_text(first)
            )
        policies = Counter(claim.policies[i] for i in published)
        if published:
            await self._mark_published(
                claim.conn, [claim.event_ids[i] for i in published], policies
            )
        if failed or claim.unbuildable:
            await claim.conn.execute(
                update(outbox)
                .where(outbox.c.event_id == any_(_IDS))
                .values(publish_attempts=outbox.c.publish_attempts + 1),
                {"ids": failed + claim.unbuildable},
            )
        await claim.conn.commit()
        for policy, count in policies.items():
            self._metrics.events_published.labels(policy=policy).inc(count)
        return BatchResult(claim.claimed, len(published), len(failed), len(claim.unbuildable))

    async def _outcomes(self, claim: _Claim) -> list[BaseException | None]:
        """One outcome per record: None when the broker acknowledged it."""
        loop = asyncio.get_running_loop()
        futures = [delivery.future for delivery in claim.deliveries]
        if futures:
            _, pending = await asyncio.wait(futures, timeout=max(0.0, claim.deadline - loop.time()))
            for future in pending:
                future.add_done_callback(_consume_outcome)
        timed_out = TimeoutError(f"no acknowledgement within {self._settings.publish_timeout_s}s")
        # Records no delivery carries were never enqueued.
        outcomes: list[BaseException | None] = [claim.enqueue_error or timed_out] * len(
            claim.records
        )
        for delivery in claim.deliveries:
            future = delivery.future
            outcome: BaseException | None
            if not future.done():
                outcome = timed_out
            elif future.cancelled():
                outcome = asyncio.CancelledError("send cancelled")
            else:
                outcome = future.exception()
            for index in delivery.indexes:
                outcomes[index] = outcome
        return outcomes

    async def _mark_published(
        self, conn: AsyncConnection, ids: list[uuid.UUID], policies: Counter[str]
    ) -> None:
        now = self._clock.now()
        await conn.execute(
            update(outbox)
            .where(outbox.c.event_id == any_(_IDS))
            .values(published_at=now, publish_attempts=outbox.c.publish_attempts + 1),
            {"ids": ids},
        )
        entry = audit.AuditEntry(
            AUDIT_ACTION,
            self._actor,
            {
                "topic": self._topic,
                "count": len(ids),
                "policies": dict(sorted(policies.items())),
                "event_ids": [str(i) for i in ids],
            },
        )
        await audit.append(conn, [entry], at=now)

    async def _round(self, inflight: _Claim | None) -> tuple[BatchResult | None, _Claim | None]:
        """Finish `inflight` and send the next batch; return its result and the new in-flight.

        The next batch is claimed and encoded while the broker acknowledges `inflight`
        (SKIP LOCKED keeps the two apart), but sent only after `inflight` committed, so
        one relay never lets a newer event for a key overtake an older one. After a
        failed send the claimed batch is released unsent: the failed rows are older and
        must go first.
        """
        claim = None
        try:
            claim = await self._claim()
            result = None
            if inflight is not None:
                async with inflight:
                    result = await self._finish(inflight)
                if result.send_failed and claim is not None:
                    await claim.close()
                    claim = None
            if claim is not None:
                await self._enqueue(await self._healthy_producer(), claim)
            return result, claim
        except BaseException:
            for batch in (claim, inflight):
                if batch is not None:
                    await batch.close()
            raise

    async def _healthy_producer(self) -> EventProducer:
        if self._producer is not None and not self._watchdog.stalled():
            return self._producer
        if self._producer is not None:
            log.warning(
                "relay_stalled_recreating_producer", stall_timeout_s=self._settings.stall_timeout_s
            )
            self._metrics.relay_producer_restarts.inc()
            await self.close()
        producer = self._factory()
        try:
            async with asyncio.timeout(self._settings.publish_timeout_s):
                await producer.start()
        except BaseException:
            await self._stop(producer)
            raise
        self._producer = producer
        # A new producer gets a full window before the watchdog judges it.
        self._watchdog.progress()
        return producer

    async def _stop(self, producer: EventProducer) -> None:
        try:
            async with asyncio.timeout(self._settings.producer_stop_timeout_s):
                await producer.stop()
        except TimeoutError:
            # aiokafka#1101: stop() can hang when the broker is gone; drop the producer.
            log.warning("producer_stop_timed_out_abandoned")
        except KafkaError as exc:
            log.warning("producer_stop_failed", error=error_text(exc))

    async def _loop(self, stop: asyncio.Event, *, until_empty: bool) -> int:
        retry_on = draining_outage if until_empty else serving_outage
        state = _LoopState()
        try:
            while not stop.is_set():
                try:
                    busy = await retry(
                        lambda: self._step(state),
                        policy=self.retry_policy,
                        what="relay_batch",
                        retry_on=retry_on,
                        stop=stop,
                    )
                except Stopped:
                    break
                if busy:
                    continue
                # Nothing in flight and nothing claimable (or only unpublishable rows).
                self._watchdog.progress()
                if until_empty and (state.result is not None or await self.backlog() == 0):
                    break
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._settings.idle_sleep_s)
        except BaseException:
            if state.inflight is not None:
                await state.inflight.close()
            raise
        if state.inflight is not None:
            # Stopped with a batch in flight: finish it rather than send it again later.
            async with state.inflight:
                state.total += (await self._finish(state.inflight)).published
        if until_empty:
            await self.backlog()
        return state.total

    async def _step(self, state: _LoopState) -> bool:
        """One round; True while there is more to do at once, False when idle.

        Raises:
            PublishFailed: the broker took none of the batch; the retry waits first.
        """
        try:
            state.result, state.inflight = await self._round(state.inflight)
            if time.monotonic() - self._backlog_refreshed > 1.0:
                await self.backlog()
        except BaseException:
            if state.inflight is not None:
                await state.inflight.close()
                state.inflight = None
            raise
        result = state.result
        if result is None:
            return state.inflight is not None
        state.total += result.published
        if result.send_failed:
            # Partial progress does not feed the watchdog: a producer that keeps
            # failing some partitions must be replaced too.
            if not result.published:
                raise PublishFailed(f"{result.send_failed} records not acknowledged")
            return True
        self._watchdog.progress()
        return bool(result.published or state.inflight is not None)
