"""The relay's claim pipeline: the next claim is sent while the previous one is awaited,
and still the watermark moves only over an acknowledged prefix, in order."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.evidence import audit
from coordinator.kafka.producer import Delivery, OutgoingRecord
from coordinator.outbox.lookup import event_counts, published_up_to
from coordinator.outbox.relay import AUDIT_ACTION, OutboxRelay, PublishFailed
from coordinator.settings import RelaySettings
from coordinator.store.tables import audit_log, outbox_batches
from schemas import KafkaSettings, RetentionEvent, decode
from tests.outbox import QuietProducer, insert_rows, outbox_rows, read_records

_POLICIES = ("session_logs", "purchase_records", "audit_trail")


class _LateVerdicts(QuietProducer):
    """Answers each hand-over only when the next one begins (or after a second, for the
    last): every claim is still unacknowledged while the relay sends the one after it.
    Records whose key is in `refused` fail. `late=False`: each record is answered as it
    is handed over."""

    def __init__(self, refused: set[bytes], *, late: bool = True) -> None:
        self._refused = refused
        self._late = late
        self._open: list[tuple[asyncio.Future[object], bool]] = []
        self.pending_at_call: list[int] = []
        """Per hand-over: how many earlier records were still unanswered when it began."""
        self.calls = 0

    def _answer(self, answered: list[tuple[asyncio.Future[object], bool]]) -> None:
        for future, refuse in answered:
            if future.done():
                continue
            if refuse:
                future.set_exception(PublishFailed("refused"))
            else:
                future.set_result(None)

    async def send_all(
        self, topic: str, records: Sequence[OutgoingRecord]
    ) -> AsyncIterator[Delivery]:
        loop = asyncio.get_running_loop()
        self.calls += 1
        earlier, self._open = self._open, []
        self.pending_at_call.append(sum(not future.done() for future, _ in earlier))
        self._answer(earlier)
        for index, record in enumerate(records):
            future: asyncio.Future[object] = loop.create_future()
            self._open.append((future, record.key in self._refused))
            if not self._late:
                self._answer(self._open[-1:])
            yield Delivery([index], future)
        loop.call_later(1.0, self._answer, list(self._open))


@pytest.mark.parametrize("failing", [0, 1])
async def test_a_failed_claim_with_the_next_in_flight_stops_the_watermark_before_it(
    engine: AsyncEngine, topics: KafkaSettings, failing: int
) -> None:
    batches = [outbox_rows(40, policy=p, start=100 * n) for n, p in enumerate(_POLICIES)]
    await insert_rows(engine, [row for batch in batches for row in batch])
    refused = {f"user:{batches[failing][7]['entity_id']}".encode()}
    # One batch a claim, one hand-over a claim, three claims a round.
    settings = RelaySettings(batch_size=40, send_chunk=128, round_claims=3, idle_sleep_s=0.05)
    producer = _LateVerdicts(refused)
    async with OutboxRelay(
        engine, topics, settings=settings, producer_factory=lambda: producer
    ) as relay:
        result = await relay.publish_batch()
    # The claim after the failing one was handed over while the failing one was unanswered ...
    assert producer.calls == failing + 2
    assert producer.pending_at_call[failing + 1] == 40
    # ... yet only the claims before the failing one are marked, each with its entry.
    assert (result.published, result.send_failed) == (40 * failing, 1)
    async with engine.connect() as conn:
        seqs = list((await conn.execute(select(outbox_batches.c.seq).order_by("seq"))).scalars())
        assert await published_up_to(conn) == (seqs[failing - 1] if failing else 0)
        assert await event_counts(conn) == (120, 40 * failing)
        entries = list(
            (
                await conn.execute(
                    select(audit_log.c.data).where(audit_log.c.action == AUDIT_ACTION.value)
                )
            ).scalars()
        )
        assert [e["event_ids"] for e in entries] == [
            [str(row["event_id"]) for row in batch] for batch in batches[:failing]
        ]

    # The next round sends the failing claim and everything after it, same event ids.
    async with OutboxRelay(engine, topics, settings=settings) as relay:
        assert await relay.drain(timeout_s=60) == 120 - 40 * failing
    left = [row["event_id"] for batch in batches[failing:] for row in batch]
    records = await read_records(topics, topics.topics.events, expected=len(left))
    assert sorted(decode(RetentionEvent, r.value).event_id for r in records) == sorted(left)
    async with engine.connect() as conn:
        assert await event_counts(conn) == (120, 120)
        assert (await audit.verify(conn))[1] is None


async def test_a_claim_already_failing_is_not_followed_by_the_next(
    engine: AsyncEngine, topics: KafkaSettings
) -> None:
    batches = [outbox_rows(40, policy=p, start=100 * n) for n, p in enumerate(_POLICIES)]
    await insert_rows(engine, [row for batch in batches for row in batch])
    refused = {f"user:{batches[0][7]['entity_id']}".encode()}
    settings = RelaySettings(batch_size=40, send_chunk=128, round_claims=3)
    producer = _LateVerdicts(refused, late=False)
    async with OutboxRelay(
        engine, topics, settings=settings, producer_factory=lambda: producer
    ) as relay:
        result = await relay.publish_batch()
    # Nothing after the failure could be marked this round: sending it would only
    # duplicate what the next round sends again.
    assert producer.calls == 1
    assert (result.claimed, result.published, result.send_failed) == (40, 0, 1)


class _Silent(QuietProducer):
    """Takes every record and never answers: the test answers them."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[object]] = []

    async def send_all(
        self, topic: str, records: Sequence[OutgoingRecord]
    ) -> AsyncIterator[Delivery]:
        loop = asyncio.get_running_loop()
        for index in range(len(records)):
            self.futures.append(loop.create_future())
            yield Delivery([index], self.futures[-1])


