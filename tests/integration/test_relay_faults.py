"""The relay outlives producers that hang or fail the way aiokafka's sometimes do.

The misbehaving producers are fakes of the `EventProducer` protocol (a real broker
cannot be made to hang on demand); the database, the replacement producer and the
broker the records land on are real.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.kafka.producer import Delivery, EventProducer, KafkaEventProducer, OutgoingRecord
from coordinator.metrics import Metrics
from coordinator.outbox.lookup import EVENTS
from coordinator.outbox.relay import OutboxRelay
from coordinator.settings import RelaySettings
from schemas import KafkaSettings, RetentionEvent, decode
from tests.outbox import insert_rows, outbox_rows, read_records

QUICK = RelaySettings(
    batch_size=50,
    idle_sleep_s=0.05,
    publish_timeout_s=0.3,
    stall_timeout_s=1.0,
    producer_stop_timeout_s=0.2,
    backoff_initial_s=0.05,
    backoff_max_s=0.2,
)


class Misbehaving:
    """A producer that never delivers: acks never come, enqueueing hangs, or every send fails.

    `stop` hangs too, as in aio-libs/aiokafka#1101.
    """

    def __init__(self, how: str) -> None:
        self.how = how
        self.sends = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await asyncio.Event().wait()

    async def send_all(
        self, topic: str, records: Sequence[OutgoingRecord]
    ) -> AsyncIterator[Delivery]:
        self.sends += len(records)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self.how == "enqueue_hangs":
            await asyncio.Event().wait()
        elif self.how == "fails":
            future.set_exception(OutOfOrderSequenceNumber())
        yield Delivery(range(len(records)), future)


@pytest.mark.parametrize("how", ["acks_never_come", "enqueue_hangs", "fails"])
async def test_watchdog_replaces_a_stuck_producer(
    engine: AsyncEngine, topics: KafkaSettings, how: str
) -> None:
    rows = outbox_rows(120)
    await insert_rows(engine, rows)
    bad = Misbehaving(how)
    made: list[EventProducer] = []

    def factory() -> EventProducer:
        producer: EventProducer = bad if not made else KafkaEventProducer(topics, QUICK)
        made.append(producer)
        return producer

    metrics = Metrics()
    async with OutboxRelay(
        engine, topics, settings=QUICK, metrics=metrics, producer_factory=factory
    ) as relay:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await relay.drain(timeout_s=30) == len(rows)
        elapsed = loop.time() - started

    assert bad.sends > 0
    assert len(made) == 2
    assert metrics.relay_producer_restarts._value.get() == 1
    # Replaced after the stall window, not at the first failure, and not much later.
    assert QUICK.stall_timeout_s < elapsed < QUICK.stall_timeout_s + 5
    async with engine.connect() as conn:
        unpublished = (
            await conn.execute(
                select(func.count()).select_from(EVENTS).where(EVENTS.c.published_at.is_(None))
            )
        ).scalar_one()
    assert unpublished == 0
    records = await read_records(topics, topics.topics.events, expected=len(rows))
    per_event = Counter(decode(RetentionEvent, r.value).event_id for r in records)
    assert per_event == {row["event_id"]: 1 for row in rows}


async def test_run_forever_waits_out_a_failing_producer_and_stops_on_request(
    engine: AsyncEngine, topics: KafkaSettings
) -> None:
    made: list[EventProducer] = []

    def factory() -> EventProducer:
        producer: EventProducer = (
            Misbehaving("fails") if not made else KafkaEventProducer(topics, QUICK)
        )
        made.append(producer)
        return producer

    stop = asyncio.Event()
    async with OutboxRelay(engine, topics, settings=QUICK, producer_factory=factory) as relay:
        task = asyncio.create_task(relay.run_forever(stop))
        await asyncio.sleep(0.2)
        rows = outbox_rows(30)
        await insert_rows(engine, rows)
        async with asyncio.timeout(20):
            while await relay.backlog():
                await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    records = await read_records(topics, topics.topics.events, expected=len(rows))
    assert sorted(decode(RetentionEvent, r.value).event_id for r in records) == sorted(
        row["event_id"] for row in rows
    )
