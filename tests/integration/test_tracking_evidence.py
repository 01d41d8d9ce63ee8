"""The auditor's questions, answered from one real run: status, report, certificate, audit.

Three services erase users and acknowledge; a fourth registers later for `user` and never
acknowledges (reminders, then overdue); a forged ack from an unregistered service is
rejected. Then the CLI answers from the data.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.clock import FrozenClock
from coordinator.kafka.admin import ensure_topics
from coordinator.policy.model import DeclaredService
from coordinator.store.db import make_engine
from coordinator.store.tables import ack_ledger, audit_log, event_status
from schemas import AckStatus, KafkaSettings
from tests import infra, keys
from tests.integration.tracking_support import (
    ack,
    drain,
    insert_published,
    make_tracker,
    produce,
    registration,
)

T0 = datetime(2026, 11, 3, 2, 0, tzinfo=UTC)


def declared(services: tuple[str, ...], entity_types: tuple[str, ...]) -> list[DeclaredService]:
    return [keys.declared(s, {t: ["delete"] for t in entity_types}) for s in services]


SERVICES = ("billing", "notifications", "analytics")


@dataclass(frozen=True)
class Demo:
    database_url: str
    erased: dict[str, uuid.UUID]  # entity id → event id, all services acknowledged
    overdue: dict[str, uuid.UUID]  # entity id → event id, crm never acknowledged


async def _run_demo(database_url: str, kafka: KafkaSettings) -> Demo:
    await ensure_topics(kafka, partitions=3)
    clock = FrozenClock(T0)
    tracker, engine, _ = make_tracker(
        database_url, kafka, clock, services=declared(SERVICES, ("user",))
    )
    engines = [engine]
    await tracker.start()
    try:
        await produce(
            kafka,
            kafka.topics.services,
            [registration(s, T0 - timedelta(days=1)) for s in SERVICES],
        )
        await tracker.sync_registry()
        users = ["42", "43", "44"]
        erased = dict(
            zip(users, await insert_published(engine, users, published_at=T0), strict=True)
        )
        await tracker.track_published()
        acks = [
            ack(
                event,
                service,
                user,
                T0 + timedelta(minutes=minute),
                status=AckStatus.NOT_FOUND
                if (user, service) == ("44", "analytics")
                else AckStatus.COMPLETED,
                records=3,
            )
            for minute, service in enumerate(SERVICES, start=1)
            for user, event in erased.items()
        ]
        forged = ack(erased["42"], "mallory", "42", T0 + timedelta(minutes=5))
        await produce(kafka, kafka.topics.acks, [*acks, forged])
        await drain(tracker, len(acks) + 1)

        # The policy file now declares crm too: events published from here on expect it.
        clock.set(T0 + timedelta(hours=1))
        await tracker.stop()
        tracker, second_engine, _ = make_tracker(
            database_url, kafka, clock, services=declared((*SERVICES, "crm"), ("user",))
        )
        engines.append(second_engine)
        await tracker.start()
        await produce(kafka, kafka.topics.services, [registration("crm", clock.now())])
        await tracker.sync_registry()
        late_users = ["45", "46"]
        published = T0 + timedelta(hours=2)
        overdue = dict(
            zip(
                late_users,
                await insert_published(engine, late_users, published_at=published),
                strict=True,
            )
        )
        clock.set(published)
        await tracker.track_published()
        await produce(
            kafka,
            kafka.topics.acks,
            [ack(e, s, u, published, records=1) for u, e in overdue.items() for s in SERVICES],
        )
        await drain(tracker, 6)
        for step in (timedelta(hours=1), timedelta(hours=2)):
            clock.advance(step)
            assert await tracker.send_reminders() == 2
        clock.set(published + timedelta(days=30, minutes=1))
        assert await tracker.escalate_overdue() == 2
    finally:
        await tracker.stop()
        for each in engines:
            await each.dispose()
    return Demo(database_url, erased, overdue)


@pytest.fixture(scope="module")
def demo(coordinator_db: str, kafka_bootstrap: str) -> Demo:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=infra.unique_topic_prefix("evidence")
    )
    return asyncio.run(_run_demo(coordinator_db, kafka))


def _cli(demo: Demo, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args), env={"RETENTION_DATABASE_URL": demo.database_url})
    assert result.exit_code == code, (result.stdout, result.stderr)
    return result.stdout


def _json(demo: Demo, *args: str, code: int = 0) -> Any:
    return json.loads(_cli(demo, *args, code=code))


def test_status_shows_every_services_ack(demo: Demo) -> None:
    document = _json(demo, "status", "user:42", "--json")
    [event] = document["events"]
    assert (event["event_id"], event["state"], event["policy"]) == (
        str(demo.erased["42"]),
        "completed",
        "inactive_users",
    )
    assert [(s["service"], s["status"], s["records_affected"]) for s in event["services"]] == [
        ("analytics", "completed", 3),
        ("billing", "completed", 3),
        ("notifications", "completed", 3),
    ]
    assert all(s["acknowledged_at"].startswith("2026-11-03T02:0") for s in event["services"])
    assert event["rejected_acks"] == 1  # mallory's forged ack
    assert event["purged_at"] is not None
    assert event["published_at"] == "2026-11-03T02:00:00.000000Z"

    late = _json(demo, "status", "--event", str(demo.overdue["45"]), "--json")
    assert late["state"] == "overdue"
    assert late["reminders_sent"] == 2
    assert {s["service"]: s["status"] for s in late["services"]}["crm"] == "pending"

    table = _cli(demo, "status", "user:45")
    assert "overdue" in table
    assert "crm" in table


def test_status_input_errors(demo: Demo) -> None:
    _cli(demo, "status", "user:nobody", code=1)
    _cli(demo, "status", "--event", str(uuid.uuid4()), code=1)
    _cli(demo, "status", "user42", code=2)
    _cli(demo, "status", "--event", "not-a-uuid", code=2)
    _cli(demo, "status", "user:42", "--event", str(demo.erased["42"]), code=2)


def test_report_counts_outcomes_and_rejections(demo: Demo) -> None:
    document = _json(demo, "report", "--since", "2026-11-01", "--format", "json")
    [policy] = document["policies"]
    assert {k: policy[k] for k in ("policy", "events", "completed", "overdue", "failed")} == {
        "policy": "inactive_users",
        "events": 5,
        "completed": 3,
        "overdue": 2,
        "failed": 0,
    }
    # Completion is the last of the three acks, 3 minutes after publication.
    assert policy["median_seconds"] == policy["p95_seconds"] == 180.0
    services = {row["service"]: row for row in document["services"]}
    assert (services["crm"]["events"], services["crm"]["overdue"]) == (2, 2)
    assert (services["billing"]["events"], services["billing"]["completed"]) == (5, 5)
    assert document["rejected_acks"] == [
        {"service": "mallory", "reason": "unknown_service", "count": 1}
    ]
    assert _json(demo, "report", "--since", "2026-12-31", "--json")["policies"] == []

    rows = list(
        csv.DictReader(
            io.StringIO(_cli(demo, "report", "--since", "2026-11-01", "--format", "csv"))
        )
    )
    assert {(r["scope"], r["name"]) for r in rows} >= {
        ("policy", "inactive_users"),
        ("service", "crm"),
        ("rejected", "mallory"),
    }
    _cli(demo, "report", "--since", "yesterday", code=2)


def test_report_lists_overdue_events(demo: Demo) -> None:
    document = _json(demo, "report", "--overdue", "--json")
    rows = document["overdue"]
    assert sorted((r["entity_id"], r["event_id"]) for r in rows) == sorted(
        (entity_id, str(event_id)) for entity_id, event_id in demo.overdue.items()
    )
    assert {(r["service"], r["status"], r["policy"], r["last_ack_at"]) for r in rows} == {
        ("crm", "pending", "inactive_users", None)
    }
    assert all(r["deadline"] and r["overdue_at"] for r in rows)
    assert [r["deadline"] for r in rows] == sorted(r["deadline"] for r in rows)
    assert _json(demo, "report", "--overdue", "--service", "crm", "--json")["overdue"] == rows
    assert _json(demo, "report", "--overdue", "--service", "billing", "--json")["overdue"] == []

    table = list(csv.DictReader(io.StringIO(_cli(demo, "report", "--overdue", "--format", "csv"))))
    assert [(r["entity_id"], r["service"], r["last_ack_at"]) for r in table] == [
        (r["entity_id"], "crm", "") for r in rows
    ]
    assert "crm" in _cli(demo, "report", "--overdue")
    _cli(demo, "report", code=2)
    _cli(demo, "report", "--overdue", "--since", "2026-11-01", code=2)
    _cli(demo, "report", "--since", "2026-11-01", "--service", "crm", code=2)


def test_certificate_backs_each_ack_with_audit_hashes(demo: Demo) -> None:
    document = _json(demo, "certificate", "user:42")
    assert document["complete"] is True
    [event] = document["events"]
    assert sorted(a["service"] for a in event["acknowledgements"]) == sorted(SERVICES)
    refs = [a["audit"] for a in event["acknowledgements"]]
    refs += [event["evidence"]["tracked"], event["evidence"]["completed"]]
    stored = asyncio.run(_audit_entries(demo.database_url, [r["seq"] for r in refs]))
    assert all(stored[r["seq"]][0] == r["hash"] for r in refs)
    assert document["audit_chain"]["head"]["seq"] >= max(r["seq"] for r in refs)
    # Each cited entry is the one recording that step, found by the batch's link.
    *acks, tracked, completed = (stored[r["seq"]] for r in refs)
    event_id = event["event_id"]
    services = [a["service"] for a in event["acknowledgements"]]
    for ack_entry, service in zip(acks, services, strict=True):
        assert ack_entry[1] == "acks_accepted"
        assert {"event_id": event_id, "service": service} in [
            {"event_id": a["event_id"], "service": a["service"]} for a in ack_entry[2]["acks"]
        ]
    assert tracked[1] == "events_tracked"
    assert (completed[1], event_id in completed[2]["events"]) == ("events_completed", True)

    unfinished = _json(demo, "certificate", "user:45", code=1)
    assert unfinished["complete"] is False
    _cli(demo, "certificate", "user:nobody", code=1)


def test_certificate_reads_rows_recorded_before_the_link_by_their_seq(demo: Demo) -> None:
    """Rows written before migration 0031 name their entry by seq, not by link: the
    certificate cites the same entries for them (nothing is converted on upgrade)."""
    before = _json(demo, "certificate", "user:42")
    asyncio.run(_as_before_the_link(demo.database_url, before["events"][0]["event_id"]))
    after = _json(demo, "certificate", "user:42")
    for document in (before, after):
        del document["generated_at"]
    assert after == before


def test_audit_verify_names_an_edited_row(demo: Demo) -> None:
    assert _json(demo, "audit", "verify", "--json")["ok"] is True
    seq = 3
    original = asyncio.run(_edit_audit_row(demo.database_url, seq, {"tampered": True}))
    try:
        result = _json(demo, "audit", "verify", "--json", code=1)
        assert result["broken"]["seq"] == seq
    finally:
        asyncio.run(_edit_audit_row(demo.database_url, seq, original))
    assert _json(demo, "audit", "verify", "--json")["ok"] is True


async def _audit_entries(url: str, seqs: list[int]) -> dict[int, tuple[str, str, Any]]:
    """Each seq's (hash, action, data)."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(
                    audit_log.c.seq, audit_log.c.hash, audit_log.c.action, audit_log.c.data
                ).where(audit_log.c.seq.in_(seqs))
            )
            return {row.seq: (row.hash, row.action, row.data) for row in rows}
    finally:
        await engine.dispose()


