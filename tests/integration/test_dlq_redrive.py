"""The DLQ tools on the real broker and database: a service whose handler had a bug
dead-letters its events; once fixed, `retention dlq redrive` re-sends the genuine ones and
they complete. Forged and non-event dead letters are listed and left."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from consumer_sdk import RetentionConsumer, RetentionEvent
from coordinator.clock import SystemClock
from coordinator.operations.dlq import DeadLetter
from coordinator.outbox.relay import OutboxRelay
from coordinator.settings import RelaySettings
from coordinator.store.migrate import upgrade
from coordinator.store.tables import audit_log
from schemas import EventType, KafkaSettings, encode
from schemas.dlq import DlqHeader, DlqReason, dlq_headers
from schemas.signing import BATCH_HEADER, PROOF_HEADER, SIGNATURE_HEADER, SignatureSettings
from tests import infra, keys
from tests.integration.operations_support import FAST, event_states, run_cli
from tests.integration.tracking_support import drain, insert_published, make_tracker
from tests.sdk.kafka_io import eventually, read_topic


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[str]:
    url = await infra.create_database(postgres_url, "test_dlq")
    await upgrade(url)
    yield url
    await infra.drop_database(url)


def service_app(
    kafka: KafkaSettings,
    url: str,
    service: str,
    entity_type: str,
    calls: Counter[uuid.UUID],
    *,
    broken: bool,
) -> RetentionConsumer:
    app = RetentionConsumer(service, kafka=kafka, settings=FAST, database_url=url)

    @app.on_delete(entity_type)
    async def delete(event: RetentionEvent, conn: AsyncConnection) -> int:
        calls[event.event_id] += 1
        if broken:
            raise KeyError("the handler's bug")
        return 1

    return app


async def test_a_fixed_service_is_redriven_from_the_dlq_and_its_events_complete(
    database: str, fresh_database: str, topics: KafkaSettings
) -> None:
    entity_type = f"user_{uuid.uuid4().hex[:8]}"
    service = f"svc-{uuid.uuid4().hex[:6]}"
    tracker, engine, _ = make_tracker(
        database,
        topics,
        SystemClock(),
        services=[keys.declared(service, {entity_type: ["delete", "anonymize"]})],
    )
    await tracker.start()
    broken_calls: Counter[uuid.UUID] = Counter()
    fixed_calls: Counter[uuid.UUID] = Counter()
    broken = service_app(topics, fresh_database, service, entity_type, broken_calls, broken=True)
    fixed = service_app(topics, fresh_database, service, entity_type, fixed_calls, broken=False)
    try:
        events = await insert_published(
            engine, ["a", "b", "c"], published_at=None, entity_type=entity_type
        )
        relay = OutboxRelay(
            engine, topics, settings=RelaySettings(), signatures=SignatureSettings()
        )
        async with relay:
            assert await relay.drain(timeout_s=60) == 3
        assert await tracker.track_published() == 3

        await broken.start()
        try:
            await drain(tracker, 3)
        finally:
            await broken.stop()
        assert await event_states(engine, events) == ["failed"] * 3
        assert set(broken_calls.values()) == {FAST.max_attempts}

        # Two dead letters that must never become events: an unsigned copy of an event
        # claiming to be this service's, and an ack the tracker could not read.
        [record] = [
            r
            for r in await read_topic(topics, topics.topics.events, expect=3)
            if r.key == f"{entity_type}:a".encode()
        ]
        signature_headers = (SIGNATURE_HEADER, PROOF_HEADER, BATCH_HEADER)
        unsigned = [(k, v) for k, v in record.headers if k not in signature_headers]
        await _dead_letter(
            topics, record.key, record.value, unsigned, service, topics.topics.events
        )
        await _dead_letter(topics, b"x", b"{}", [], service, topics.topics.acks)
        # An event with a valid coordinator signature that was never published (a key shared
        # with another deployment, evidence pruned): re-driving it would erase an entity no
        # purge chose.
        ghost = RetentionEvent(
            event_id=uuid.uuid4(),
            type=EventType.DELETE,
            entity_type=entity_type,
            entity_id="never-published",
            policy="inactive_users",
            legal_basis="none",
            initiated_at=datetime.now(UTC),
            deadline=datetime.now(UTC) + timedelta(days=1),
        )
        ghost_key, ghost_value = ghost.key.encode(), encode(ghost)
        signer = SignatureSettings().coordinator_signer()
        assert signer is not None
        await _dead_letter(
            topics,
            ghost_key,
            ghost_value,
            signer.sign_record(ghost_key, ghost_value),
            service,
            topics.topics.events,
        )

        listed = await asyncio.to_thread(
            run_cli, database, topics, "dlq", "list", "--service", service, "--json"
        )
        assert listed.returncode == 0, listed.stderr
        records = json.loads(listed.stdout)["records"]
        assert Counter(r["reason"] for r in records) == Counter(
            {DlqReason.FAILED.value: 3, DlqReason.POISON.value: 3}
        )
        assert "never-published" not in listed.stdout  # record keys name entities
        assert {r["error"] for r in records if r["reason"] == "failed"} == {"KeyError"}
        summary = await asyncio.to_thread(run_cli, database, topics, "dlq", "list")
        assert summary.returncode == 0, summary.stderr
        rows = {tuple(line.split("│")[1:4]) for line in summary.stdout.splitlines() if "│" in line}
        assert {tuple(cell.strip() for cell in row) for row in rows} >= {
            (service, "failed", "3"),
            (service, "poison", "3"),
        }

        await fixed.start()
        done = await asyncio.to_thread(
            run_cli,
            database,
            topics,
            "dlq",
            "redrive",
            "--service",
            service,
            "--by",
            "oncall",
            "--json",
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert sorted(result["sent"]) == sorted(str(e) for e in events)
        assert sorted(r["left_because"] for r in result["left"]) == [
            "not_an_event",
            "not_in_evidence",
            "not_signed_by_coordinator",
        ]
        await drain(tracker, 3)
        await eventually(lambda: _are(engine, events, "completed"), timeout_s=30)
        assert fixed_calls == Counter({e: 1 for e in events})

        async with engine.connect() as conn:
            [(actor, data)] = (
                await conn.execute(
                    select(audit_log.c.actor, audit_log.c.data).where(
                        audit_log.c.action == "dlq_redriven"
                    )
                )
            ).all()
        assert actor.startswith("oncall (os user ")
        assert sorted(data["event_ids"]) == sorted(str(e) for e in events)
        assert data["service"] == service
    finally:
        await fixed.stop()
        await tracker.stop()
        await engine.dispose()


def test_dead_letter_headers_reach_the_terminal_as_printable_text() -> None:
    letter = DeadLetter(
        0,
        0,
        datetime.now(UTC),
        None,
        None,
        ((DlqHeader.SERVICE, b"svc"), (DlqHeader.ERROR, b"Key\x1b[2J\x1b]0;owned\x07Error")),
    )
    assert letter.service == "svc"
    assert letter.as_dict()["error"] == "Key\ufffd[2J\ufffd]0;owned\ufffdError"


async def _dead_letter(
    kafka: KafkaSettings,
    key: bytes | None,
    value: bytes | None,
    original: list[tuple[str, bytes]],
    service: str,
    topic: str,
) -> None:
    producer = AIOKafkaProducer(**kafka.client_kwargs())
    await producer.start()
    try:
        headers = dlq_headers(
            original,
            topic=topic,
            partition=0,
            offset=0,
            service=service,
            reason=DlqReason.POISON,
            error="forged",
            attempts=0,
        )
        await producer.send_and_wait(kafka.topics.dlq, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def _are(engine: AsyncEngine, events: list[uuid.UUID], state: str) -> bool:
    return await event_states(engine, events) == [state] * len(events)
