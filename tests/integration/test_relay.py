"""The outbox relay on the real broker and database: content, concurrency, crashes."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.evidence import audit
from coordinator.kafka.producer import Delivery, EventProducer, KafkaEventProducer, OutgoingRecord
from coordinator.metrics import Metrics
from coordinator.outbox import relay as relay_module
from coordinator.outbox.lookup import event_counts, unpublished_events
from coordinator.outbox.relay import AUDIT_ACTION, OutboxRelay, PublishFailed
from coordinator.settings import RelaySettings
from coordinator.store.tables import audit_log
from schemas import KafkaSettings, RetentionEvent, decode
from tests.infra import ROOT
from tests.outbox import QuietProducer, clear_outbox, insert_rows, outbox_rows, read_records

# The console script of the venv running the tests.
RETENTION = str(Path(sys.executable).with_name("retention"))
FAST = RelaySettings(batch_size=100, idle_sleep_s=0.05, backoff_initial_s=0.05)


async def published_state(engine: AsyncEngine) -> tuple[int, int]:
    """(events, events published)."""
    async with engine.connect() as conn:
        return await event_counts(conn)


async def test_rows_become_records_with_keys_headers_and_audit(
    engine: AsyncEngine, topics: KafkaSettings
) -> None:
    rows = outbox_rows(150, policy="session_logs") + outbox_rows(
        70, policy="purchase_records", entity_type="order", event_type="anonymize", start=500
    )
    await insert_rows(engine, rows)
    metrics = Metrics()
    async with OutboxRelay(engine, topics, settings=FAST, metrics=metrics) as relay:
        assert await relay.drain(timeout_s=60) == len(rows)

    records = await read_records(topics, topics.topics.events, expected=len(rows))
    by_id = {row["event_id"]: row for row in rows}
    assert len(records) == len(rows)
    for record in records:
        event = decode(RetentionEvent, record.value)
        row = by_id[event.event_id]
        assert record.key == f"{row['entity_type']}:{row['entity_id']}".encode()
        assert dict(record.headers)["event_id"] == str(event.event_id).encode()
        assert (event.type, event.policy, event.entity_id, event.fields, event.run_id) == (
            row["event_type"],
            row["policy"],
            row["entity_id"],
            row["fields"],
            row["run_id"],
        )
        assert (event.initiated_at, event.deadline) == (row["initiated_at"], row["deadline"])
    assert {decode(RetentionEvent, r.value).event_id for r in records} == set(by_id)

    assert await published_state(engine) == (len(rows), len(rows))
    async with engine.connect() as conn:
        assert (await audit.verify(conn))[1] is None
        entries = (
            await conn.execute(select(audit_log.c.data).where(audit_log.c.action == AUDIT_ACTION))
        ).scalars()
        entries = list(entries)
    # One audit entry per round. A round takes whole outbox batches, at least one, up to
    # 100 events: the 150 (one purge batch) alone, then the 70; each names every event
    # once, with policy counts and the watermark it set.
    assert [e["up_to"] for e in entries] == [1, 2]
    audited = [i for e in entries for i in e["event_ids"]]
    assert sorted(audited) == sorted(str(i) for i in by_id)
    policy_totals: Counter[str] = Counter()
    for e in entries:
        policy_totals.update(e["policies"])
    assert policy_totals == {"session_logs": 150, "purchase_records": 70}

    published = metrics.events_published
    assert published.labels(policy="session_logs")._value.get() == 150
    assert published.labels(policy="purchase_records")._value.get() == 70
    assert metrics.outbox_backlog._value.get() == 0


async def test_two_relays_take_turns_leading_without_double_publishing(
    engine: AsyncEngine, topics: KafkaSettings
) -> None:
    rows = outbox_rows(1000)
    await insert_rows(engine, rows)
    settings = RelaySettings(batch_size=50, idle_sleep_s=0.05)
    async with (
        OutboxRelay(engine, topics, settings=settings, actor="relay-a") as a,
        OutboxRelay(engine, topics, settings=settings, actor="relay-b") as b,
    ):
        counts = await asyncio.gather(a.drain(timeout_s=90), b.drain(timeout_s=90))
    # One leads at a time (an advisory lock per round): between them, each event once.
    assert sum(counts) == len(rows)

    records = await read_records(topics, topics.topics.events, expected=len(rows))
    per_event = Counter(decode(RetentionEvent, r.value).event_id for r in records)
    assert set(per_event) == {row["event_id"] for row in rows}
    assert set(per_event.values()) == {1}
    assert await published_state(engine) == (len(rows), len(rows))
    async with engine.connect() as conn:
        assert (await audit.verify(conn))[1] is None


class DeliversThenHangs:
    """A real producer whose acknowledgements never reach the relay.

    Records really reach the broker; the relay then waits for acknowledgements that
    never come, as if it had crashed between the send and the marking commit.
    """

    def __init__(self, inner: EventProducer) -> None:
        self.inner = inner
        self.delivered: list[Delivery] = []

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def send_all(
        self, topic: str, records: Sequence[OutgoingRecord]
    ) -> AsyncIterator[Delivery]:
        async for delivery in self.inner.send_all(topic, records):
            self.delivered.append(delivery)
            yield Delivery(delivery.indexes, asyncio.get_running_loop().create_future())


async def test_crash_after_send_before_commit_republishes_same_event_ids(
    engine: AsyncEngine, topics: KafkaSettings
) -> None:
    rows = outbox_rows(120)
    await insert_rows(engine, rows)
    crashing = DeliversThenHangs(KafkaEventProducer(topics, FAST))
    relay = OutboxRelay(engine, topics, settings=FAST, producer_factory=lambda: crashing)
    task = asyncio.create_task(relay.drain())
    # Wait until the first batch is on the broker, then kill the relay mid-transaction.
    async with asyncio.timeout(30):
        while sum(len(d.indexes) for d in crashing.delivered) < FAST.batch_size or not all(
            d.future.done() for d in crashing.delivered
        ):
            await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await relay.close()
    assert all(d.future.exception() is None for d in crashing.delivered)
    assert (await published_state(engine))[1] == 0, "the killed batch must roll back"

    async with OutboxRelay(engine, topics, settings=FAST) as survivor:
        assert await survivor.drain(timeout_s=60) == len(rows)

    records = await read_records(topics, topics.topics.events, expected=len(rows) + 100)
    per_event = Counter(decode(RetentionEvent, r.value).event_id for r in records)
    assert set(per_event) == {row["event_id"] for row in rows}, "an event was lost"
    # The killed round (the one purge batch of 120, taken whole) went out twice with the
    # same event ids.
    assert Counter(per_event.values()) == {2: len(rows)}
    assert await published_state(engine) == (len(rows), len(rows))


async def test_killed_relay_process_loses_nothing(
    engine: AsyncEngine, topics: KafkaSettings, coordinator_db: str
) -> None:
    rows = outbox_rows(6000)
    await insert_rows(engine, rows, chunk=20)
    env = {
        **os.environ,
        "RETENTION_DATABASE_URL": coordinator_db,
        "RETENTION_KAFKA_BOOTSTRAP_SERVERS": topics.bootstrap_servers,
        "RETENTION_KAFKA_TOPIC_PREFIX": topics.topic_prefix,
        # 300 batches, each its own claim, two claims a round (the second sent while the
        # first is awaited): 150 commits, so the poll below sees some but not all
        # published however fast the relay signs and sends.
        "RETENTION_RELAY_BATCH_SIZE": "20",
        "RETENTION_RELAY_ROUND_CLAIMS": "2",
    }
    with subprocess.Popen(
        [RETENTION, "relay", "--drain", "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as process:
        # Kill it as soon as some, but not all, rows are published.
        try:
            async with asyncio.timeout(60):
                while (await published_state(engine))[1] == 0:
                    assert process.poll() is None, process.communicate()[1]
                    await asyncio.sleep(0.01)
        finally:
            process.send_signal(signal.SIGKILL)
    _, published_before = await published_state(engine)
    assert 0 < published_before < len(rows)

    result = subprocess.run(
        [RETENTION, "relay", "--drain", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=True,
        timeout=120,
    )
    report = json.loads(result.stdout)
    assert report["published"] == len(rows) - published_before
    assert report["unpublished"] == 0

    records = await read_records(topics, topics.topics.events, expected=len(rows))
    per_event = Counter(decode(RetentionEvent, r.value).event_id for r in records)
    assert set(per_event) == {row["event_id"] for row in rows}, "an event was lost"
    async with engine.connect() as conn:
        assert await unpublished_events(conn) == 0
        assert (await audit.verify(conn))[1] is None


async def test_unbuildable_event_is_passed_over_recorded_and_the_rest_published(
    engine: AsyncEngine, topics: KafkaSettings
) -> None:
    rows = outbox_rows(10)
    bad = {**outbox_rows(1, policy="shredder")[0], "event_type": "shred"}
    await insert_rows(engine, [bad, *rows])
    async with OutboxRelay(engine, topics, settings=FAST) as relay:
        assert await relay.drain(timeout_s=30) == 10
    async with engine.connect() as conn:
        # The watermark went past it (nothing can ever publish it); the audit says so.
        assert await unpublished_events(conn) == 0
        entries = (
            await conn.execute(
                select(audit_log.c.data).where(audit_log.c.action == AUDIT_ACTION.value)
            )
        ).scalars()
        data = list(entries)
    skipped = [i for entry in data for i in entry.get("unpublishable", [])]
    assert skipped == [str(bad["event_id"])]
    # Its policy published nothing, so no entry names it among the published.
    assert {p for entry in data for p in entry.get("policies", {})} == {"session_logs"}


async def test_relay_command_logs_through_the_one_pipeline(
    engine: AsyncEngine, topics: KafkaSettings, coordinator_db: str
) -> None:
    # Regression: `retention relay` once re-configured structlog with a PrintLogger under
    # the stdlib pipeline, so its first log line (here: an unbuildable row) crashed it.
    await clear_outbox(engine)
    bad = {**outbox_rows(1, policy="shredder")[0], "event_type": "shred"}
    await insert_rows(engine, [bad, *outbox_rows(3)])
    env = {
        **os.environ,
        "RETENTION_DATABASE_URL": coordinator_db,
        "RETENTION_KAFKA_BOOTSTRAP_SERVERS": topics.bootstrap_servers,
        "RETENTION_KAFKA_TOPIC_PREFIX": topics.topic_prefix,
    }
    result = subprocess.run(
        [RETENTION, "relay", "--drain", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"published": 3, "unpublished": 0}
    # Logged once, as a JSON line (stderr is not a terminal).
    lines = [ln for ln in result.stderr.splitlines() if "outbox_event_unpublishable" in ln]
    assert [json.loads(ln)["event_id"] for ln in lines] == [str(bad["event_id"])]
    await clear_outbox(engine)


async def test_one_relay_keeps_each_entitys_events_in_outbox_order(
    engine: AsyncEngine, topics: KafkaSettings
) -> None:
    # Eight purge transactions, each with an event for the same 25 entities; rounds of
    # at most 10 events still take each 25-event batch whole, in seq order.

    generation: dict[uuid.UUID, int] = {}
    for g in range(8):
        rows = outbox_rows(25, policy=f"p{g}")
        await insert_rows(engine, rows)
        generation.update({row["event_id"]: g for row in rows})
    async with OutboxRelay(engine, topics, settings=RelaySettings(batch_size=10)) as relay:
        assert await relay.drain(timeout_s=60) == 200
    records = await read_records(topics, topics.topics.events, expected=200)
    per_key: dict[bytes, list[int]] = {}
    for record in records:  # per partition in offset order; a key lives on one partition
        event = decode(RetentionEvent, record.value)
        per_key.setdefault(record.key, []).append(generation[event.event_id])
    assert len(per_key) == 25
    assert all(seq == list(range(8)) for seq in per_key.values()), per_key


class _RefusingProducer(QuietProducer):
    """Acknowledges every record at once, except those whose key it was told to refuse."""

    def __init__(self, refused: set[bytes]) -> None:
        self._refused = refused

    async def send_all(
        self, topic: str, records: Sequence[OutgoingRecord]
    ) -> AsyncIterator[Delivery]:
        loop = asyncio.get_running_loop()
        for index, record in enumerate(records):
            future: asyncio.Future[object] = loop.create_future()
            if record.key in self._refused:
                future.set_exception(PublishFailed("refused"))
            else:
                future.set_result(None)
            yield Delivery([index], future)


async def test_a_refused_record_stops_the_watermark_at_its_batch(
    engine: AsyncEngine, topics: KafkaSettings
) -> None:
    first = outbox_rows(40, policy="session_logs")
    second = outbox_rows(40, policy="purchase_records", start=100)
    third = outbox_rows(40, policy="audit_trail", start=200)
    await insert_rows(engine, first + second + third)
    refused = {f"user:{second[7]['entity_id']}".encode()}
    # One round claims all three batches; the second's refused record holds back the third.
    settings = FAST.model_copy(update={"batch_size": 1000, "send_chunk": 128})
    relay = OutboxRelay(
        engine, topics, settings=settings, producer_factory=lambda: _RefusingProducer(refused)
    )
    async with relay:
        result = await relay.publish_batch()
    assert (result.claimed, result.published, result.send_failed) == (120, 40, 1)
    async with engine.connect() as conn:
        assert await unpublished_events(conn) == 80
        [data] = (
            await conn.execute(
                select(audit_log.c.data).where(audit_log.c.action == AUDIT_ACTION.value)
            )
        ).scalars()
    assert data["event_ids"] == [str(row["event_id"]) for row in first]
    assert data["policies"] == {"session_logs": 40}


async def test_a_busy_audit_chain_lets_the_round_send_the_next_claims_and_mark_each(
    engine: AsyncEngine, topics: KafkaSettings
) -> None:
    batches = [outbox_rows(40, policy=p, start=100 * n) for n, p in enumerate(_POLICIES)]
    await insert_rows(engine, [row for batch in batches for row in batch])
    # One batch per claim, one claim a round unless the chain is busy: only the busy
    # chain's path sends the second and third claims.
    settings = FAST.model_copy(update={"batch_size": 40, "round_claims": 1})
    async with engine.connect() as holder, OutboxRelay(engine, topics, settings=settings) as relay:
        await holder.begin()
        await audit.lock_head(holder)
        round_ = asyncio.create_task(relay.publish_batch())
        # Every event reaches the broker while the lock is still held ...
        records = await read_records(topics, topics.topics.events, expected=120)
        assert not round_.done()
        assert await published_state(engine) == (120, 0)
        await holder.rollback()
        result = await asyncio.wait_for(round_, 30)
    # ... and one commit then marks all three, each claim with its own mark and entry.
    assert (result.claimed, result.published, result.send_failed) == (120, 120, 0)
    assert len(records) == 120
    assert await published_state(engine) == (120, 120)
    async with engine.connect() as conn:
        entries = (
            await conn.execute(
                select(audit_log.c.data)
                .where(audit_log.c.action == AUDIT_ACTION.value)
                .order_by(audit_log.c.seq)
            )
        ).scalars()
        assert [e["event_ids"] for e in entries] == [
            [str(row["event_id"]) for row in batch] for batch in batches
        ]
        assert await audit.verify(conn) == (3, None)


class _FailsAfterItsLastDelivery(QuietProducer):
    """Acknowledges every record at once; its first hand-over raises TimeoutError after
    yielding its last delivery (where a producer that awaits after each yield, as the
    librdkafka one does, can meet the relay's deadline)."""

    def __init__(self) -> None:
        self.calls = 0
        self.sent = 0

    async def send_all(
        self, topic: str, records: Sequence[OutgoingRecord]
    ) -> AsyncIterator[Delivery]:
        loop = asyncio.get_running_loop()
        self.calls += 1
        for index in range(len(records)):
            future: asyncio.Future[object] = loop.create_future()
            future.set_result(None)
            self.sent += 1
            yield Delivery([index], future)
        if self.calls == 1:
            raise TimeoutError


@pytest.mark.parametrize("round_claims", [1, 4])
async def test_a_hand_over_failing_after_its_last_delivery_ends_the_round_at_what_was_sent(
    engine: AsyncEngine, topics: KafkaSettings, round_claims: int
) -> None:
    """The claim's batches after the failed chunk were never encoded: neither the next
    claim of the round (pipelined, or while the chain is busy) nor the mark may pass them."""
    for n in range(6):
        await insert_rows(engine, outbox_rows(64, start=1000 * n))
    settings = RelaySettings(
        batch_size=256, send_chunk=128, idle_sleep_s=0.05, round_claims=round_claims
    )
    producer = _FailsAfterItsLastDelivery()
    async with (
        engine.connect() as holder,
        OutboxRelay(engine, topics, settings=settings, producer_factory=lambda: producer) as relay,
    ):
        await holder.begin()
        await audit.lock_head(holder)
        round_ = asyncio.create_task(relay.publish_batch())
        await asyncio.sleep(1)
        await holder.rollback()
        result = await asyncio.wait_for(round_, 30)
        assert result.published <= producer.sent == 128
        async with engine.connect() as conn:
            assert (await event_counts(conn))[1] == result.published
        # The next rounds send the rest: nothing was skipped.
        await relay.drain(timeout_s=30)
    async with engine.connect() as conn:
        assert await event_counts(conn) == (384, 384)
        assert await unpublished_events(conn) == 0


@pytest.mark.parametrize("round_claims", [1, 2])
async def test_a_free_audit_chain_ends_the_round_after_its_round_claims(
    engine: AsyncEngine, topics: KafkaSettings, round_claims: int
) -> None:
    await insert_rows(
        engine,
        [r for n, p in enumerate(_POLICIES) for r in outbox_rows(40, policy=p, start=100 * n)],
    )
    settings = FAST.model_copy(update={"batch_size": 40, "round_claims": round_claims})
    async with OutboxRelay(engine, topics, settings=settings) as relay:
        result = await relay.publish_batch()
    assert (result.claimed, result.published) == (40 * round_claims, 40 * round_claims)
    assert await published_state(engine) == (120, 40 * round_claims)


_POLICIES = ("session_logs", "purchase_records", "audit_trail")


async def test_a_rounds_records_are_freed_before_the_collector_threshold_drops_back(
    engine: AsyncEngine, topics: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The collection the default threshold starts at once would otherwise walk every
    # record of the round still alive (a large share of the relay's CPU per event).
    real = relay_module.fewer_collections
    alive_at_exit: list[int] = []
    # Claims an earlier test left in a cycle the collector has not reached are not this
    # drain's: held here, so none of them is counted below nor freed and its id reused.
    gc.collect()
    earlier = [o for o in gc.get_objects() if isinstance(o, relay_module._Claim)]

    def this_drains(o: object) -> bool:
        return isinstance(o, relay_module._Claim) and not any(o is e for e in earlier)

    @contextmanager
    def watched(young: int) -> Iterator[None]:
        with real(young):
            yield
            alive_at_exit.append(sum(this_drains(o) for o in gc.get_objects()))

    monkeypatch.setattr(relay_module, "fewer_collections", watched)
    await insert_rows(engine, outbox_rows(250, policy="session_logs"))
    async with OutboxRelay(engine, topics, settings=FAST) as relay:
        assert await relay.drain(timeout_s=60) == 250
    assert alive_at_exit
    assert set(alive_at_exit) == {0}, alive_at_exit
