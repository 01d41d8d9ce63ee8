"""The relay survives a real broker restart: rows written while Kafka is down go out after.

The broker it stops is its own (tests/faults/private_kafka.py), never the shared one on
the default port. It is `slow` (a broker start takes seconds): a plain `pytest` leaves it
out (`-m "not slow"` in the project's pytest options); `make test` and `make test-faults`
include it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.kafka.admin import ensure_topics
from coordinator.outbox.relay import OutboxRelay
from coordinator.settings import RelaySettings
from coordinator.store.db import make_engine
from schemas import KafkaSettings, RetentionEvent, decode
from tests import infra
from tests.faults.private_kafka import PrivateKafka, private_kafka
from tests.outbox import clear_outbox, insert_rows, outbox_rows, read_records

pytestmark = pytest.mark.slow


@pytest.fixture
async def engine(coordinator_db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(coordinator_db)
    await clear_outbox(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def broker() -> Iterator[PrivateKafka]:
    with private_kafka() as broker:
        yield broker


@pytest.fixture
async def topics(broker: PrivateKafka) -> KafkaSettings:
    kafka = KafkaSettings(
        bootstrap_servers=broker.bootstrap, topic_prefix=infra.unique_topic_prefix("relay")
    )
    await ensure_topics(kafka, partitions=3)
    await infra.wait_for_topics(kafka)
    return kafka


async def wait_for_backlog(relay: OutboxRelay, *, at_most: int, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while await relay.backlog() > at_most:
            await asyncio.sleep(0.2)


async def test_relay_resumes_after_broker_restart(
    engine: AsyncEngine, broker: PrivateKafka, topics: KafkaSettings
) -> None:
    settings = RelaySettings(
        batch_size=100,
        idle_sleep_s=0.1,
        publish_timeout_s=5,
        stall_timeout_s=20,
        producer_stop_timeout_s=2,
        backoff_max_s=2,
    )
    before, during = outbox_rows(300), outbox_rows(300, start=1000)
    stop = asyncio.Event()
    async with OutboxRelay(engine, topics, settings=settings) as relay:
        task = asyncio.create_task(relay.run_forever(stop))
        try:
            await insert_rows(engine, before)
            await wait_for_backlog(relay, at_most=0, timeout_s=30)
            await asyncio.to_thread(broker.stop)
            try:
                await insert_rows(engine, during)
                await asyncio.sleep(3)
                assert await relay.backlog() == len(during), "published with the broker down?"
                assert not task.done()
            finally:
                await asyncio.to_thread(broker.start)
            await wait_for_backlog(relay, at_most=0, timeout_s=120)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)
    records = await read_records(
        topics, topics.topics.events, expected=len(before) + len(during), timeout_s=60
    )
    published = {decode(RetentionEvent, r.value).event_id for r in records}
    assert published == {row["event_id"] for row in before + during}
