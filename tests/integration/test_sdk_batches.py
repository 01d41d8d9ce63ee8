"""The SDK's batch transactions on the real broker and PostgreSQL: a failing event in the
middle of a batch, and a batch cut off mid-way. One partition, so the events of a test
arrive as one batch in produced order."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import suppress

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import (
    AckStatus,
    DlqHeader,
    HandlerContext,
    RetentionConsumer,
    RetentionEvent,
    RetryLater,
)
from coordinator.kafka.admin import ensure_topics
from coordinator.store.db import make_engine
from schemas import KafkaSettings, decode
from tests.integration.test_sdk_delivery import (
    FAST,
    acks_of,
    erased,
    rows,
    service_name,
    writing_app,
)
from tests.sdk.helpers import event
from tests.sdk.kafka_io import committed, produce, read_topic


@pytest.fixture
async def one_partition(kafka_settings: KafkaSettings) -> KafkaSettings:
    await ensure_topics(kafka_settings, partitions=1)
    return kafka_settings


@pytest.fixture
async def table(fresh_database: str) -> AsyncIterator[str]:
    engine = make_engine(fresh_database)
    async with engine.begin() as conn:
        await conn.run_sync(erased.metadata.create_all)
        await conn.execute(erased.delete())
    await engine.dispose()
    return fresh_database


async def committed_rows(url: str) -> int:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(erased))).scalar_one()
    finally:
        await engine.dispose()


async def test_failing_event_mid_batch_commits_the_others_and_holds_back_its_key(
    one_partition: KafkaSettings, table: str
) -> None:
    kafka, service = one_partition, service_name()
    a, b, flaky, c, flaky_later, doomed, doomed_later = (
        event("a"),
        event("b"),
        event("k"),
        event("c"),
        event("k"),
        event("d"),
        event("d"),
    )
    tag = {
        a.event_id: "a",
        b.event_id: "b",
        flaky.event_id: "flaky",
        c.event_id: "c",
        flaky_later.event_id: "flaky_later",
        doomed.event_id: "doomed",
        doomed_later.event_id: "doomed_later",
    }
    calls: list[tuple[str, int, int]] = []
    seen_committed: list[int] = []
    app = RetentionConsumer(service, kafka=kafka, settings=FAST, database_url=table)

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent, ctx: HandlerContext) -> int:
        name = tag[event.event_id]
        conn: AsyncConnection = ctx.connection
        txid = (await conn.execute(text("SELECT txid_current()"))).scalar_one()
        calls.append((name, ctx.attempt, txid))
        # Written before failing: a failed attempt must roll back its own write only.
        await conn.execute(
            erased.insert(), {"event_id": str(event.event_id), "entity_id": name, "seq": 0}
        )
        if name == "flaky" and ctx.attempt == 2:
            seen_committed.append(await committed_rows(table))
        if name == "flaky" and ctx.attempt < 3:
            raise RetryLater("not yet")
        if name == "doomed":
            raise ConnectionError("downstream unavailable")
        return 1

    # Trees of three as the relay signs them (proof format v2), the last a tree of one.
    await produce(kafka, [a, b, flaky, c, flaky_later, doomed, doomed_later], tree=3)
    await app.start()
    try:
        acks = await acks_of(kafka, expect=7)
        dlq = await read_topic(kafka, kafka.topics.dlq, expect=1)
    finally:
        await app.stop()

    got = {tag[ack.event_id]: (ack.status, ack.attempt) for ack in acks}
    assert len(acks) == 7
    assert got == {
        "a": (AckStatus.COMPLETED, 1),
        "b": (AckStatus.COMPLETED, 1),
        "flaky": (AckStatus.COMPLETED, 3),
        "c": (AckStatus.COMPLETED, 1),
        "flaky_later": (AckStatus.COMPLETED, 1),
        "doomed": (AckStatus.FAILED, 3),
        "doomed_later": (AckStatus.COMPLETED, 1),
    }
    [dead] = dlq
    assert decode(RetentionEvent, dead.value) == doomed
    assert dict(dead.headers)[DlqHeader.ATTEMPTS] == b"3"
    # The batch before the failing event was committed before its retry began.
    assert seen_committed == [2]
    # Strict offset order: nothing behind a retried event ran before its last attempt.
    order = [(name, attempt) for name, attempt, _ in calls]
    assert order == [
        ("a", 1),
        ("b", 1),
        ("flaky", 1),
        ("flaky", 2),
        ("flaky", 3),
        ("c", 1),
        ("flaky_later", 1),
        ("doomed", 1),
        ("doomed", 2),
        ("doomed", 3),
        ("doomed_later", 1),
    ]
    # One transaction per run of first attempts; the run ends at an event to retry, and
    # each retry is a transaction of its own.
    txids = [txid for _, _, txid in calls]
    runs = [txids[0:3], txids[5:8]]
    assert [len(set(run)) for run in runs] == [1, 1]
    # two runs of three, four retries, and the run after the last retry
    assert len(set(txids)) == 7
    # Each effect once; the failed attempts' writes were rolled back, the others' kept.
    written = Counter(entity for _, entity, _ in await rows(table))
    assert written == Counter(
        {"a": 1, "b": 1, "flaky": 1, "c": 1, "flaky_later": 1, "doomed_later": 1}
    )
    assert sum((await committed(kafka, app.group_id)).values()) == 7


async def test_cancelled_mid_batch_commits_and_acks_nothing_then_all_applied_once(
    one_partition: KafkaSettings, table: str
) -> None:
    kafka, service = one_partition, service_name()
    events = [event(f"x{i}") for i in range(10)]
    stuck = asyncio.Event()
    handled: list[str] = []
    settings = FAST.model_copy(update={"shutdown_timeout_s": 0.5})
    app = RetentionConsumer(service, kafka=kafka, settings=settings, database_url=table)

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent, conn: AsyncConnection) -> int:
        await conn.execute(
            erased.insert(), {"event_id": str(event.event_id), "entity_id": "x", "seq": 0}
        )
        handled.append(event.entity_id)
        if event.entity_id == "x6":
            stuck.set()
            await asyncio.Event().wait()  # until cancelled by the stop's timeout
        return 1

    await produce(kafka, events)
    await app.start()
    await asyncio.wait_for(stuck.wait(), timeout=20)
    await app.stop()

    assert handled == [f"x{i}" for i in range(7)]
    # Six events were handled in the batch's transaction; none of it was committed or acked.
    assert await rows(table) == []
    assert await read_topic(kafka, kafka.topics.acks, expect=1, timeout_s=2) == []
    assert await committed(kafka, app.group_id) == {}

    calls: Counter[uuid.UUID] = Counter()
    again = writing_app(kafka, table, service, calls)
    await again.start()
    try:
        acks = await acks_of(kafka, expect=10)
    finally:
        await again.stop()
    assert sorted(a.event_id for a in acks) == sorted(e.event_id for e in events)
    assert {(a.status, a.attempt, a.detail) for a in acks} == {(AckStatus.COMPLETED, 1, "")}
    assert calls == Counter({e.event_id: 1 for e in events})
    assert sorted(r[0] for r in await rows(table)) == sorted(str(e.event_id) for e in events)
    assert sum((await committed(kafka, again.group_id)).values()) == 10


async def test_handler_that_aborts_the_transaction_fails_alone(
    one_partition: KafkaSettings, table: str
) -> None:
    kafka, service = one_partition, service_name()
    a, swallower, b = event("a"), event("swallower"), event("b")
    app = RetentionConsumer(service, kafka=kafka, settings=FAST, database_url=table)

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent, conn: AsyncConnection) -> int:
        await conn.execute(
            erased.insert(),
            {"event_id": str(event.event_id), "entity_id": event.entity_id, "seq": 0},
        )
        if event.entity_id == "swallower":
            # Wrong, but it happens: the error is swallowed, the transaction is aborted.
            with suppress(DBAPIError):
                await conn.execute(text("SELECT 1 / 0"))
        return 1

    await produce(kafka, [a, swallower, b])
    await app.start()
    try:
        acks = await acks_of(kafka, expect=3)
    finally:
        await app.stop()

    got = {ack.entity_id: (ack.status, ack.attempt) for ack in acks}
    assert got == {
        "a": (AckStatus.COMPLETED, 1),
        "swallower": (AckStatus.FAILED, 3),
        "b": (AckStatus.COMPLETED, 1),
    }
    assert sorted(entity for _, entity, _ in await rows(table)) == ["a", "b"]
    assert sum((await committed(kafka, app.group_id)).values()) == 3
