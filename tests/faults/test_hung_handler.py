"""Scenario 5c: handlers that hang forever, on the real broker and database.

Among 64 events, a few make the handler hang: one waits on a statement that never ends
(`pg_sleep` inside its transaction), one awaits forever in Python. With
`handler_timeout_s` the SDK cancels each hung call, rolls its transaction back and
retries like `RetryLater`; after the last attempt the event is acked `failed` and
dead-lettered. Others swallow their cancellation (`except CancelledError`), then go on
waiting, or start a statement that never ends: `handler_cancel_grace_s` later the SDK
stops waiting for them, ends their database session and fails the event at once
(`HandlerAbandoned`, attempt 1). The partitions go on: every other event is done and
recorded once. Afterwards no session of the service's database is left in a transaction
or still sleeping (`pg_stat_activity`), and no event is lost.
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
GRACE_S = 0.5
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
            handler_cancel_grace_s=GRACE_S,
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
        elif event.entity_id.startswith("swallow"):
            while not released.is_set():
                try:
                    await released.wait()
                except asyncio.CancelledError:  # the mistake this scenario is about
                    if event.entity_id.startswith("swallow-then-db"):
                        await conn.execute(text("SELECT pg_sleep(3600)"))
        return 1

    # Set at the end: a swallowing handler left running ends with the test.
    released = asyncio.Event()
    hung = [event(f"sleep-in-db-{i}") for i in range(2)] + [
        event(f"await-forever-{i}") for i in range(2)
    ]
    swallowing = [event("swallow-0"), event("swallow-then-db-0")] + [
        event(f"swallow-{i}") for i in (1, 2)
    ]
    fine = [event(f"fine-{i}") for i in range(56)]
    # Hung events early and in between: each partition has work after them.
    events = (
        fine[:10] + hung[:2] + swallowing[:2] + fine[10:30] + hung[2:] + swallowing[2:] + fine[30:]
    )
    failing = hung + swallowing
    await produce(topics, events)
    started = time.monotonic()
    await app.start()
    try:
        records = await read_topic(topics, topics.topics.acks, expect=len(events), timeout_s=120)
        dead = await read_topic(topics, topics.topics.dlq, expect=len(failing), timeout_s=30)
        # While the consumer still runs (its pool open, the abandoned handlers still
        # waiting): nothing left in a transaction.
        open_sessions = await _open_sessions(service_db, database)
    finally:
        await app.stop()
        released.set()
    took = time.monotonic() - started
    acks: dict[str, RetentionAck] = {}
    for record in records:
        ack = decode(RetentionAck, record.value)
        acks[ack.entity_id] = ack
    assert Counter(a.status for a in acks.values()) == Counter(
        {AckStatus.COMPLETED: len(fine), AckStatus.FAILED: len(failing)}
    )
    for e in hung:
        assert (acks[e.entity_id].attempt, acks[e.entity_id].detail) == (
            ATTEMPTS,
            "HandlerTimeout",
        )
    for e in swallowing:
        assert (acks[e.entity_id].attempt, acks[e.entity_id].detail) == (1, "HandlerAbandoned")
    assert sorted(dict(r.headers)[DlqHeader.ERROR] for r in dead) == sorted(
        [b"HandlerTimeout"] * len(hung) + [b"HandlerAbandoned"] * len(swallowing)
    )
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
    abandoned = app.metrics.registry.get_sample_value(
        "retention_consumer_handlers_abandoned_total",
        {"service": "hung-svc", "entity_type": "user", "action": "delete"},
    )
    # Each once: the batch ends before an abandoned event, which is then failed as it is.
    assert abandoned == len(swallowing)
    print(
        f"[faults] {len(hung)} hung events failed after {ATTEMPTS} timed-out attempts each and "
        f"{len(swallowing)} that swallowed their cancellation were abandoned after "
        f"{TIMEOUT_S + GRACE_S:g}s; all dead-lettered; {len(fine)} others completed once; "
        f"no open transaction; {took:.1f}s"
    )
