"""`Tracker` driven through the in-memory Kafka boundary: no broker, the real database.

Acks, registrations, rejects and reminders go in and out through `coordinator.kafka.memory`,
so each test states exactly which records the tracker read, committed and published.
"""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.kafka.memory import (
    MemoryAckReader,
    MemoryKafka,
    MemoryPublisher,
    MemoryRegistrationReader,
)
from coordinator.kafka.ports import ConsumedRecord
from coordinator.metrics import Metrics
from coordinator.settings import TrackerSettings
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from coordinator.store.tables import event_status, service_registry
from coordinator.tracking import ledger
from coordinator.tracking.ledger import RejectReason
from coordinator.tracking.tracker import DLQ_SERVICE, Tracker, TrackerKafka
from schemas import KafkaSettings, RetentionEvent, RetryPolicy, decode, encode
from schemas.dlq import DlqHeader, DlqReason
from schemas.signing import SignatureMode
from tests import infra, keys
from tests.integration.tracking_support import ack, insert_published, registration

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="t.memory")
TOPICS = KAFKA.topics


@dataclass
class World:
    tracker: Tracker
    kafka: MemoryKafka
    publisher: MemoryPublisher
    acks: MemoryAckReader
    engine: AsyncEngine
    clock: FrozenClock
    entity_type: str

    def register(self, *services: str, at: datetime) -> None:
        for s in services:
            reg = registration(s, at, self.entity_type)
            self.kafka.append(TOPICS.services, encode(reg), key=reg.key.encode())

    async def publish(self, n: int) -> list[tuple[uuid.UUID, str]]:
        ids = [uuid.uuid4().hex[:10] for _ in range(n)]
        events = await insert_published(
            self.engine, ids, published_at=T0, entity_type=self.entity_type
        )
        await self.tracker.track_published()
        return list(zip(events, ids, strict=True))

    def ack(self, event: tuple[uuid.UUID, str], service: str) -> None:
        a = ack(event[0], service, event[1], self.clock.now(), entity_type=self.entity_type)
        self.kafka.append(TOPICS.acks, encode(a), key=a.key.encode())

    async def states(self, events: list[tuple[uuid.UUID, str]]) -> list[str]:
        async with self.engine.connect() as conn:
            found = dict(
                (
                    await conn.execute(
                        select(event_status.c.event_id, event_status.c.state).where(
                            event_status.c.event_id.in_([e for e, _ in events])
                        )
                    )
                ).all()
            )
        return [found.get(e, "untracked") for e, _ in events]


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[str]:
    """A database of the test's own: reminders and deadlines act on every open event."""
    url = await infra.create_database(postgres_url, "test_tracker_memory")
    await upgrade(url)
    yield url
    await infra.drop_database(url)


def _tracker(
    engine: AsyncEngine,
    kafka: MemoryKafka,
    publisher: MemoryPublisher,
    acks: MemoryAckReader,
    clock: FrozenClock,
    entity_type: str,
    *,
    batch_size: int = 2000,
) -> Tracker:
    # Signatures are the signing tests' business: here the tracker's own logic, unsigned.
    declared = [
        keys.declared("billing", {entity_type: ["delete"]}, key="billing"),
        keys.declared("crm", {entity_type: ["delete"]}, key="crm"),
        keys.declared("search", {"other": ["delete"]}, key="search"),
    ]
    return Tracker(
        engine,
        KAFKA,
        TrackerSettings(
            batch_size=batch_size,
            reminder_interval_s=3600,
            reminder_backoff=2.0,
            max_reminders=2,
            slow_reminder_interval_s=7 * 86400,
        ),
        clock=clock,
        metrics=Metrics(),
        clients=TrackerKafka(publisher, acks, MemoryRegistrationReader(kafka, TOPICS.services)),
        services=declared,
        signatures=SignatureMode.OFF,
        signer=None,
    )


@pytest.fixture
async def world(database: str) -> AsyncIterator[World]:
    kafka = MemoryKafka()
    kafka.topics[TOPICS.services]  # the topic exists, empty
    publisher = MemoryPublisher(kafka)
    acks = MemoryAckReader(kafka, TOPICS.acks)
    clock = FrozenClock(T0)
    engine = make_engine(database)
    entity_type = f"user_{uuid.uuid4().hex[:8]}"
    tracker = _tracker(engine, kafka, publisher, acks, clock, entity_type)
    await tracker.start()
    try:
        yield World(tracker, kafka, publisher, acks, engine, clock, entity_type)
    finally:
        await tracker.stop()
        await engine.dispose()


