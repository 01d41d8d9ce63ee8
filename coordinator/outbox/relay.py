"""The outbox relay: publishes committed outbox batches as `RetentionEvent`s, at least once.

One relay leads at a time: each round is one database transaction that first takes a
transaction-scoped advisory lock (`pg_try_advisory_xact_lock`); a relay that does not get
it stays idle this round. The leader reads the batches past the watermark (the highest
`retention_outbox_marks.up_to`) in seq order, which is commit order
(coordinator/outbox/write.py), expands each into one record per entity, sends them all
without awaiting each, waits for the broker's acknowledgements, then inserts one mark
"published up to seq N" (N: the last batch of the longest fully acknowledged prefix) and
one audit entry per claim, and commits once per round. A round sends up to
`round_claims` claims that way, each read, encoded, signed and handed over while the
previous one's acknowledgements are awaited, and marked in order only while no claim
before it failed; while another writer holds the audit chain's lock, it sends and marks
a few more before committing.
No row of the outbox is locked or updated. If the relay dies anywhere before the
commit, the lock goes with its transaction, the mark was never written, and the next
leader sends the same batches again, with the same event ids (computed from the batch,
coordinator/outbox/events.py). Nothing is lost; a consumer may see a duplicate, which the
SDK's idempotency store absorbs. An idle relay waits for a writer's notification or
`idle_sleep_s`, whichever comes first (coordinator/outbox/wakeup.py).
docs/relay.md has the whole design.
"""

from __future__ import annotations

import asyncio
import functools
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka.errors import KafkaError
from sqlalchemy import Row, Select, bindparam, func, insert, or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator import CoordinatorError
from coordinator.clock import Clock, SystemClock
from coordinator.evidence import audit
from coordinator.heap import IdleTrim, keep_freed_memory
from coordinator.kafka import recordbatch
from coordinator.kafka.producer import (
    Delivery,
    EventProducer,
    ProducerFactory,
    RecordColumns,
)
from coordinator.kafka.producer import producer_factory as default_factory
from coordinator.metrics import Metrics
from coordinator.outbox.events import BATCH_COLUMNS, EXPANSION, BatchEncoder, event_from_row
from coordinator.outbox.lookup import published_up_to, unpublished_events
from coordinator.outbox.wakeup import Wakeup
from coordinator.settings import RelaySettings
from coordinator.store.db import connect_outside_pool
from coordinator.store.tables import outbox_batches, outbox_marks
from schemas import KafkaSettings, RetryPolicy, Stopped, is_transient, retry
from schemas.collector import fewer_collections
from schemas.errors import error_text
from schemas.signing import (
    BATCH_HEADER,
    HASHING,
    PROOF_HEADER,
    SIGNATURE_HEADER,
    ProofFormat,
    SignatureSettings,
)

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

_RELAY_LOCK = 0x72656C79
"""The advisory lock the leading relay holds for the length of each round."""

_UNSIGNED = ("event_id",)
_SIGNED = {
    ProofFormat.V1: ("event_id", SIGNATURE_HEADER, PROOF_HEADER),
    ProofFormat.V2: ("event_id", SIGNATURE_HEADER, BATCH_HEADER),
}
"""Each record's headers, in this order (SPEC §9, docs/protocol.md), by proof format: a
tree of one carries the signature alone; in v2 every other record `retention-batch`
alone."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one read-publish-mark transaction did (counted in events)."""

    claimed: int = 0
    published: int = 0
    send_failed: int = 0
    """Events the broker did not acknowledge in time, or refused: sent again next round."""
    unbuildable: int = 0
    """Events that do not make a valid RetentionEvent (a writer's bug): logged, recorded
    in the audit entry, and passed over by the watermark."""

    def __add__(self, other: BatchResult) -> BatchResult:
        """Two claims of one round, counted together."""
        return BatchResult(
            self.claimed + other.claimed,
            self.published + other.published,
            self.send_failed + other.send_failed,
            self.unbuildable + other.unbuildable,
        )


