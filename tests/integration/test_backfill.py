"""Backfill on the real broker and database: a newly declared service becomes an
expected acknowledger of the last N days' events, receives them, acknowledges them, and
those entities' certificates name it; older events and other entity types are untouched."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import RetentionConsumer, RetentionEvent
from coordinator.clock import SystemClock
from coordinator.evidence import audit
from coordinator.kafka.clients import KafkaPublisher
from coordinator.operations.backfill import Backfilled, backfill
from coordinator.operations.republish import SAMPLE, Republisher
from coordinator.store.migrate import upgrade
from coordinator.store.tables import audit_log, event_status
from coordinator.tracking import queries
from schemas import KafkaSettings, decode
from tests import infra, keys
from tests.integration.operations_support import FAST, event_states, run_cli
from tests.integration.tracking_support import ack, drain, insert_published, make_tracker, produce
from tests.sdk.kafka_io import read_topic

BOTH = ["delete", "anonymize"]
WINDOW = timedelta(days=14)


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[str]:
    url = await infra.create_database(postgres_url, "test_backfill")
    await upgrade(url)
    yield url
    await infra.drop_database(url)


async def test_a_new_service_is_backfilled_for_the_last_days_and_certificates_name_it(
    database: str, fresh_database: str, topics: KafkaSettings
) -> None:
    entity_type = f"user_{uuid.uuid4().hex[:8]}"
    old, new = f"old-{uuid.uuid4().hex[:6]}", f"new-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    old_declared = keys.declared(old, {entity_type: BOTH, "invoice": BOTH})
    new_declared = keys.declared(new, {entity_type: ["delete"]})
    tracker, engine, _ = make_tracker(database, topics, SystemClock(), services=[old_declared])
    await tracker.start()
    recent_ids, past_ids = ["r1", "r2", "r3"], ["p1"]
    recent = await insert_published(
        engine, recent_ids, published_at=now - timedelta(days=2), entity_type=entity_type
    )
    past = await insert_published(
        engine, past_ids, published_at=now - timedelta(days=10), entity_type=entity_type
    )
    [invoice] = await insert_published(engine, ["i1"], published_at=now, entity_type="invoice")
    assert await tracker.track_published() == 5
    await produce(
        topics,
        topics.topics.acks,
        [
            ack(e, old, i, now, entity_type=t)
            for e, i, t in [
                *(
                    (e, i, entity_type)
                    for e, i in zip(recent + past, recent_ids + past_ids, strict=True)
                ),
                (invoice, "i1", "invoice"),
            ]
        ],
    )
    await drain(tracker, 5)
    assert await event_states(engine, [*recent, *past, invoice]) == ["completed"] * 5
    await tracker.stop()  # its engine is `engine`, used to the end

    # The policy file now declares `new`; the tracker restarts with it, as `serve` does.
    tracker, tracker_engine, _ = make_tracker(
        database, topics, SystemClock(), services=[old_declared, new_declared]
    )
    await tracker.start()
    calls: Counter[uuid.UUID] = Counter()
    app = RetentionConsumer(new, kafka=topics, settings=FAST, database_url=fresh_database)

    @app.on_delete(entity_type)
    async def delete(event: RetentionEvent, conn: AsyncConnection) -> int:
        calls[event.event_id] += 1
        return 1

    publisher = KafkaPublisher(topics)
    await publisher.start()
    republisher = Republisher(
        engine,
        publisher,
        topic=topics.topics.events,
        signer=keys.signer(keys.COORDINATOR),
        clock=SystemClock(),
    )
    progress: list[int] = []
    try:
        await app.start()
        done = await backfill(
            engine,
            republisher,
            new_declared,
            since=now - timedelta(days=5),
            entity_type=None,
            actor="admin-bot",
            clock=SystemClock(),
            window=WINDOW,
            reminder_interval=timedelta(hours=1),
            progress=lambda so_far: progress.append(so_far.sent_total),
        )
        assert sorted(done.added) == sorted(recent)
        assert sorted(done.reopened) == sorted(recent)
        assert sorted(done.sent) == sorted(recent)
        assert (done.covered, done.held, progress) == (3, [], [3])
        # Open again, waiting for `new`, with time to answer.
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        event_status.c.state, event_status.c.deadline, event_status.c.expected
                    ).where(event_status.c.event_id.in_(recent))
                )
            ).all()
        assert {(r.state, r.expected) for r in rows} == {("pending", 2)}
        assert min(r.deadline for r in rows) >= now + WINDOW
        # A reopened event no longer cites the entry that recorded its completion.
        async with engine.connect() as conn:
            for entity_id in recent_ids:
                reopened = await queries.certificate(conn, entity_type, entity_id, now=now)
                assert reopened is not None
                evidence = reopened["events"][0]["evidence"]
                assert evidence["tracked"] is not None
                assert evidence["completed"] is None

        await drain(tracker, 3)
        assert await event_states(engine, [*recent, *past, invoice]) == ["completed"] * 5
        assert calls == Counter({e: 1 for e in recent})

        async with engine.connect() as conn:
            for entity_id in recent_ids:
                certificate = await queries.certificate(conn, entity_type, entity_id, now=now)
                assert certificate is not None
                assert certificate["complete"]
                [event] = certificate["events"]
                assert sorted(event["expected_services"]) == sorted([old, new])
                assert {a["service"] for a in event["acknowledgements"]} == {old, new}
            untouched = await queries.certificate(conn, entity_type, "p1", now=now)
            assert untouched is not None
            assert untouched["events"][0]["expected_services"] == [old]
            entries = (
                await conn.execute(
                    select(audit_log.c.action, audit_log.c.actor, audit_log.c.data)
                    .where(
                        audit_log.c.action.in_(
                            [
                                audit.AuditAction.SERVICE_BACKFILLED.value,
                                audit.AuditAction.EVENTS_REPUBLISHED.value,
                            ]
                        )
                    )
                    .order_by(audit_log.c.seq)
                )
            ).all()
            assert (await audit.verify(conn))[1] is None
        assert [(a, actor) for a, actor, _ in entries] == [
            ("service_backfilled", "admin-bot"),
            ("events_republished", "admin-bot"),
        ]
        assert sorted(entries[0].data["events"]) == sorted(str(e) for e in recent)

        # Again: nothing is added twice, and nothing acknowledged is sent again.
        again = await backfill(
            engine,
            republisher,
            new_declared,
            since=now - timedelta(days=5),
            entity_type=entity_type,
            actor="admin-bot",
            clock=SystemClock(),
            window=WINDOW,
            reminder_interval=timedelta(hours=1),
        )
        assert (again.added, again.sent, again.covered) == ([], [], 3)
    finally:
        await app.stop()
        await publisher.stop()
        await tracker.stop()
        await tracker_engine.dispose()
        await engine.dispose()


def test_backfilled_reports_counts() -> None:
    done = Backfilled(covered=2)
    done.add([uuid.uuid4()], [], [uuid.uuid4()], [])
    assert done.as_dict() == {
        "covered": 2,
        "added": 1,
        "reopened": 0,
        "sent": 1,
        "held": [],
        "held_total": 0,
        "truncated": False,
    }


def test_backfilled_counts_every_id_and_keeps_the_first_of_each_kind() -> None:
    done = Backfilled()
    pages = [[uuid.uuid4() for _ in range(SAMPLE - 1)], [uuid.uuid4() for _ in range(5)]]
    for page in pages:
        done.add(page, page[:2], page, page)
    first = [*pages[0], pages[1][0]]
    assert (done.added, done.sent, done.held) == (first, first, first)
    assert done.reopened == [*pages[0][:2], *pages[1][:2]]
    assert (done.added_total, done.reopened_total, done.sent_total) == (SAMPLE + 4, 4, SAMPLE + 4)
    shown = done.as_dict()
    assert (shown["held_total"], len(shown["held"]), shown["truncated"]) == (
        SAMPLE + 4,
        SAMPLE,
        True,
    )


async def test_the_backfill_command_reads_the_declaration_and_shows_progress(
    database: str, topics: KafkaSettings, tmp_path: Path
) -> None:
    entity_type = f"user_{uuid.uuid4().hex[:8]}"
    old, new = "old", f"new-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        yaml.safe_dump(
            {
                "policies": [
                    {
                        "name": "inactive_users",
                        "table": "users",
                        "entity_type": entity_type,
                        "timestamp_column": "last_seen",
                        "retention": "30d",
                        "action": "delete",
                        "legal_basis": "tests",
                        "fan_out": True,
                    }
                ],
                "services": [
                    {
                        "name": name,
                        "owner": "tests",
                        "handles": {entity_type: ["delete"]},
                        "public_keys": [keys.public_key()],
                    }
                    for name in (old, new)
                ],
            }
        )
    )
    tracker, engine, _ = make_tracker(
        database, topics, SystemClock(), services=[keys.declared(old, {entity_type: BOTH})]
    )
    await tracker.start()
    try:
        events = await insert_published(
            engine, ["c1", "c2"], published_at=now - timedelta(days=1), entity_type=entity_type
        )
        assert await tracker.track_published() == 2
        done = await asyncio.to_thread(
            run_cli,
            database,
            topics,
            "services",
            "backfill",
            new,
            "--since",
            (now - timedelta(days=3)).date().isoformat(),
            "--by",
            "oncall",
            "--policies",
            str(policies),
            "--json",
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {
            "covered": 2,
            "added": 2,
            "reopened": 0,
            "sent": 2,
            "held": [],
            "held_total": 0,
            "truncated": False,
        }
        assert f"backfill {new}: 2 covered, 2 added, 2 sent" in done.stderr
        async with engine.connect() as conn:
            certificate = await queries.certificate(conn, entity_type, "c1", now=now)
            actor = (
                await conn.execute(
                    select(audit_log.c.actor).where(audit_log.c.action == "service_backfilled")
                )
            ).scalar_one()
        assert certificate is not None
        assert sorted(certificate["events"][0]["expected_services"]) == sorted([old, new])
        assert not certificate["complete"]
        assert actor.startswith("oncall (os user ")
        records = await read_topic(topics, topics.topics.events, expect=2)
        assert {decode(RetentionEvent, r.value).event_id for r in records} == set(events)

        refused = await asyncio.to_thread(
            run_cli,
            database,
            topics,
            "services",
            "backfill",
            "nobody",
            "--since",
            "2026-01-01",
            "--by",
            "oncall",
            "--policies",
            str(policies),
        )
        assert refused.returncode == 2
        assert "'nobody' is not declared" in refused.stderr
    finally:
        await tracker.stop()
        await engine.dispose()
