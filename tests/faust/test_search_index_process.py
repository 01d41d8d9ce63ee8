"""The Faust example service as a real process on the real broker: kill, restart, once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict

from aiokafka import AIOKafkaConsumer
from sqlalchemy import func, select

from consumer_sdk import DlqHeader
from coordinator.store.db import make_engine
from schemas import AckStatus, HoldRecord, KafkaSettings, RetentionAck, decode, encode, utc_now
from services import search_index
from tests import keys
from tests.infra import ROOT
from tests.integration.tracking_support import produce as produce_to
from tests.sdk.helpers import event
from tests.sdk.kafka_io import committed, eventually, produce, read_topic

GROUP = "retention.search_index"
POISON = (b"poison-key", b"{not json")

# Run 1 commits nothing on its own (30 s interval), so the kill always lands before a
# commit and every event it handled is delivered again to run 2: the idempotency proof.
RUN_WITHOUT_COMMITS = (
    "from services.search_index import create_app\n"
    "handle = create_app()\n"
    "handle.app.conf.broker_commit_interval = 30.0\n"
    "handle.run()\n"
)


def start(kafka: KafkaSettings, database_url: str, *argv: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RETENTION_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "RETENTION_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "RETENTION_SERVICE_DATABASE_URL": database_url,
    }
    return subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def first_ack(kafka: KafkaSettings, proc: subprocess.Popen[bytes]) -> None:
    consumer = AIOKafkaConsumer(
        kafka.topics.acks,
        **kafka.client_kwargs(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if any((await consumer.getmany(timeout_ms=50)).values()):
                return
        output = proc.communicate(timeout=5)[0] if proc.poll() is not None else b""
        raise AssertionError(f"no ack from the Faust service: {output.decode()[-3000:]}")
    finally:
        await consumer.stop()


async def test_faust_service_survives_sigkill_and_applies_each_event_once(
    topics: KafkaSettings, fresh_database: str
) -> None:
    users = [f"user{i}" for i in range(40)]
    await search_index.seed(fresh_database, users)
    events = [event(u) for u in users]
    await produce(topics, [*events[:20], POISON, *events[20:]])
    produced = await read_topic(topics, topics.topics.events, expect=len(events) + 1)
    position = {r.value: (r.partition, r.offset) for r in produced}
    ends: dict[int, int] = defaultdict(int)
    for partition, offset in position.values():
        ends[partition] = max(ends[partition], offset + 1)

    first = start(topics, fresh_database, "-c", RUN_WITHOUT_COMMITS)
    try:
        await first_ack(topics, first)
    finally:
        first.kill()
        first.communicate(timeout=10)
    assert first.returncode == -signal.SIGKILL
    acked_before_kill = {
        decode(RetentionAck, r.value).event_id
        for r in await read_topic(topics, topics.topics.acks, expect=1, timeout_s=5)
    }
    assert await committed(topics, GROUP) == {}

    second = start(topics, fresh_database, "-m", "services.search_index")
    try:

        async def all_committed() -> bool:
            return await committed(topics, GROUP) == dict(ends)

        await eventually(all_committed, timeout_s=40)
    finally:
        second.send_signal(signal.SIGTERM)
        output = second.communicate(timeout=30)[0]
    assert second.returncode == 0, output.decode()[-3000:]

    acks = [
        decode(RetentionAck, r.value)
        for r in await read_topic(topics, topics.topics.acks, expect=len(events), timeout_s=10)
    ]
    by_event: dict[uuid.UUID, list[RetentionAck]] = defaultdict(list)
    for ack in acks:
        by_event[ack.event_id].append(ack)
    assert set(by_event) == {e.event_id for e in events}
    for e in events:
        first_time = [a for a in by_event[e.event_id] if not a.detail.startswith("redelivered")]
        # At most one: an event whose effect run 1 committed but whose ack it had not yet
        # sent when killed is acked by run 2 alone, as a redelivery with the same outcome.
        assert len(first_time) <= 1
        assert {(a.status, a.records_affected) for a in by_event[e.event_id]} == {
            (AckStatus.COMPLETED, 2)
        }
    redelivered = {a.event_id for a in acks if a.detail.startswith("redelivered")}
    # Nothing was committed before the kill: whatever run 1 acked, run 2 saw again and
    # acked again without calling the handler.
    assert acked_before_kill
    assert acked_before_kill <= redelivered

    engine = make_engine(fresh_database)
    try:
        async with engine.connect() as conn:
            left = await conn.scalar(select(func.count()).select_from(search_index.documents))
            log = search_index.erasure_log
            applied = Counter(
                dict(
                    (
                        await conn.execute(
                            select(log.c.event_id, func.count()).group_by(log.c.event_id)
                        )
                    ).all()
                )
            )
    finally:
        await engine.dispose()
    assert left == 0
    assert applied == Counter({e.event_id: 1 for e in events})

    dead = await read_topic(topics, topics.topics.dlq, expect=1, timeout_s=5)
    assert dead, "the poison record did not reach the DLQ"
    for record in dead:  # at least once: run 1 may have dead-lettered it before the kill
        headers = {k: v.decode() for k, v in record.headers}
        assert (record.key, record.value) == POISON
        assert headers[DlqHeader.REASON] == "poison"
        assert headers[DlqHeader.SERVICE] == "search_index"
        assert int(headers[DlqHeader.ORIGINAL_OFFSET]) == position[POISON[1]][1]

    registrations = await read_topic(topics, topics.topics.services, expect=2, timeout_s=5)
    assert len(registrations) == 2  # one per start
    assert b"faust_agent_started" in output
    assert b"text 0 of user" not in output  # ids in the logs, never the indexed text


async def test_faust_service_acks_held_events_and_leaves_their_data(
    topics: KafkaSettings, fresh_database: str
) -> None:
    """The Faust adapter reads the holds topic before each event, like the core SDK: a
    user held there is acked `held` and keeps its documents; the others are erased."""
    users = ["held-user", "free-user"]
    await search_index.seed(fresh_database, users)
    hold = HoldRecord(
        entity_type="user", entity_id="held-user", holds=["case-1"], updated_at=utc_now()
    )
    await produce_to(
        topics,
        topics.topics.holds,
        [(hold.key.encode(), encode(hold))],
        signer=keys.signer(keys.COORDINATOR),
    )
    events = [event(u) for u in users]
    await produce(topics, events)

    service = start(topics, fresh_database, "-m", "services.search_index")
    try:
        acks = [
            decode(RetentionAck, r.value)
            for r in await read_topic(topics, topics.topics.acks, expect=2, timeout_s=40)
        ]
    finally:
        service.send_signal(signal.SIGTERM)
        output = service.communicate(timeout=30)[0]
    assert service.returncode == 0, output.decode()[-3000:]
    by_entity = {a.entity_id: (a.status, a.records_affected, a.detail) for a in acks}
    assert by_entity == {
        "held-user": (AckStatus.HELD, 0, "held by case-1"),
        "free-user": (AckStatus.COMPLETED, 2, ""),
    }
    engine = make_engine(fresh_database)
    try:
        async with engine.connect() as conn:
            documents = search_index.documents
            left = Counter(
                dict(
                    (
                        await conn.execute(
                            select(documents.c.user_id, func.count()).group_by(documents.c.user_id)
                        )
                    ).all()
                )
            )
    finally:
        await engine.dispose()
    assert left == Counter({"held-user": 2})
