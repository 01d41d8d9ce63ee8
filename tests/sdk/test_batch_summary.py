"""Per batch, not per event: one INFO summary, metrics added once, acks sent in one call."""

from __future__ import annotations

import logging

import pytest
import structlog
from prometheus_client import CollectorRegistry

from consumer_sdk import (
    AckStatus,
    ConsumerSettings,
    EntityNotFound,
    RetentionConsumer,
    RetentionEvent,
)
from consumer_sdk._internal import dispatch
from consumer_sdk._internal.transport import kafka_producer
from consumer_sdk.testing import TestConsumer
from schemas import KafkaSettings
from schemas.logs import configure_logging
from tests.sdk.helpers import event
from tests.sdk.kafka_io import read_topic


async def test_a_batch_logs_one_info_summary_and_its_events_at_debug(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = CollectorRegistry()
    app = RetentionConsumer("svc", settings=ConsumerSettings(database_url=None), registry=registry)

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        if event.entity_id == "gone":
            raise EntityNotFound("no such user")
        return 1

    events = [event(f"u{i}") for i in range(4)] + [event("gone")]
    sdk_logger = logging.getLogger("consumer_sdk")
    sdk_logger.setLevel(logging.DEBUG)  # the per-event line is only built when it is written
    try:
        with structlog.testing.capture_logs() as logs:
            # A logger first used after an earlier test's `configure_logging` stays cached
            # with that pipeline (it drops DEBUG before any processor): use one made for
            # the capture.
            monkeypatch.setattr(dispatch, "log", structlog.get_logger("consumer_sdk"))
            async with TestConsumer(app) as t:
                acks = await t.deliver_batch(*events)
    finally:
        sdk_logger.setLevel(logging.NOTSET)
    assert [a.status for a in acks] == [AckStatus.COMPLETED] * 4 + [AckStatus.NOT_FOUND]
    assert [a.event_id for a in acks] == [e.event_id for e in events]

    per_event = [entry for entry in logs if entry["event"] == "event_handled"]
    assert [entry["log_level"] for entry in per_event] == ["debug"] * 5
    summaries = [entry for entry in logs if entry["event"] == "batch_handled"]
    assert len(summaries) == 1
    summary = summaries[0]
    assert summary["log_level"] == "info"
    assert (summary["events"], summary["completed"], summary["not_found"]) == (5, 4, 1)
    assert (summary["first_offset"], summary["last_offset"]) == (0, 4)

    def handled(status: str) -> float | None:
        return registry.get_sample_value(
            "retention_consumer_events_handled_total",
            {"service": "svc", "entity_type": "user", "action": "delete", "status": status},
        )

    assert (handled("completed"), handled("not_found")) == (4.0, 1.0)


async def test_at_info_the_per_event_line_is_not_even_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure_logging("INFO")
    monkeypatch.setattr(dispatch, "log", structlog.get_logger("consumer_sdk"))
    built: list[str] = []
    monkeypatch.setattr(
        dispatch.Dispatcher, "_log_handled", lambda self, record, event, *_: built.append(event)
    )
    app = RetentionConsumer(
        "svc", settings=ConsumerSettings(database_url=None), registry=CollectorRegistry()
    )

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        return 1

    async with TestConsumer(app) as t:
        acks = await t.deliver_batch(event("u1"), event("u2"))
    assert [a.status for a in acks] == [AckStatus.COMPLETED] * 2
    assert built == []

    logging.getLogger("consumer_sdk").setLevel(logging.DEBUG)
    try:
        async with TestConsumer(app) as t:
            await t.deliver_batch(event("u3"))
    finally:
        logging.getLogger("consumer_sdk").setLevel(logging.NOTSET)
    assert len(built) == 1


async def test_send_many_puts_each_key_where_send_would_and_keeps_order(
    topics: KafkaSettings,
) -> None:
    """The batch API path: the partition a key's record lands on (the tracker reads acks
    per partition) and the order within a partition are those of one `send()` each."""
    # 1 KB values: each partition's records fill several batches (16 KiB each).
    records = [(f"user:{i % 40}".encode(), f"ack {i}".encode().ljust(1000)) for i in range(500)]
    producer = kafka_producer(topics)
    await producer.start()
    try:
        await (await producer.send_many(topics.topics.acks, records))
        await (await producer.send(topics.topics.acks, b"one by one", key=b"user:7"))
    finally:
        await producer.stop()
    got = await read_topic(topics, topics.topics.acks, expect=501)
    assert sorted(r.value for r in got) == sorted([v for _, v in records] + [b"one by one"])
    partition_of = {r.key: r.partition for r in got if r.value != b"one by one"}
    single = next(r for r in got if r.value == b"one by one")
    assert single.partition == partition_of[b"user:7"]
    assert len(set(partition_of.values())) == 3
    for partition in range(3):
        values = [r.value for r in sorted(got, key=lambda r: r.offset) if r.partition == partition]
        expected = [v for k, v in records if partition_of[k] == partition]
        assert [v for v in values if v != b"one by one"] == expected