async def test_registrations_are_read_to_the_end_and_tombstones_retire(world: World) -> None:
    world.register("billing", "crm", at=T0 - timedelta(days=1))
    world.kafka.append(TOPICS.services, b"not json", key=b"broken")
    assert await world.tracker.sync_registry() == 2
    [letter] = world.kafka.topics[TOPICS.dlq]
    assert dict(letter.headers)[DlqHeader.ORIGINAL_TOPIC] == TOPICS.services.encode()
    world.kafka.append(TOPICS.services, None, key=b"crm", timestamp_ms=int(T0.timestamp() * 1000))
    assert await world.tracker.poll_registry() == 1
    async with world.engine.connect() as conn:
        rows = set(
            (
                await conn.execute(
                    select(service_registry.c.service, service_registry.c.retired_at)
                )
            ).all()
        )
    assert {(service, retired) for service, retired in rows} == {("billing", None), ("crm", T0)}


async def test_acks_complete_events_and_commit_only_after(world: World) -> None:
    world.register("billing", "crm", at=T0 - timedelta(days=1))
    await world.tracker.sync_registry()
    events = await world.publish(2)
    for event in events:
        world.ack(event, "billing")
    world.ack(events[0], "crm")
    outcome = await world.tracker.consume_acks()
    assert outcome is not None
    assert (outcome.records, len(outcome.accepted), outcome.rejected) == (3, 3, [])
    assert world.kafka.committed[TOPICS.acks] == 3
    assert await world.states(events) == ["completed", "pending"]
    assert await world.tracker.consume_acks() is None


async def test_rejects_are_recorded_and_poison_is_dead_lettered(world: World) -> None:
    world.register("billing", at=T0 - timedelta(days=1))
    await world.tracker.sync_registry()
    [event] = await world.publish(1)
    world.ack((uuid.uuid4(), "nobody"), "billing")  # unknown event
    world.ack(event, "search")  # declared, but not for this entity type
    world.kafka.append(TOPICS.acks, b"{not json", key=b"k", headers=[("trace", b"1")])
    outcome = await world.tracker.consume_acks()
    assert outcome is not None
    assert sorted(reason for _, reason in outcome.rejected) == sorted(
        [RejectReason.UNKNOWN_EVENT, RejectReason.UNEXPECTED_SERVICE, RejectReason.MALFORMED]
    )
    [letter] = world.kafka.topics[TOPICS.dlq]
    headers = {k: v.decode() for k, v in letter.headers}
    assert (letter.key, letter.value, headers["trace"]) == (b"k", b"{not json", "1")
    assert headers[DlqHeader.REASON] == DlqReason.POISON.value
    assert headers[DlqHeader.SERVICE] == DLQ_SERVICE
    assert headers[DlqHeader.ORIGINAL_TOPIC] == TOPICS.acks
    assert headers[DlqHeader.ORIGINAL_OFFSET] == "2"
    assert world.kafka.committed[TOPICS.acks] == 3


async def test_a_failed_batch_is_rewound_not_committed(world: World) -> None:
    world.kafka.append(TOPICS.acks, b"{not json")
    world.publisher.fail_with.append(ConnectionResetError("broker gone"))
    with pytest.raises(ConnectionResetError):
        await world.tracker.consume_acks()
    assert TOPICS.acks not in world.kafka.committed
    assert world.acks.position == 0
    outcome = await world.tracker.consume_acks()
    assert outcome is not None
    assert outcome.records == 1
    assert world.kafka.committed[TOPICS.acks] == 1


async def test_reminders_republish_due_events_with_their_number(world: World) -> None:
    world.register("billing", at=T0 - timedelta(days=1))
    await world.tracker.sync_registry()
    [event] = await world.publish(1)
    assert await world.tracker.send_reminders() == 0
    world.clock.advance(timedelta(hours=1))
    assert await world.tracker.send_reminders() == 1
    world.clock.advance(timedelta(hours=2))
    assert await world.tracker.send_reminders() == 1
    world.clock.advance(timedelta(days=1))
    assert await world.tracker.send_reminders() == 0  # max_reminders spent: slow ones now
    world.clock.advance(timedelta(days=7))
    assert await world.tracker.send_reminders() == 1
    sent = world.kafka.topics[TOPICS.events]
    assert [dict(r.headers)["retention-reminder"] for r in sent] == [b"1", b"2", b"3"]
    assert {decode(RetentionEvent, r.value).event_id for r in sent} == {event[0]}