async def test_a_round_cancelled_with_two_claims_in_flight_marks_nothing_and_reads_late_answers(
    engine: AsyncEngine, topics: KafkaSettings
) -> None:
    batches = [outbox_rows(40, policy=p, start=100 * n) for n, p in enumerate(_POLICIES)]
    await insert_rows(engine, [row for batch in batches for row in batch])
    settings = RelaySettings(batch_size=40, send_chunk=128, round_claims=3)
    producer = _Silent()
    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        async with OutboxRelay(
            engine, topics, settings=settings, producer_factory=lambda: producer
        ) as relay:
            round_ = asyncio.create_task(relay.publish_batch())
            async with asyncio.timeout(10):
                while len(producer.futures) < 80:  # the second claim is handed over
                    await asyncio.sleep(0.01)
            round_.cancel()
            with pytest.raises(asyncio.CancelledError):
                await round_
        async with engine.connect() as conn:
            assert await event_counts(conn) == (120, 0)
        # The broker answers after the round is gone: every answer is read, none is
        # reported as an exception nobody retrieved.
        for future in producer.futures:
            future.set_exception(PublishFailed("too late"))
        await asyncio.sleep(0.05)
        producer.futures.clear()
        gc.collect()
        assert unretrieved == []
    finally:
        loop.set_exception_handler(None)


async def test_pipelined_claims_keep_each_entitys_events_in_outbox_order(
    engine: AsyncEngine, topics: KafkaSettings
) -> None:
    # Six purge transactions, each with an event for the same 1,500 entities; one batch a
    # claim, all six claims in one round, each sent while the one before it is awaited,
    # in small producer batches: many batches per partition queued across claims.
    generation: dict[uuid.UUID, int] = {}
    for g in range(6):
        rows = outbox_rows(1500, policy=f"p{g}")
        await insert_rows(engine, rows)
        generation.update({row["event_id"]: g for row in rows})
    settings = RelaySettings(
        batch_size=1500, round_claims=6, send_chunk=256, max_batch_size=16 * 1024
    )
    async with OutboxRelay(engine, topics, settings=settings) as relay:
        result = await relay.publish_batch()
    assert (result.claimed, result.published, result.send_failed) == (9000, 9000, 0)
    records = await read_records(topics, topics.topics.events, expected=9000)
    per_key: dict[bytes, list[int]] = {}
    for record in records:  # per partition in offset order; a key lives on one partition
        event = decode(RetentionEvent, record.value)
        per_key.setdefault(record.key, []).append(generation[event.event_id])
    assert len(per_key) == 1500
    assert all(seq == list(range(6)) for seq in per_key.values())