@dataclass(eq=False, slots=True)
class _Claim:
    """The batches of one round: its open transaction, their records and deliveries."""

    conn: AsyncConnection
    seqs: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    """Events of each batch, unbuildable ones included; alongside `seqs`."""
    rows: list[Row[Any]] = field(default_factory=list)
    """The batches read; `seqs` and `sizes` cover those encoded so far."""
    event_ids: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    """The policy of each batch, alongside `seqs`."""
    built: list[int] = field(default_factory=list)
    """Records built of each batch (its events but the unbuildable), alongside `seqs`."""
    batch_of: list[int] = field(default_factory=list)
    """Index into `seqs` of each record's batch."""
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    """The records, one per built event, in seq order, as columns (no object per record:
    `RecordColumns`); `event_ids` and `batch_of` alongside."""
    unbuildable: list[tuple[int, str]] = field(default_factory=list)
    deliveries: list[tuple[int, Delivery]] = field(default_factory=list)
    """Each delivery with the position in `keys` its indexes start from."""
    enqueue_error: BaseException | None = None
    deadline: float = 0.0

    @property
    def claimed(self) -> int:
        return sum(self.sizes)

    def release(self) -> None:
        """Drop the records once settled: the round's first claim lives (for its
        connection) until the commit, its records need not."""
        self.rows, self.keys, self.values, self.deliveries = [], [], [], []
        self.event_ids, self.batch_of, self.policies, self.built = [], [], [], []

    async def close(self) -> None:
        """End the round: closing rolls back whatever was not committed."""
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


def _failing(claim: _Claim) -> bool:
    """Whether part of `claim` already failed: then nothing after it can be marked this
    round, and sending the next claim would only add duplicates."""
    return claim.enqueue_error is not None or any(
        future.done() and (future.cancelled() or future.exception() is not None)
        for future in (delivery.future for _, delivery in claim.deliveries)
    )