class _WaitingAckReader(MemoryAckReader):
    """Waits a moment on an empty topic, as a broker read does: `run_forever` yields."""

    async def read(self, *, timeout_s: float, max_records: int) -> list[ConsumedRecord]:
        found = await super().read(timeout_s=timeout_s, max_records=max_records)
        if not found:
            await asyncio.sleep(0.01)
        return found


async def test_a_failed_batch_rewinds_the_batch_read_ahead_first(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # run_forever reads batch n+1 while batch n is recorded: when n fails, both are read
    # again from n's offset, whichever order the rewinds would otherwise leave.
    w = world
    acks = _WaitingAckReader(w.kafka, TOPICS.acks)
    tracker = _tracker(w.engine, w.kafka, w.publisher, acks, w.clock, w.entity_type, batch_size=1)
    tracker.retry_policy = RetryPolicy(initial_s=0.01, max_s=0.01, jitter_s=0.0)
    w.register("billing", "crm", at=T0 - timedelta(days=1))
    await tracker.start()
    await tracker.sync_registry()
    ids = [uuid.uuid4().hex[:10] for _ in range(3)]
    events = list(
        zip(
            await insert_published(w.engine, ids, published_at=T0, entity_type=w.entity_type),
            ids,
            strict=True,
        )
    )
    # Tracked first: an ack that overtook tracking makes its batch call `apply_acks`
    # twice (`Overtaken`), and the calls below count one per batch.
    await tracker.track_published()
    for event in events:
        w.ack(event, "billing")
        w.ack(event, "crm")
    apply_acks = ledger.apply_acks
    calls: list[int] = []

    async def fail_the_second(*args: object, **kwargs: object) -> ledger.LedgerOutcome:
        calls.append(acks.position)
        if len(calls) == 2:
            raise ConnectionResetError("database gone")
        return await apply_acks(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ledger, "apply_acks", fail_the_second)
    threshold = gc.get_threshold()
    stop = asyncio.Event()
    task = asyncio.create_task(tracker.run_forever(stop))
    try:
        async with asyncio.timeout(20):
            while w.kafka.committed.get(TOPICS.acks, 0) < 6:
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task
    # The failed batch and the one read ahead of it let go of the collector's threshold.
    assert gc.get_threshold() == threshold
    # The second batch failed with the third already read (position 3); had the rewinds
    # left the third's offset, the second's ack would be skipped: one call fewer.
    assert calls[1] == 3
    assert len(calls) == 7
    assert await w.states(events) == ["completed"] * 3


async def test_a_recorded_batch_leaves_its_ids_and_rows_to_reference_counting(
    world: World,
) -> None:
    # A batch's ids and rows bound into a statement (a web of reference cycles) lived
    # until the cyclic collector freed it, which scanned them all first (docs/tracking.md,
    # "What session 12 cut"). Bound when the statements run, they are gone with the batch.
    world.register("billing", "crm", at=T0 - timedelta(days=1))
    await world.tracker.sync_registry()
    events = await world.publish(40)
    # A first batch compiles the statements: SQLAlchemy's cache keeps the first statement
    # of each shape, with whatever was bound into it, for good.
    for event in events[:20]:
        world.ack(event, "billing")
    assert await world.tracker.consume_acks() is not None
    for event in events[20:]:
        world.ack(event, "billing")
        world.ack(event, "crm")
    ids = {event_id.int for event_id, _ in events[20:]}
    gc.collect()
    gc.disable()
    try:
        outcome = await world.tracker.consume_acks()
        assert outcome is not None
        assert len(outcome.accepted) == 40
        del outcome
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, uuid.UUID) and o.int in ids]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert await world.states(events[20:]) == ["completed"] * 20
    assert left == []


class _HangingAckReader(MemoryAckReader):
    """Its first close never ends: an aiokafka consumer's close retrying a fetch from a
    broker that stopped answering (scenario 14's tracker, frozen for a minute)."""

    def __init__(self, kafka: MemoryKafka, topic: str) -> None:
        super().__init__(kafka, topic)
        self.closing = asyncio.Event()

    async def stop(self) -> None:
        if not self.closing.is_set():
            self.closing.set()
            await asyncio.Event().wait()
        await super().stop()


async def test_stop_closes_every_client_when_closing_one_is_cancelled(world: World) -> None:
    w = world
    acks = _HangingAckReader(w.kafka, TOPICS.acks)
    publisher = MemoryPublisher(w.kafka)
    tracker = _tracker(w.engine, w.kafka, publisher, acks, w.clock, w.entity_type)
    await tracker.start()
    stopping = asyncio.create_task(tracker.stop())
    await acks.closing.wait()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    # The producer is closed all the same, not left to warn from its finaliser later.
    assert not publisher.started
