"""Scenario 5c: handlers that hang forever, on the real broker and database.

Among 60 events, a few make the handler hang: one waits on a statement that never ends
(`pg_sleep` inside its transaction), one awaits forever in Python. With
`handler_timeout_s` the SDK cancels each hung call, rolls its transaction back and
retries like `RetryLater`; after the last attempt the event is acked `failed` and
dead-lettered. The partitions go on: every other event is done and recorded once.
Afterwards no session of the service's database is left in a transaction or still
sleeping (`pg_stat_activity`), and no event is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from sqlalchemy import Column, MetaData, Table, Text, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import ConsumerSettings, DlqHeader, RetentionConsumer
from coordinator.store.db import make_engine
from schemas import AckStatus, KafkaSettings, RetentionAck, RetentionEvent, decode
from tests.sdk.helpers import event
from tests.sdk.kafka_io import produce, read_topic

TIMEOUT_S = 0.5
ATTEMPTS = 2

erased = Table(
    "hung_handler_erased",
    MetaData(),
    Column("event_id", Text, primary_key=True),
    Column("entity_id", Text, nullable=False),
)


@pytest.fixture
async def service_db(fresh_database: str) -> str:
    engine = make_engine(fresh_database)
    async with engine.begin() as conn:
        await conn.run_sync(erased.metadata.create_all)
    await engine.dispose()
    return fresh_database


async def _open_sessions(url: str, database: str) -> list[tuple[str, str]]:
    """Sessions of the service's database in a transaction or running a statement."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT state, query FROM pg_stat_activity WHERE datname = :db "
                    "AND pid <> pg_backend_pid() AND (state <> 'idle' OR xact_start IS NOT NULL)"
                ),
                {"db": database},
            )
            return [(r.state, r.query) for r in rows]
    finally:
        await engine.dispose()


async def test_hung_handlers_time_out_and_the_partitions_go_on(
    topics: KafkaSettings, service_db: str
) -> None:
    print(f"\n[faults] scenario 5c (handlers that hang forever), timeout {TIMEOUT_S}s")
    database = service_db.rpartition("/")[2]
    app = RetentionConsumer(
        "hung-svc",
        kafka=topics,
        settings=ConsumerSettings(
            database_url=None,
            handler_timeout_s=TIMEOUT_S,
            max_attempts=ATTEMPTS,
            retry_initial_s=0.01,
            retry_max_s=0.05,
            retry_jitter_s=0.0,
            poll_timeout_s=0.2,
            error_backoff_s=0.2,
        ),
        database_url=service_db,
    )

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent, conn: AsyncConnection) -> int:
        await conn.execute(
            erased.insert().values(event_id=str(event.event_id), entity_id=event.entity_id)
        )
        if event.entity_id.startswith("sleep-in-db"):
            await conn.execute(text("SELECT pg_sleep(3600)"))
        elif event.entity_id.startswith("await-forever"):
            await asyncio.Event().wait()
        return 1

    hung = [event(f"sleep-in-db-{i}") for i in range(2)] + [
        event(f"await-forever-{i}") for i in range(2)
    ]
    fine = [event(f"fine-{i}") for i in range(56)]
    # Hung events early and in between: each partition has work after them.
    events = fine[:10] + hung[:2] + fine[10:30] + hung[2:] + fine[30:]
    await produce(topics, events)
    started = time.monotonic()
    await app.start()
    try:
        records = await read_topic(topics, topics.topics.acks, expect=len(events), timeout_s=120)
        dead = await read_topic(topics, topics.topics.dlq, expect=len(hung), timeout_s=30)
        # While the consumer still runs (its pool open): nothing left in a transaction.
        open_sessions = await _open_sessions(service_db, database)
    finally:
        await app.stop()
    took = time.monotonic() - started
    acks: dict[str, RetentionAck] = {}
    for record in records:
        ack = decode(RetentionAck, record.value)
        acks[ack.entity_id] = ack
    assert Counter(a.status for a in acks.values()) == Counter(
        {AckStatus.COMPLETED: len(fine), AckStatus.FAILED: len(hung)}
    )
    for e in hung:
        assert (acks[e.entity_id].attempt, acks[e.entity_id].detail) == (
            ATTEMPTS,
            "HandlerTimeout",
        )
    assert sorted(dict(r.headers)[DlqHeader.ERROR] for r in dead) == [b"HandlerTimeout"] * len(hung)
    # The hung attempts were rolled back; every other event's effect is there, once.
    engine = make_engine(service_db, pool_size=1)
    try:
        async with engine.connect() as conn:
            stored = (await conn.execute(select(erased.c.entity_id))).scalars().all()
            count = (await conn.execute(select(func.count()).select_from(erased))).scalar_one()
    finally:
        await engine.dispose()
    assert sorted(stored) == sorted(e.entity_id for e in fine)
    assert count == len(fine)
    assert open_sessions == []
    print(
        f"[faults] {len(hung)} hung events failed after {ATTEMPTS} timed-out attempts each and "
        f"were dead-lettered; {len(fine)} others completed once; no open transaction; "
        f"{took:.1f}s"
    )
