"""The consumer SDK on the real broker and a real PostgreSQL: delivery, acks before
commits, idempotency across redeliveries, poison records, failures, stop."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, Text, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import (
    AckStatus,
    ConfigurationError,
    ConsumerSettings,
    DlqHeader,
    EventType,
    RetentionAck,
    RetentionConsumer,
    RetentionEvent,
)
from coordinator.store.db import make_engine
from schemas import KafkaSettings, ServiceRegistration, decode
from tests.sdk.helpers import event
from tests.sdk.kafka_io import committed, eventually, produce, read_topic

FAST = ConsumerSettings(
    database_url=None,  # tests choose their database explicitly, never from the environment
    retry_initial_s=0.01,
    retry_max_s=0.05,
    retry_jitter_s=0.01,
    poll_timeout_s=0.2,
    shutdown_timeout_s=10,
    error_backoff_s=0.2,
    max_attempts=3,
)

erased = Table(
    "sdk_test_erased",
    MetaData(),
    Column("event_id", Text, nullable=False),
    Column("entity_id", Text, nullable=False),
    Column("seq", Integer, nullable=False),
)


def service_name() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def table(fresh_database: str) -> AsyncIterator[str]:
    engine = make_engine(fresh_database)
    async with engine.begin() as conn:
        await conn.run_sync(erased.metadata.create_all)
        await conn.execute(erased.delete())  # the database is the module's; the rows are ours
    await engine.dispose()
    return fresh_database


async def acks_of(kafka: KafkaSettings, expect: int, **kw: float) -> list[RetentionAck]:
    records = await read_topic(kafka, kafka.topics.acks, expect=expect, **kw)
    return [decode(RetentionAck, r.value) for r in records]


async def rows(url: str) -> list[tuple[str, str, int]]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(select(erased.c.event_id, erased.c.entity_id, erased.c.seq))
            return [tuple(r) for r in result]  # type: ignore[misc]
    finally:
        await engine.dispose()


def writing_app(
    kafka: KafkaSettings, url: str, service: str, calls: Counter[uuid.UUID]
) -> RetentionConsumer:
    app = RetentionConsumer(service, kafka=kafka, settings=FAST, database_url=url)

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent, conn: AsyncConnection) -> int:
        calls[event.event_id] += 1
        seq = (await conn.execute(select(func.count()).select_from(erased))).scalar_one()
        await conn.execute(
            erased.insert(),
            {"event_id": str(event.event_id), "entity_id": event.entity_id, "seq": seq},
        )
        return 1

    return app


async def test_delivery_acks_then_commits_in_key_order(topics: KafkaSettings, table: str) -> None:
    service = service_name()
    calls: Counter[uuid.UUID] = Counter()
    # Five users, four events each: per key, the handler must see them in produced order.
    events = [event(f"u{i % 5}") for i in range(20)]
    await produce(topics, events)
    app = writing_app(topics, table, service, calls)
    await app.start()
    try:
        acks = await acks_of(topics, expect=20)
    finally:
        await app.stop()

    assert sorted(str(a.event_id) for a in acks) == sorted(str(e.event_id) for e in events)
    assert {(a.status, a.records_affected, a.service, a.attempt) for a in acks} == {
        (AckStatus.COMPLETED, 1, service, 1)
    }
    assert set(calls.values()) == {1}
    written = await rows(table)
    order = {str(e.event_id): i for i, e in enumerate(events)}
    for user in {e.entity_id for e in events}:
        seen = [order[eid] for eid, uid, _ in sorted(written, key=lambda r: r[2]) if uid == user]
        assert seen == sorted(seen)
    # Every record was acked before its offset was committed, and all are committed.
    assert sum((await committed(topics, app.group_id)).values()) == 20
    registry = app.metrics.registry
    assert (
        registry.get_sample_value(
            "retention_consumer_events_handled_total",
            {"service": service, "entity_type": "user", "action": "delete", "status": "completed"},
        )
        == 20
    )
    assert registry.get_sample_value("retention_consumer_lag_records", {"service": service}) == 0


async def test_redelivery_calls_the_handler_once_and_acks_again(
    topics: KafkaSettings, table: str
) -> None:
    service = service_name()
    calls: Counter[uuid.UUID] = Counter()
    events = [event(f"r{i}") for i in range(6)]
    # The relay may publish the same event twice (crash before marking it published).
    await produce(topics, [*events, events[0]])
    app = writing_app(topics, table, service, calls)
    await app.start()
    try:
        await acks_of(topics, expect=7)
    finally:
        await app.stop()

    # A replay from the start (another group of the same service, same database).
    replay_settings = FAST.model_copy(update={"group_id": f"{service}-replay"})
    replay = RetentionConsumer(service, kafka=topics, settings=replay_settings, database_url=table)
    replay_calls: Counter[uuid.UUID] = Counter()

    @replay.on_delete("user")
    async def delete_user(event: RetentionEvent, conn: AsyncConnection) -> int:
        replay_calls[event.event_id] += 1
        return 1

    await replay.start()
    try:
        acks = await acks_of(topics, expect=14)
    finally:
        await replay.stop()

    assert set(calls.values()) == {1}
    assert len(calls) == 6
    assert replay_calls == Counter()
    assert len(await rows(table)) == 6
    per_event = Counter(a.event_id for a in acks)
    assert per_event[events[0].event_id] == 4
    assert {per_event[e.event_id] for e in events[1:]} == {2}
    assert {(a.status, a.records_affected) for a in acks} == {(AckStatus.COMPLETED, 1)}
    assert sum(1 for a in acks if "redelivered" in a.detail) == 8


async def test_poison_and_failing_handler_go_to_the_dlq_and_the_stream_goes_on(
    topics: KafkaSettings,
) -> None:
    service = service_name()
    app = RetentionConsumer(service, kafka=topics, settings=FAST)
    attempts: Counter[str] = Counter()

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        attempts[event.entity_id] += 1
        if event.entity_id == "cursed":
            raise RuntimeError("always fails")
        return 2

    cursed = event("cursed")
    good = [event("a"), event("b"), event("c")]
    await produce(
        topics,
        [
            good[0],
            (b"user:x", b"{not json"),
            cursed,
            (b"user:y", None),
            good[1],
            event("inv", entity_type="invoice"),  # not ours: committed, never acked
            good[2],
        ],
    )
    await app.start()
    try:
        acks = await acks_of(topics, expect=4)
        dlq = await read_topic(topics, topics.topics.dlq, expect=3)
        await eventually(lambda: _committed_total(topics, app.group_id, 7), timeout_s=10)
    finally:
        await app.stop()

    by_status = Counter((a.status, a.entity_id) for a in acks)
    assert by_status == Counter(
        {(AckStatus.COMPLETED, e): 1 for e in ("a", "b", "c")} | {(AckStatus.FAILED, "cursed"): 1}
    )
    [failed] = [a for a in acks if a.status is AckStatus.FAILED]
    assert (failed.attempt, failed.detail) == (3, "RuntimeError")
    assert attempts["cursed"] == 3

    assert len(dlq) == 3
    headers = [{k: v.decode() for k, v in r.headers} for r in dlq]
    reasons = sorted(h[DlqHeader.REASON] for h in headers)
    assert reasons == ["failed", "poison", "poison"]
    by_reason = {h[DlqHeader.ERROR][:9]: (r, h) for r, h in zip(dlq, headers, strict=True)}
    record, h = by_reason["RuntimeEr"]
    assert record.key == cursed.key.encode()
    assert decode(RetentionEvent, record.value) == cursed
    assert (h[DlqHeader.SERVICE], h[DlqHeader.ATTEMPTS]) == (service, "3")
    assert h[DlqHeader.ORIGINAL_TOPIC] == topics.topics.events
    assert int(h[DlqHeader.ORIGINAL_OFFSET]) >= 0
    assert by_reason["not JSON:"][0].value == b"{not json"
    assert by_reason["empty val"][0].key == b"user:y"


async def _committed_total(kafka: KafkaSettings, group: str, total: int) -> bool:
    return sum((await committed(kafka, group)).values()) == total


async def test_registration_is_published(topics: KafkaSettings) -> None:
    service = service_name()
    app = RetentionConsumer(service, kafka=topics, settings=FAST)

    @app.on_anonymize("order")
    async def anonymize(event: RetentionEvent) -> int:
        return 0

    await app.start()
    await app.stop()
    [record] = await read_topic(topics, topics.topics.services, expect=1)
    registration = decode(ServiceRegistration, record.value)
    assert record.key == service.encode()
    assert registration.service == service
    assert [(h.entity_type, h.actions) for h in registration.handles] == [
        ("order", [EventType.ANONYMIZE])
    ]


async def test_graceful_stop_finishes_in_flight_work_and_commits_only_acked(
    topics: KafkaSettings, table: str
) -> None:
    service = service_name()
    started = asyncio.Event()
    calls: Counter[uuid.UUID] = Counter()
    app = RetentionConsumer(service, kafka=topics, settings=FAST, database_url=table)

    @app.on_delete("user")
    async def slow_delete(event: RetentionEvent, conn: AsyncConnection) -> int:
        calls[event.event_id] += 1
        started.set()
        await asyncio.sleep(0.2)
        await conn.execute(
            erased.insert(), {"event_id": str(event.event_id), "entity_id": "s", "seq": 0}
        )
        return 1

    events = [event("same") for _ in range(30)]  # one key: one partition, strictly in order
    await produce(topics, events)
    await app.start()
    await asyncio.wait_for(started.wait(), timeout=20)
    await app.stop()

    acks = await acks_of(topics, expect=1)
    done = {a.event_id for a in acks}
    assert 1 <= len(done) < 30
    # What was handled was acked and committed; nothing more was committed.
    assert sum((await committed(topics, app.group_id)).values()) == len(done)
    assert len(await rows(table)) == len(done)

    # A restart continues from the committed offset: every event handled exactly once.
    again = writing_app(topics, table, service, calls)
    await again.start()
    try:
        acks = await acks_of(topics, expect=30)
    finally:
        await again.stop()
    assert len(acks) == 30
    assert set(calls.values()) == {1}
    assert len(calls) == 30


async def test_two_members_share_partitions_without_double_effects(
    topics: KafkaSettings, table: str
) -> None:
    service = service_name()
    calls: Counter[uuid.UUID] = Counter()
    events = [event(f"m{i}") for i in range(40)]
    first = writing_app(topics, table, service, calls)
    second = writing_app(topics, table, service, calls)
    await first.start()
    await produce(topics, events[:20])
    await second.start()  # joins: a rebalance while the first is working
    await produce(topics, events[20:])
    try:
        acks = await acks_of(topics, expect=40)
    finally:
        await asyncio.gather(first.stop(), second.stop())
    assert {a.event_id for a in acks} == {e.event_id for e in events}
    assert len(await rows(table)) == 40
    assert sum((await committed(topics, first.group_id)).values()) == 40


async def test_metrics_endpoint_serves_the_consumer_registry(
    topics: KafkaSettings, table: str
) -> None:
    service = service_name()
    await produce(topics, [event("u1"), event("u2")])
    settings = FAST.model_copy(update={"metrics_port": 0})
    app = RetentionConsumer(service, kafka=topics, settings=settings, database_url=table)

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        return 1

    assert app.metrics_address is None
    await app.start()
    try:
        await acks_of(topics, expect=2)
        assert app.metrics_address is not None
        host, port = app.metrics_address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        body = (await reader.read()).decode()
        writer.close()
    finally:
        await app.stop()
    assert body.startswith("HTTP/1.0 200")
    completed = (
        'retention_consumer_events_handled_total{action="delete",entity_type="user",'
        f'service="{service}",status="completed"}} 2.0'
    )
    assert completed in body
    assert app.metrics_address is None
    # The endpoint is closed on stop.
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(host, port)


async def test_metrics_port_in_use_is_a_configuration_error(
    topics: KafkaSettings, table: str
) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    settings = FAST.model_copy(update={"metrics_port": port})
    app = RetentionConsumer(service_name(), kafka=topics, settings=settings, database_url=table)

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        return 1

    try:
        with pytest.raises(ConfigurationError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            await app.start()
    finally:
        blocker.close()
        await blocker.wait_closed()