async def _as_before_the_link(url: str, event_id: str) -> None:
    """Rewrite the event's ledger rows and status row as a tracker before migration 0031
    wrote them: the entry's seq instead of the batch's link."""
    engine = make_engine(url)
    a, s, log = ack_ledger.c, event_status.c, audit_log.c
    entry = (
        select(log.seq)
        .where(log.link == a.audit_link, log.action == "acks_accepted")
        .scalar_subquery()
    )
    completed = (
        select(log.seq)
        .where(log.link == s.completed_audit_link, log.action == "events_completed")
        .scalar_subquery()
    )
    try:
        async with engine.begin() as conn:
            changed = await conn.execute(
                update(ack_ledger)
                .where(a.event_id == uuid.UUID(event_id), a.accepted, a.audit_link.is_not(None))
                .values(audit_seq=entry, audit_link=None)
            )
            assert changed.rowcount == len(SERVICES)
            changed = await conn.execute(
                update(event_status)
                .where(s.event_id == uuid.UUID(event_id), s.completed_audit_link.is_not(None))
                .values(completed_audit_seq=completed, completed_audit_link=None)
            )
            assert changed.rowcount == 1
    finally:
        await engine.dispose()


async def _edit_audit_row(url: str, seq: int, data: Any) -> Any:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            old = (
                await conn.execute(select(audit_log.c.data).where(audit_log.c.seq == seq))
            ).scalar_one()
            await conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(data=data))
            return old
    finally:
        await engine.dispose()