def _abandon(claim: _Claim) -> None:
    """The round stops waiting for `claim`: its sends may still end later."""
    for _, delivery in claim.deliveries:
        delivery.future.add_done_callback(_consume_outcome)


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
        self._factory: ProducerFactory = producer_factory or default_factory(kafka, self._settings)
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
        self._claim_query = _claim_query(self._settings.batch_size)

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

        While another relay leads, this one waits for it. Events that cannot become a
        valid event are logged and passed over. Kafka failures are retried with backoff
        and the watchdog; database errors propagate.

        Raises:
            TimeoutError: `timeout_s` passed first; what was published stays published.
        """
        self._keep_freed_memory()
        async with asyncio.timeout(timeout_s):
            return await self._loop(asyncio.Event(), Wakeup(), until_empty=True)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Publish as rows arrive until `stop` is set; survives broker and database outages."""
        # Which key signs, and whether the C core hashes the signature trees or the
        # pure-Python fallback does (same bytes, more CPU: docs/relay.md).
        signer = self._signer
        log.info(
            "relay_started",
            topic=self._topic,
            signing_key_id=signer.key_id if signer is not None else None,
            signature_hashing=HASHING if signer is not None else None,
            proof_format=self._settings.proof_format.value if signer is not None else None,
            # Who writes the record batches: the C module or aiokafka (docs/relay.md).
            record_batches=recordbatch.BUILDER,
            # Who makes each batch's ids, keys and values: the C module or Python.
            record_expansion=EXPANSION,
            heap_kept=self._keep_freed_memory(),
        )
        # Notifications end the idle wait early; the wait stays the backstop.
        listen = functools.partial(connect_outside_pool, self._engine)
        wakeup = Wakeup(
            listen if self._settings.listen else None,
            backoff_initial_s=self._settings.backoff_initial_s,
            backoff_max_s=self._settings.backoff_max_s,
        )
        async with wakeup:
            await self._loop(stop, wakeup, until_empty=False)

    def _keep_freed_memory(self) -> bool:
        """Raise the C allocator's thresholds (coordinator/heap.py): the round's megabyte
        buffers then reuse the heap's pages instead of faulting fresh ones in each time."""
        settings = self._settings
        if not settings.malloc_mmap_threshold:
            return False
        return keep_freed_memory(settings.malloc_mmap_threshold, settings.malloc_trim_threshold)

    async def backlog(self) -> int:
        """Unpublished events (a range of the outbox's primary key); also sets the gauge."""
        async with self._engine.connect() as conn:
            count = await unpublished_events(conn)
        self._metrics.outbox_backlog.set(count)
        self._backlog_refreshed = time.monotonic()
        return count

    async def publish_batch(self) -> BatchResult:
        """One read-send-mark round, with the producer (re)started as needed; nothing
        while another relay leads."""
        producer = await self._healthy_producer()
        # Rounds collect cyclic garbage less often (`RelaySettings.gc_threshold`). The
        # claim lives only inside `_publish_claim`, so it is freed before the threshold
        # drops back: the collection the old threshold then starts at once finds the
        # round's records gone instead of walking all of them (~0.8 µs an event).
        with fewer_collections(self._settings.gc_threshold):
            return await self._publish_claim(producer)

    async def _publish_claim(self, producer: EventProducer) -> BatchResult:
        claim = await self._claim()
        if claim is None:
            return BatchResult()
        async with claim:
            return await self._publish(producer, claim)

    async def _publish(self, producer: EventProducer, claim: _Claim) -> BatchResult:
        """Send the round's claims, mark what the broker acknowledged, append the audit
        entries and commit.

        Claims are pipelined two deep: while one claim's acknowledgements are awaited,
        the next (the batches after it) is read, encoded, signed and handed to the same
        producer, so the relay keeps working instead of idling at the end of every claim;
        a round sends up to `round_claims` claims that way. Claims are settled strictly in
        order, each marked only when it and every claim before it were acknowledged
        whole: the first failure ends the round (what followed it is awaited, never
        marked, and sent again from the watermark by the next round).

        The audit chain's lock is the last thing the round takes (its holder keeps it to
        its commit, and every writer of evidence takes it): the marks are inserted and the
        entries serialized first, so holding it costs one read of the chain's head, one
        insert and the commit. When another writer holds it (the purge, the tracker) at
        the round's end, the round does not sit idle: it reads the batches after those it
        sent, sends and marks them too, and tries again (at most `busy_chain_claims`
        claims in all). Each claim gets its own mark and entry, in one transaction: commit
        or nothing, as with one claim.
        """
        conn, settings = claim.conn, self._settings
        result, policies = BatchResult(), Counter[str]()
        prepared: list[audit.Prepared] = []
        await self._send(producer, claim)
        current: _Claim | None = claim
        count = 1
        while current is not None:
            ahead = None
            try:
                # After the last batch encoded, not the last read: a hand-over that failed
                # part way left the claim's later batches unsent.
                if count < settings.round_claims and not _failing(current):
                    ahead = await self._claim_after(producer, conn, current.seqs[-1])
                    count += ahead is not None
                settled, entry, published = await self._settle(current)
                result += settled
                prepared += entry
                policies += published
                if settled.send_failed or current.enqueue_error is not None:
                    if ahead is not None:
                        # Never marked (the prefix ended before it), but awaited like every
                        # record handed over, so the round ends with nothing of it pending
                        # but what timed out.
                        await self._outcomes(ahead)
                    break
                if (
                    ahead is None
                    and count < settings.busy_chain_claims
                    and not await audit.try_lock_head(conn)
                ):
                    ahead = await self._claim_after(producer, conn, current.seqs[-1])
                    count += ahead is not None
                current.release()
                current = ahead
            except BaseException:
                # Leaving with claims in flight (a database error, cancellation): what
                # the broker answers later is nobody's to read.
                for pending in (current, ahead):
                    if pending is not None:
                        _abandon(pending)
                raise
        await audit.append_prepared(conn, prepared)
        await conn.commit()
        for policy, n in policies.items():
            self._metrics.events_published.labels(policy=policy).inc(n)
        return result

    async def _claim_after(
        self, producer: EventProducer, conn: AsyncConnection, after: int
    ) -> _Claim | None:
        """Read the batches after seq `after` in the round's transaction and send them;
        None if there are none."""
        rows = (await conn.execute(self._claim_query, {"watermark": after})).all()
        if not rows:
            return None
        ahead = _Claim(conn, rows=list(rows))
        await self._send(producer, ahead)
        return ahead

    async def _claim(self) -> _Claim | None:
        """Open the round's transaction, lead, and read the batches past the watermark.

        None: another relay leads, or there is nothing to publish.
        """
        conn = await self._engine.connect()
        try:
            await conn.begin()
            if not await conn.scalar(select(func.pg_try_advisory_xact_lock(_RELAY_LOCK))):
                await conn.close()
                return None
            watermark = await published_up_to(conn)
            rows = (await conn.execute(self._claim_query, {"watermark": watermark})).all()
            if not rows:
                await conn.close()
                return None
            return _Claim(conn, rows=list(rows))
        except BaseException:
            await conn.close()
            raise

    async def _send(self, producer: EventProducer, claim: _Claim) -> None:
        """Encode, sign and hand over the claim's events, a chunk at a time, without
        waiting for acknowledgements: the producer sends one chunk while the next is
        encoded. A chunk is whole signature trees of whole batches' events; a failed
        hand-over ends the round's sending (what was not handed over is sent next round).
        """
        try:
            await self._send_chunks(producer, claim)
        except BaseException:
            _abandon(claim)
            raise

    async def _send_chunks(self, producer: EventProducer, claim: _Claim) -> None:
        loop = asyncio.get_running_loop()
        claim.deadline = loop.time() + self._settings.publish_timeout_s
        tree = self._settings.signature_batch
        chunk = max(tree, self._settings.send_chunk // tree * tree)
        encode = BatchEncoder()
        sent = 0
        for row in claim.rows:
            self._encode(claim, encode, row)
            if len(claim.keys) - sent >= chunk:
                ready = (len(claim.keys) - sent) // tree * tree
                if not await self._hand_over(producer, claim, sent, sent + ready):
                    return
                sent += ready
        if sent < len(claim.keys):
            await self._hand_over(producer, claim, sent, len(claim.keys))

    def _encode(self, claim: _Claim, encode: BatchEncoder, row: Row[Any]) -> None:
        """Append the events of one batch row to the claim; log those it cannot build."""
        index = len(claim.seqs)
        claim.seqs.append(row.seq)
        batch = encode(row._mapping)
        claim.sizes.append(len(batch.event_ids))
        for position, error in batch.errors.items():
            event = batch.event_ids[position]
            claim.unbuildable.append((index, event))
            log.error("outbox_event_unpublishable", event_id=event, error=error_text(error))
        ids, keys, values = batch.event_ids, batch.keys, batch.values
        if batch.errors:
            kept = [n for n in range(len(ids)) if n not in batch.errors]
            ids, keys, values = (
                [ids[n] for n in kept],
                [keys[n] for n in kept],
                [values[n] for n in kept],
            )
        claim.event_ids += ids
        claim.keys += keys
        claim.values += values
        built = len(ids)
        claim.policies.append(row.policy)
        claim.built.append(built)
        claim.batch_of += [index] * built

    async def _hand_over(
        self, producer: EventProducer, claim: _Claim, start: int, end: int
    ) -> bool:
        """Sign records [start, end) and enqueue them; False if the producer failed."""
        keys, values = claim.keys[start:end], claim.values[start:end]
        # The event id as text: the C batches write its UTF-8, no bytes object per event.
        ids = claim.event_ids[start:end]
        if self._signer is None:
            chunk = RecordColumns(keys, values, _UNSIGNED, [ids])
        else:
            # One Ed25519 signature per `signature_batch` records (a Merkle root), a proof
            # in each: smaller trees keep the proof header short, larger ones sign less.
            tree, proof_format = self._settings.signature_batch, self._settings.proof_format
            signatures, proofs = (
                self._signer.sign_columns_v2(keys, values, tree)
                if proof_format is ProofFormat.V2
                else self._signer.sign_columns(keys, values, tree)
            )
            chunk = RecordColumns(keys, values, _SIGNED[proof_format], [ids, signatures, proofs])
        try:
            # Enqueueing awaits topic metadata, which can hang (aiokafka#759).
            async with asyncio.timeout_at(claim.deadline):
                async for delivery in producer.send_all(self._topic, chunk):
                    claim.deliveries.append((start, delivery))
        except (KafkaError, TimeoutError) as exc:
            claim.enqueue_error = exc
            return False
        return True

    async def _settle(
        self, claim: _Claim
    ) -> tuple[BatchResult, list[audit.Prepared], Counter[str]]:
        """Wait (bounded) for the acknowledgements and mark the acknowledged prefix; the
        audit entry recording it comes back serialized, for the caller to append.

        The watermark moves past a batch only when every one of its events, and of the
        batches before it, was acknowledged; the rest are sent again next round.
        """
        failures = await self._outcomes(claim)
        if failures:
            log.warning(
                "publish_failed",
                events=len(failures),
                topic=self._topic,
                error=error_text(failures[0][1]),
            )
        # batches [0, done) are out
        done = min((claim.batch_of[i] for i, _ in failures), default=len(claim.seqs))
        # Records are in batch order: those of batches [0, done) are a prefix.
        published = bisect_left(claim.batch_of, done)
        skipped = [event for b, event in claim.unbuildable if b < done]
        policies: Counter[str] = Counter()
        for policy, built in zip(claim.policies[:done], claim.built[:done], strict=True):
            if built:  # a policy none of whose events could be built is not "published"
                policies[policy] += built
        entry = []
        if done:
            entry = await self._mark_published(
                claim,
                up_to=claim.seqs[done - 1],
                events=sum(claim.sizes[:done]),
                ids=claim.event_ids[:published],
                skipped=skipped,
                policies=policies,
            )
        result = BatchResult(claim.claimed, published, len(failures), len(skipped))
        return result, entry, policies

    async def _outcomes(self, claim: _Claim) -> list[tuple[int, BaseException]]:
        """The records the broker did not acknowledge, in order, with why (usually none:
        then nothing is done per record)."""
        loop = asyncio.get_running_loop()
        futures = [delivery.future for _, delivery in claim.deliveries]
        if futures:
            _, pending = await asyncio.wait(futures, timeout=max(0.0, claim.deadline - loop.time()))
            for future in pending:
                future.add_done_callback(_consume_outcome)
        timed_out = TimeoutError(f"no acknowledgement within {self._settings.publish_timeout_s}s")
        failed: list[tuple[int, Delivery, BaseException]] = []
        for start, delivery in claim.deliveries:
            future = delivery.future
            if not future.done():
                failed.append((start, delivery, timed_out))
            elif future.cancelled():
                failed.append((start, delivery, asyncio.CancelledError("send cancelled")))
            elif (error := future.exception()) is not None:
                failed.append((start, delivery, error))
        carried = sum(len(delivery.indexes) for _, delivery in claim.deliveries)
        if not failed and carried == len(claim.keys):
            return []
        # Records no delivery carries were never enqueued.
        outcomes: list[BaseException | None] = [claim.enqueue_error or timed_out] * len(claim.keys)
        for start, delivery in claim.deliveries:
            for index in delivery.indexes:
                outcomes[start + index] = None
        for start, delivery, error in failed:
            for index in delivery.indexes:
                outcomes[start + index] = error
        return [(i, error) for i, error in enumerate(outcomes) if error is not None]

    async def _mark_published(
        self,
        claim: _Claim,
        *,
        up_to: int,
        events: int,
        ids: list[str],
        skipped: list[str],
        policies: Counter[str],
    ) -> list[audit.Prepared]:
        """Insert the mark; return its audit entry serialized, not yet appended."""
        now = self._clock.now()
        entry = audit.AuditEntry(
            AUDIT_ACTION,
            self._actor,
            {
                "topic": self._topic,
                "up_to": up_to,
                "count": len(ids),
                "policies": dict(sorted(policies.items())),
                "event_ids": ids,
                **({"unpublishable": skipped} if skipped else {}),
            },
        )
        # Only str keys, str, int, lists and dicts: stored as built, serialized once
        # (the JSON round trip of ~10,000 ids was ~8% of the relay's CPU).
        prepared = audit.prepare([entry], at=now, json_native=True)
        await claim.conn.execute(
            insert(outbox_marks).values(up_to=up_to, published_at=now, events=events)
        )
        return prepared

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

    async def _loop(self, stop: asyncio.Event, wakeup: Wakeup, *, until_empty: bool) -> int:
        retry_on = draining_outage if until_empty else serving_outage
        state = _LoopState()
        # The heap the rounds kept goes back once they stop (coordinator/heap.py).
        trim = IdleTrim(enabled=bool(self._settings.malloc_mmap_threshold))
        while not stop.is_set():
            wakeup.clear()
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
            # Nothing to publish, or another relay leads.
            self._watchdog.progress()
            if until_empty and await self.backlog() == 0:
                break
            trim.idle(state.total)
            await wakeup.wait(stop, self._settings.idle_sleep_s)
        trim.end(state.total)
        if until_empty:
            await self.backlog()
        return state.total

    async def _step(self, state: _LoopState) -> bool:
        """One round; True while there is more to do at once, False when idle.

        Raises:
            PublishFailed: the broker took none of the round; the retry waits first.
        """
        result = await self.publish_batch()
        if time.monotonic() - self._backlog_refreshed > 1.0:
            await self.backlog()
        state.total += result.published
        if result.send_failed:
            # Partial progress does not feed the watchdog: a producer that keeps
            # failing some partitions must be replaced too.
            if not result.published:
                raise PublishFailed(f"{result.send_failed} records not acknowledged")
            return True
        if result.claimed:
            self._watchdog.progress()
        return bool(result.claimed)


def _claim_query(batch_size: int) -> Select[Any]:
    """The batches after the watermark holding at most `batch_size` events (at least one
    batch, however large), in seq order."""
    b = outbox_batches.c
    window = (
        select(b.seq, func.sum(b.events).over(order_by=b.seq).label("total"))
        .where(b.seq > bindparam("watermark"))
        .order_by(b.seq)
        .limit(batch_size)
        .subquery("window")
    )
    first = select(func.min(window.c.seq)).scalar_subquery()
    chosen = select(window.c.seq).where(or_(window.c.total <= batch_size, window.c.seq == first))
    return select(*(b[name] for name in BATCH_COLUMNS)).where(b.seq.in_(chosen)).order_by(b.seq)
