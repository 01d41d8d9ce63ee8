"""The tracker on the real broker and database: ledger, states, rejections, reminders."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import case, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from coordinator.clock import FrozenClock
from coordinator.evidence import audit
from coordinator.metrics import Metrics
from coordinator.purge.holds import EntityTypes, IdForm, IdKind, create_hold, release_hold
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from coordinator.store.tables import (
    ack_ledger,
    audit_log,
    event_status,
    expected_acks,
    service_registry,
)
from coordinator.tracking import ledger, queries, waivers
from coordinator.tracking import tracker as tracker_module
from coordinator.tracking.tracker import Tracker
from schemas import AckStatus, KafkaSettings, RetentionAck, RetentionEvent, decode, encode
from schemas.dlq import DlqHeader
from schemas.signing import PROOF_HEADER, SIGNATURE_HEADER, SignatureMode
from tests import infra, keys
from tests.integration.tracking_support import (
    ack,
    drain,
    insert_published,
    make_tracker,
    produce,
    registration,
)

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
SERVICES = ("billing", "notifications", "analytics")


@dataclass
class Env:
    tracker: Tracker
    engine: AsyncEngine
    metrics: Metrics
    clock: FrozenClock
    kafka: KafkaSettings
    entity_type: str

    async def declare(self, *services: str, elsewhere: tuple[str, ...] = ()) -> None:
        """Restart the tracker with `services` declared for the test's entity type, and
        `elsewhere` for another one."""
        settings = self.tracker._settings
        await self.tracker.stop()
        both = ["delete", "anonymize"]
        self.tracker = Tracker(
            self.engine,
            self.kafka,
            settings,
            clock=self.clock,
            metrics=self.metrics,
            services=[
                *(keys.declared(s, {self.entity_type: both}) for s in services),
                *(keys.declared(s, {"elsewhere": both}) for s in elsewhere),
            ],
            signatures=SignatureMode.REQUIRED,
            signer=keys.signer(keys.COORDINATOR),
        )
        await self.tracker.start()

    async def register(self, *services: str, at: datetime) -> None:
        await produce(
            self.kafka,
            self.kafka.topics.services,
            [registration(s, at, self.entity_type) for s in services],
        )
        await self.tracker.sync_registry()

    async def publish(self, n: int, at: datetime) -> list[tuple[uuid.UUID, str]]:
        ids = [uuid.uuid4().hex[:10] for _ in range(n)]
        events = await insert_published(
            self.engine, ids, published_at=at, entity_type=self.entity_type
        )
        return list(zip(events, ids, strict=True))

    async def states(self, events: list[tuple[uuid.UUID, str]]) -> list[str]:
        async with self.engine.connect() as conn:
            found = dict(
                (
                    await conn.execute(
                        select(event_status.c.event_id, event_status.c.state).where(
                            event_status.c.event_id.in_([e for e, _ in events])
                        )
                    )
                ).all()
            )
        return [found.get(e, "untracked") for e, _ in events]

    async def service_status(self, event_id: uuid.UUID) -> dict[str, str]:
        async with self.engine.connect() as conn:
            return dict(
                (
                    await conn.execute(
                        select(expected_acks.c.service, expected_acks.c.status).where(
                            expected_acks.c.event_id == event_id
                        )
                    )
                ).all()
            )


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[str]:
    """A database of the test's own: reminders and deadlines act on every open event."""
    url = await infra.create_database(postgres_url, "test_tracker")
    await upgrade(url)
    yield url
    await infra.drop_database(url)


@pytest.fixture
async def env(database: str, topics: KafkaSettings) -> AsyncIterator[Env]:
    clock = FrozenClock(T0)
    tracker, engine, metrics = make_tracker(database, topics, clock, services=[])
    await tracker.start()
    env = Env(tracker, engine, metrics, clock, topics, f"user_{uuid.uuid4().hex[:8]}")
    try:
        yield env
    finally:
        await env.tracker.stop()  # `declare` replaces it
        await engine.dispose()


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_acks_complete_events_idempotently(env: Env) -> None:
    await env.declare(*SERVICES)
    events = await env.publish(4, T0)
    assert await env.tracker.track_published() >= 4
    assert await env.states(events) == ["pending"] * 4

    t = T0 + timedelta(minutes=1)
    first = [
        ack(e, "billing", i, t, status=AckStatus.FAILED, entity_type=env.entity_type)
        for e, i in events[:1]
    ]
    await produce(env.kafka, env.kafka.topics.acks, first)
    await drain(env.tracker, 1)
    assert await env.states(events) == ["failed", "pending", "pending", "pending"]

    acks = [
        ack(
            e,
            service,
            i,
            t + timedelta(minutes=1),
            attempt=2 if (e, i) == events[0] and service == "billing" else 1,
            status=AckStatus.NOT_FOUND if service == "analytics" else AckStatus.COMPLETED,
            entity_type=env.entity_type,
        )
        for e, i in events
        for service in SERVICES
    ]
    # At-least-once: every ack arrives twice.
    await produce(env.kafka, env.kafka.topics.acks, acks + acks)
    await drain(env.tracker, len(acks) * 2)

    assert await env.states(events) == ["completed"] * 4
    assert await env.service_status(events[0][0]) == {
        "billing": "completed",
        "notifications": "completed",
        "analytics": "not_found",
    }
    m = env.metrics
    assert _value(m, "retention_acks_total", service="billing", status="completed") == 4
    assert _value(m, "retention_acks_total", service="billing", status="failed") == 1
    assert _value(m, "retention_acks_total", service="analytics", status="not_found") == 4
    assert _value(m, "retention_event_completion_seconds_count", policy="inactive_users") == 4
    async with env.engine.connect() as conn:
        accepted = (
            await conn.execute(
                select(ack_ledger.c.id).where(
                    ack_ledger.c.event_id.in_([e for e, _ in events]), ack_ledger.c.accepted
                )
            )
        ).all()
        assert len(accepted) == 1 + len(acks)
        assert (await audit.verify(conn))[1] is None


async def test_an_expected_row_keeps_the_answer_that_stands_and_counts_every_new_ack(
    env: Env,
) -> None:
    """The update combines what the ack path no longer reads with the stored row: records
    and detail only from an ack that replaced the status, the earliest ack time, the count
    of new acks; within a batch and across batches, redeliveries counted once."""
    await env.declare(*SERVICES)
    (settled, s_id), (failing, f_id) = await env.publish(2, T0)
    assert await env.tracker.track_published() >= 2
    # Not a whole second: the ack times travel as microseconds (migration 0034).
    t = T0 + timedelta(minutes=10, microseconds=654_321)

    def billing(
        event: tuple[uuid.UUID, str], minutes: int, status: AckStatus, attempt: int, detail: str
    ) -> RetentionAck:
        return ack(
            event[0],
            "billing",
            event[1],
            t + timedelta(minutes=minutes),
            status=status,
            attempt=attempt,
            entity_type=env.entity_type,
            records=5,
        ).model_copy(update={"detail": detail})

    first = [
        billing((settled, s_id), 2, AckStatus.FAILED, 1, "timed out"),
        billing((settled, s_id), 3, AckStatus.COMPLETED, 1, "deleted"),
        billing((settled, s_id), 4, AckStatus.FAILED, 2, "late failure"),
        billing((failing, f_id), 5, AckStatus.FAILED, 2, "newer failure"),
    ]
    await produce(env.kafka, env.kafka.topics.acks, first + first[:1])
    await drain(env.tracker, len(first) + 1)
    second = [
        billing((settled, s_id), 1, AckStatus.FAILED, 3, "earliest, after success"),
        billing((failing, f_id), 2, AckStatus.FAILED, 1, "older failure"),
    ]
    await produce(env.kafka, env.kafka.topics.acks, second + second)
    await drain(env.tracker, len(second) * 2)
    # Acks later than every stored one: the stored first ack time stands, whether the
    # ack replaces the answer (`failing`) or not (`settled`).
    third = [
        billing((settled, s_id), 20, AckStatus.FAILED, 4, "later, after success"),
        billing((failing, f_id), 20, AckStatus.FAILED, 3, "latest failure"),
    ]
    await produce(env.kafka, env.kafka.topics.acks, third)
    await drain(env.tracker, len(third))

    e = expected_acks.c
    async with env.engine.connect() as conn:
        rows = {
            row.event_id: tuple(row[1:])
            for row in await conn.execute(
                select(
                    e.event_id,
                    e.status,
                    e.records_affected,
                    e.attempt,
                    e.detail,
                    e.acknowledged_at,
                    e.first_ack_at,
                    e.acks_received,
                ).where(e.event_id.in_([settled, failing]), e.service == "billing")
            )
        }
        # Each accepted ack's row holds its ack time, to the microsecond.
        ledger_times = sorted(
            await conn.scalars(
                select(ack_ledger.c.acknowledged_at).where(
                    ack_ledger.c.event_id == settled,
                    ack_ledger.c.service == "billing",
                    ack_ledger.c.accepted,
                )
            )
        )
    minute = timedelta(minutes=1)
    assert ledger_times == [t + n * minute for n in (1, 2, 3, 4, 20)]
    assert rows[settled] == ("completed", 5, 1, "deleted", t + 3 * minute, t + minute, 5)
    assert rows[failing] == (
        "failed",
        0,
        3,
        "latest failure",
        t + 20 * minute,
        t + 2 * minute,
        3,
    )


async def test_ack_batches_are_decoded_and_recorded_with_fewer_collections(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's objects live until it is recorded: parsing what the consumer holds
    (a read that does not wait), decoding and recording run with the collector's
    youngest threshold raised to the tracker's setting; a read that waits for acks does
    not (the threshold is process-wide), and the threshold is restored after."""
    env.tracker._settings = env.tracker._settings.model_copy(update={"gc_threshold": 123_457})
    await env.declare(*SERVICES)
    events = await env.publish(2, T0)
    assert await env.tracker.track_published() >= 2
    seen: list[tuple[str, int]] = []
    tracker, reader = env.tracker, env.tracker._kafka.acks
    read, decode_batch, record_batch = reader.read, tracker._decode_batch, tracker._record_batch

    async def reading(*, timeout_s: float, max_records: int) -> list[Any]:
        seen.append(("wait" if timeout_s else "take", gc.get_threshold()[0]))
        return await read(timeout_s=timeout_s, max_records=max_records)

    def decoding(messages: list[Any]) -> Any:
        seen.append(("decode", gc.get_threshold()[0]))
        return decode_batch(messages)

    async def recording(batch: Any) -> ledger.LedgerOutcome:
        seen.append(("record", gc.get_threshold()[0]))
        return await record_batch(batch)

    monkeypatch.setattr(reader, "read", reading)
    monkeypatch.setattr(tracker, "_decode_batch", decoding)
    monkeypatch.setattr(tracker, "_record_batch", recording)
    before = gc.get_threshold()
    raised = max(before[0], 123_457)
    acks = [ack(e, s, i, T0, entity_type=env.entity_type) for e, i in events for s in SERVICES]
    await produce(env.kafka, env.kafka.topics.acks, acks)
    await drain(env.tracker, len(acks))
    assert await env.states(events) == ["completed"] * 2
    # Nothing left: this read takes nothing, then waits.
    assert await env.tracker.consume_acks(timeout_s=0.05) is None
    assert {kind for kind, _ in seen} == {"take", "wait", "decode", "record"}
    assert {(kind, raised if kind != "wait" else before[0]) for kind, _ in seen} == set(seen)
    assert gc.get_threshold() == before


async def test_an_idle_tracker_leaves_the_collector_s_threshold_alone(env: Env) -> None:
    # In `serve` the read-ahead waits for acks nearly all the time: a threshold raised
    # there would be raised for the API and the relay's rounds all the time too.
    env.tracker._settings = env.tracker._settings.model_copy(update={"gc_threshold": 123_457})
    await env.declare(*SERVICES)
    await env.tracker.stop()
    before = gc.get_threshold()
    stop = asyncio.Event()
    running = asyncio.create_task(env.tracker.run_forever(stop))
    samples = []
    try:
        for _ in range(20):
            await asyncio.sleep(0.05)
            samples.append(gc.get_threshold())
    finally:
        stop.set()
        await running
    assert set(samples) == {before}


async def test_rejected_acks_are_recorded_never_applied(env: Env) -> None:
    await env.declare("billing", "crm")
    [(event, entity)] = await env.publish(1, T0)
    await env.tracker.track_published()
    async with env.engine.begin() as conn:
        # crm was declared when the event was published; then its expectation was waived.
        await waivers.waive_ack(
            conn, event_id=event, service="crm", reason="test", actor="tests", now=T0
        )
    t = T0 + timedelta(minutes=1)
    genuine = ack(event, "billing", entity, t, entity_type=env.entity_type)
    unsigned = ack(
        event, "billing", entity, t, status=AckStatus.FAILED, entity_type=env.entity_type
    )
    records = [
        ack(event, "mallory", entity, t, entity_type=env.entity_type),  # not declared
        ack(uuid.uuid4(), "billing", entity, t, entity_type=env.entity_type),  # unknown event
        ack(event, "billing", "someone-else", t, entity_type=env.entity_type),  # wrong entity
        (event.bytes, b'{"event_id": "not json'),
        (b"k", b'{"service": "billing"}'),
    ]
    await produce(env.kafka, env.kafka.topics.acks, records)
    # A forged `completed` with another key, and an unsigned one: neither may take the
    # genuine ack's place; the genuine one arrives last and still counts.
    await produce(env.kafka, env.kafka.topics.acks, [genuine], signer=keys.signer("mallory"))
    await produce(env.kafka, env.kafka.topics.acks, [unsigned], signer=None)
    await drain(env.tracker, len(records) + 2)
    assert await env.states([(event, entity)]) == ["pending"]
    assert await env.service_status(event) == {"billing": "pending", "crm": "waived"}

    await produce(env.kafka, env.kafka.topics.acks, [genuine])
    await drain(env.tracker, 1)
    assert await env.states([(event, entity)]) == ["completed"]
    assert await env.service_status(event) == {"billing": "completed", "crm": "waived"}
    m = env.metrics
    for reason, count in (
        ("unknown_service", 1),
        ("unknown_event", 1),
        ("entity_mismatch", 1),
        ("malformed", 2),
        ("bad_signature", 2),
    ):
        assert _value(m, "retention_acks_rejected_total", reason=reason) == count, reason
    async with env.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    ack_ledger.c.reject_reason, ack_ledger.c.audit_seq, ack_ledger.c.audit_link
                ).where(
                    ~ack_ledger.c.accepted,
                    ack_ledger.c.kafka_topic == env.kafka.topics.acks,
                )
            )
        ).all()
    assert sorted(r.reject_reason for r in rows) == [
        "bad_signature",
        "bad_signature",
        "entity_mismatch",
        "malformed",
        "malformed",
        "unknown_event",
        "unknown_service",
    ]
    # Ack batches name their entry by link since migration 0031, not by seq.
    assert all(r.audit_link is not None and r.audit_seq is None for r in rows)
    # A record that did not decode keeps the decoder's reason and its size, not its bytes.
    async with env.engine.connect() as conn:
        details = (
            await conn.scalars(
                select(ack_ledger.c.detail)
                .where(
                    ack_ledger.c.reject_reason == "malformed",
                    ack_ledger.c.kafka_topic == env.kafka.topics.acks,
                )
                .order_by(ack_ledger.c.kafka_offset)
            )
        ).all()
    sizes = [len(b'{"event_id": "not json'), len(b'{"service": "billing"}')]
    assert [d.rpartition(" (")[2] for d in details] == [f"{n} bytes)" for n in sizes]
    assert not [d for d in details if "not json" in d or '"service"' in d]
    dead = await _read_all(env.kafka, env.kafka.topics.dlq, 2)
    assert sorted(dict(m.headers)[DlqHeader.ERROR][:7] for m in dead) == [b"invalid", b"not JSO"]


async def test_snapshot_rows_cite_their_events_tracked_entry(env: Env) -> None:
    await env.declare("billing", "notifications")
    handled = await env.publish(2, T0)
    unhandled = await insert_published(
        env.engine, ["orphan"], published_at=T0, entity_type=f"{env.entity_type}-none"
    )
    assert await env.tracker.track_published() == 3
    async with env.engine.connect() as conn:
        rows = {
            row.event_id: row
            for row in await conn.execute(
                select(event_status, audit_log.c.action, audit_log.c.data)
                .join(audit_log, audit_log.c.seq == event_status.c.tracked_audit_seq)
                .where(event_status.c.event_id.in_([*(e for e, _ in handled), *unhandled]))
            )
        }
        services = (
            await conn.execute(
                select(expected_acks.c.event_id, expected_acks.c.service).where(
                    expected_acks.c.event_id.in_(rows)
                )
            )
        ).all()
    assert len(rows) == 3
    assert {row.action for row in rows.values()} == {"events_tracked"}
    for event_id, row in rows.items():
        listed = {e["event_id"]: e["expected"] for e in row.data["events"]}
        mine = sorted(svc for e, svc in services if e == event_id)
        assert listed[str(event_id)] == mine
        assert row.expected == len(mine)
        if mine:
            assert (row.state, row.completed_at, row.completed_audit_seq) == ("pending", None, None)
        else:
            assert (row.state, row.completed_at) == ("completed", row.published_at)
            assert row.completed_audit_seq == row.tracked_audit_seq
    assert all(
        sorted(svc for e, svc in services if e == event_id) == ["billing", "notifications"]
        for event_id, _ in handled
    )


async def test_acks_ahead_of_the_snapshot_and_rejects_cite_their_audit_rows(env: Env) -> None:
    await env.declare("billing", elsewhere=("mallory",))
    tracked = await env.publish(2, T0)
    await env.tracker.track_published()
    # Published but not yet snapshotted, and sent by a relay that crashed before marking.
    ahead = await env.publish(1, T0)
    [unmarked] = await insert_published(
        env.engine, ["unmarked"], published_at=None, entity_type=env.entity_type
    )
    t = T0 + timedelta(minutes=1)
    mine = [*tracked, *ahead, (unmarked, "unmarked")]
    good = [ack(e, "billing", i, t, entity_type=env.entity_type) for e, i in mine]
    # mallory is declared, but not for what these events are about.
    forged = [ack(e, "mallory", i, t, entity_type=env.entity_type) for e, i in mine[:2]]
    await produce(env.kafka, env.kafka.topics.acks, [*good, *forged, *good[:1]])
    await drain(env.tracker, len(good) + len(forged) + 1)

    assert await env.states(mine) == ["completed"] * 4
    async with env.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(ack_ledger, audit_log.c.action, audit_log.c.data)
                .join(
                    audit_log,
                    (audit_log.c.link == ack_ledger.c.audit_link)
                    & (
                        audit_log.c.action
                        == case((ack_ledger.c.accepted, "acks_accepted"), else_="acks_rejected")
                    ),
                )
                .where(ack_ledger.c.kafka_topic == env.kafka.topics.acks)
            )
        ).all()
        completions = (
            await conn.execute(
                select(event_status.c.event_id, audit_log.c.action, audit_log.c.data)
                .join(
                    audit_log,
                    (audit_log.c.link == event_status.c.completed_audit_link)
                    & (audit_log.c.action == "events_completed"),
                )
                .where(event_status.c.event_id.in_([e for e, _ in mine]))
            )
        ).all()
        assert (await audit.verify(conn))[1] is None
    # Each completed event names the entry that lists it as completed.
    assert len(completions) == len(mine)
    assert all(str(c.event_id) in c.data["events"] for c in completions)
    # The re-sent ack landed in the ledger as a no-op: only the first copy has a row.
    assert len(rows) == len(good) + len(forged)
    for row in rows:
        cited = row.data["acks"]
        if row.accepted:
            assert row.action == "acks_accepted"
            assert any(
                (a["event_id"], a["service"]) == (str(row.event_id), "billing") for a in cited
            )
        else:
            assert (row.action, row.reject_reason) == ("acks_rejected", "unexpected_service")
            where = (row.kafka_partition, row.kafka_offset)
            assert any((a["partition"], a["offset"]) == where for a in cited)


async def test_registrations_change_no_expectations_reminders_overdue_late_ack(env: Env) -> None:
    await env.declare(*SERVICES)
    clock, tracker = env.clock, env.tracker
    old = await env.publish(2, T0)
    await tracker.track_published()
    await produce(
        env.kafka,
        env.kafka.topics.acks,
        [ack(e, s, i, T0, entity_type=env.entity_type) for e, i in old for s in SERVICES],
    )
    await drain(tracker, 6)
    assert await env.states(old) == ["completed"] * 2

    # An undeclared service registers; a declared one's registration is tombstoned by
    # someone without its key. Neither changes who is expected; both show as drift.
    clock.set(T0 + timedelta(hours=1))
    await env.register("crm", at=clock.now())
    await produce(env.kafka, env.kafka.topics.services, [(b"analytics", None)], signer=None)
    await tracker.sync_registry()
    new = await env.publish(3, T0 + timedelta(hours=2))
    clock.set(T0 + timedelta(hours=2))
    await tracker.track_published()
    assert set(await env.service_status(old[0][0])) == set(SERVICES)
    assert set(await env.service_status(new[0][0])) == set(SERVICES)
    drift = await tracker.check_drift()
    assert drift["crm"].problem == "undeclared"
    assert drift["analytics"].problem == "not_registered"  # it never registered at all
    assert _value(env.metrics, "retention_service_drift", service="crm") == 1
    assert (
        _value(env.metrics, "retention_registrations_rejected_total", reason="bad_signature") == 1
    )
    answered = ("billing", "notifications")
    await produce(
        env.kafka,
        env.kafka.topics.acks,
        [ack(e, s, i, clock.now(), entity_type=env.entity_type) for e, i in new for s in answered]
        + [ack(e, "crm", i, clock.now(), entity_type=env.entity_type) for e, i in new],
    )
    await drain(tracker, 9)
    assert await env.states(new) == ["pending"] * 3

    # Reminder 1 after the interval, reminder 2 after twice that (max_reminders=2), then
    # one a day (the default slow cadence): they slow down, they never stop silently.
    assert await tracker.send_reminders() == 0
    clock.advance(timedelta(hours=1))
    assert await tracker.send_reminders() == 3
    clock.advance(timedelta(hours=1))
    assert await tracker.send_reminders() == 0
    clock.advance(timedelta(hours=1))
    assert await tracker.send_reminders() == 3
    clock.advance(timedelta(hours=23, minutes=59))
    assert await tracker.send_reminders() == 0
    clock.advance(timedelta(minutes=1))
    assert await tracker.send_reminders() == 3
    republished = await _read_all(env.kafka, env.kafka.topics.events, 9)
    events = [decode(RetentionEvent, m.value) for m in republished]
    assert sorted(str(e.event_id) for e in events) == sorted(str(e) for e, _ in new * 3)
    assert {e.entity_type for e in events} == {env.entity_type}
    assert sorted(dict(m.headers)["retention-reminder"] for m in republished) == sorted(
        [b"1", b"2", b"3"] * 3
    )

    assert await tracker.escalate_overdue() == 0
    clock.set(T0 + timedelta(hours=2, days=30, seconds=1))
    assert await tracker.escalate_overdue() == 3
    assert await env.states(new) == ["overdue"] * 3
    # Overdue events are still reminded, once a day, and stay overdue.
    assert await tracker.send_reminders() == 3
    assert await tracker.send_reminders() == 0
    clock.advance(timedelta(days=1))
    assert await tracker.send_reminders() == 3
    assert await env.states(new) == ["overdue"] * 3
    await tracker.refresh_gauges()
    assert _value(env.metrics, "retention_overdue_events", service="analytics") == 3
    assert _value(env.metrics, "retention_pending_acks", service="analytics") == 3
    assert _value(env.metrics, "retention_overdue_events", service="billing") == 0

    # A late success still moves an overdue event on; a waiver settles another.
    e, i = new[0]
    await produce(
        env.kafka,
        env.kafka.topics.acks,
        [ack(e, "analytics", i, clock.now(), entity_type=env.entity_type)],
    )
    await drain(tracker, 1)
    async with env.engine.begin() as conn:
        waived = await waivers.waive_ack(
            conn,
            event_id=new[1][0],
            service="analytics",
            reason="decommissioned",
            actor="tests",
            now=clock.now(),
        )
    assert waived.completed == [new[1][0]]
    assert await env.states(new) == ["completed", "completed", "overdue"]
    await tracker.refresh_gauges()
    assert _value(env.metrics, "retention_overdue_events", service="analytics") == 1
    async with env.engine.connect() as conn:
        assert (await audit.verify(conn))[1] is None


async def test_registry_retires_what_a_service_stops_handling(env: Env) -> None:
    other = f"order_{uuid.uuid4().hex[:8]}"
    await env.declare("ledger")
    kafka, services = env.kafka, env.kafka.topics.services
    await produce(kafka, services, [registration("ledger", T0, env.entity_type, other)])
    # Replayed older registration and a newer one that drops `other`.
    await produce(
        kafka,
        services,
        [
            registration("ledger", T0 - timedelta(days=3), env.entity_type, version="0.0.9"),
            registration("ledger", T0 + timedelta(days=1), env.entity_type, version="0.2.0"),
        ],
    )
    await env.tracker.sync_registry()
    async with env.engine.connect() as conn:
        rows = {
            (r.entity_type, r.action): r
            for r in await conn.execute(
                select(service_registry).where(service_registry.c.service == "ledger")
            )
        }
    mine = rows[(env.entity_type, "delete")]
    assert (mine.first_seen, mine.last_seen, mine.retired_at, mine.sdk_version) == (
        T0 - timedelta(days=3),
        T0 + timedelta(days=1),
        None,
        "0.2.0",
    )
    assert rows[(other, "delete")].retired_at == T0 + timedelta(days=1)
    # It now registers exactly what it is declared for: no drift.
    assert (await env.tracker.check_drift())["ledger"].problem is None


async def _read_all(kafka: KafkaSettings, topic: str, n: int) -> list[object]:
    consumer = AIOKafkaConsumer(
        topic, **kafka.client_kwargs(), group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        found: list[object] = []
        for _ in range(50):
            batches = await consumer.getmany(timeout_ms=200)
            found.extend(m for messages in batches.values() for m in messages)
            if len(found) >= n:
                break
        return sorted(found, key=lambda m: m.timestamp)  # type: ignore[attr-defined]
    finally:
        await consumer.stop()


async def test_run_forever_tracks_and_completes(database: str, topics: KafkaSettings) -> None:
    clock = FrozenClock(T0)
    tracker, engine, metrics = make_tracker(
        database, topics, clock, services=[keys.declared("billing", {"user": ["delete"]})]
    )
    [event] = await insert_published(engine, ["7"], published_at=T0)
    stop = asyncio.Event()
    task = asyncio.create_task(tracker.run_forever(stop))
    try:
        await produce(topics, topics.topics.acks, [ack(event, "billing", "7", T0)])
        for _ in range(100):
            async with engine.connect() as conn:
                state = (
                    await conn.execute(
                        select(event_status.c.state).where(event_status.c.event_id == event)
                    )
                ).scalar()
            counted = _value(metrics, "retention_acks_total", service="billing", status="completed")
            # Metrics follow the offset commit, which comes after the state's commit.
            if state == "completed" and counted:
                break
            await asyncio.sleep(0.1)
        assert state == "completed"
        assert _value(metrics, "retention_acks_total", service="billing", status="completed") == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await engine.dispose()


async def test_acks_complete_while_housekeeping_is_stuck(
    database: str, topics: KafkaSettings
) -> None:
    # run_forever's two loops: a housekeeping pass that never ends (a reminder publish
    # hanging on the broker, a tracking pass waiting for a lock) holds up no ack batch.
    clock = FrozenClock(T0)
    tracker, engine, _ = make_tracker(
        database, topics, clock, services=[keys.declared("billing", {"user": ["delete"]})]
    )
    stuck = asyncio.Event()

    async def housekeeping() -> None:
        stuck.set()
        await asyncio.Event().wait()

    tracker.housekeeping = housekeeping  # type: ignore[method-assign]
    [event] = await insert_published(engine, ["8"], published_at=T0)
    stop = asyncio.Event()
    task = asyncio.create_task(tracker.run_forever(stop))
    try:
        await asyncio.wait_for(stuck.wait(), 30)
        await produce(topics, topics.topics.acks, [ack(event, "billing", "8", T0)])
        state = None
        for _ in range(100):
            async with engine.connect() as conn:
                state = await conn.scalar(
                    select(event_status.c.state).where(event_status.c.event_id == event)
                )
            if state == "completed":
                break
            await asyncio.sleep(0.1)
        # Never tracked by a pass: the ack batch tracked its event itself.
        assert state == "completed"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await engine.dispose()


async def test_reminders_never_republish_for_an_entity_held_now(env: Env) -> None:
    await env.declare(*SERVICES)
    clock, tracker = env.clock, env.tracker
    events = await env.publish(3, T0)
    await tracker.track_published()
    held_event, held_id = events[0]

    # A hold put on one entity after its purge, while its event waits for acks.
    clock.set(T0 + timedelta(minutes=30))
    types = EntityTypes({env.entity_type: (IdForm(IdKind.TEXT),)})
    async with env.engine.begin() as conn:
        hold = await create_hold(
            conn,
            entities=[f"{env.entity_type}:{held_id}"],
            types=types,
            reason="subpoena",
            created_by="legal",
            now=clock.now(),
        )

    async def shown_states() -> list[str]:
        async with env.engine.connect() as conn:
            found = [await queries.event_status_of(conn, e, now=clock.now()) for e, _ in events]
        return [f["state"] if f else "missing" for f in found]

    assert await shown_states() == ["held", "pending", "pending"]
    clock.set(T0 + timedelta(hours=1))
    assert await tracker.send_reminders() == 2
    republished = await _read_all(env.kafka, env.kafka.topics.events, 2)
    assert {decode(RetentionEvent, m.value).event_id for m in republished} == {
        e for e, _ in events[1:]
    }
    async with env.engine.connect() as conn:
        rows = await conn.execute(select(event_status.c.event_id, event_status.c.reminders_sent))
        sent = {event_id: count for event_id, count in rows}
    assert sent[held_event] == 0

    # Released: the held event's reminder resumes one interval after it was put off.
    clock.set(T0 + timedelta(hours=1, minutes=30))
    async with env.engine.begin() as conn:
        await release_hold(conn, hold.id, by="legal", now=clock.now())
    assert await shown_states() == ["pending"] * 3
    clock.set(T0 + timedelta(hours=2))
    assert await tracker.send_reminders() == 1


async def test_an_event_with_nothing_left_open_leaves_the_schedule(env: Env) -> None:
    # Slow reminders never end on their own, so an event left open with no expected ack
    # still open (all answered, or waived) must leave the schedule, not be picked forever.
    await env.declare(*SERVICES)
    clock, tracker = env.clock, env.tracker
    events = await env.publish(2, T0)
    await tracker.track_published()
    settled, _ = events[0]
    async with env.engine.begin() as conn:
        await conn.execute(
            update(expected_acks)
            .where(expected_acks.c.event_id == settled)
            .values(status="completed")
        )
    clock.set(T0 + timedelta(hours=1))
    assert await tracker.send_reminders() == 1
    async with env.engine.connect() as conn:
        rows = await conn.execute(
            select(
                event_status.c.event_id,
                event_status.c.reminders_sent,
                event_status.c.next_reminder_at,
            ).where(event_status.c.event_id.in_([e for e, _ in events]))
        )
        schedule = {row.event_id: (row.reminders_sent, row.next_reminder_at) for row in rows}
    assert schedule[settled] == (0, None)
    assert schedule[events[1][0]] == (1, clock.now() + timedelta(hours=2))
    clock.advance(timedelta(days=10))
    assert await tracker.send_reminders() == 1


async def _until_records(read: Any) -> None:
    for _ in range(100):
        if await read(timeout_s=0.2):
            return


async def test_a_batch_that_fails_anywhere_is_read_again_not_dropped(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 14: an exception out of decoding (an overflowing timestamp) left the fetched
    # ack batch behind without a rewind; the registry consumer had no rewind at all.
    await env.declare(*SERVICES)
    events = await env.publish(2, T0)
    await env.tracker.track_published()

    def broken(model: Any, raw: bytes | None) -> Any:
        raise RuntimeError("a bug while decoding")

    monkeypatch.setattr(tracker_module, "decode", broken)
    late = registration("late-service", T0, env.entity_type)
    await produce(env.kafka, env.kafka.topics.services, [late])
    t = T0 + timedelta(minutes=1)
    acks = [ack(e, s, i, t, entity_type=env.entity_type) for e, i in events for s in SERVICES]
    await produce(env.kafka, env.kafka.topics.acks, acks)
    for read in (env.tracker.consume_acks, env.tracker.poll_registry):
        with pytest.raises(RuntimeError, match="a bug while decoding"):
            await _until_records(read)

    monkeypatch.undo()
    await drain(env.tracker, len(acks))
    assert await env.states(events) == ["completed"] * 2
    assert await env.tracker.poll_registry(timeout_s=2.0) == 1


async def test_null_header_values_are_refused_not_a_crash(env: Env) -> None:
    """A Kafka header may be null: a forged ack with a null signature, and a poison record
    with null headers, are a rejection and a dead letter, and the genuine ack still counts."""
    await env.declare("billing")
    [(event, entity)] = await env.publish(1, T0)
    await env.tracker.track_published()
    genuine = ack(event, "billing", entity, T0 + timedelta(minutes=1), entity_type=env.entity_type)
    key, value = genuine.key.encode(), encode(genuine)
    producer = AIOKafkaProducer(**env.kafka.client_kwargs())
    await producer.start()
    try:
        for headers in (
            [(SIGNATURE_HEADER, None)],
            [*keys.signer("billing").sign_record(key, value), (PROOF_HEADER, None)],
        ):
            await producer.send_and_wait(env.kafka.topics.acks, value, key=key, headers=headers)
        await producer.send_and_wait(
            env.kafka.topics.acks, b"not json", key=b"k", headers=[("x", None)]
        )
    finally:
        await producer.stop()
    await drain(env.tracker, 3)
    assert await env.states([(event, entity)]) == ["pending"]
    assert _value(env.metrics, "retention_acks_rejected_total", reason="bad_signature") == 2
    assert _value(env.metrics, "retention_acks_rejected_total", reason="malformed") == 1
    [dead] = await _read_all(env.kafka, env.kafka.topics.dlq, 1)
    assert dict(dead.headers)["x"] == b""  # type: ignore[attr-defined]

    await produce(env.kafka, env.kafka.topics.acks, [genuine])
    await drain(env.tracker, 1)
    assert await env.states([(event, entity)]) == ["completed"]


async def test_an_ack_recorded_meanwhile_fails_the_batch_instead_of_auditing_it_twice(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ledger finds which records are new before it locks the audit chain; a record
    # another replica wrote in between must not be audited as new by this batch too.
    await env.declare(*SERVICES)
    events = await env.publish(2, T0)
    await env.tracker.track_published()
    t = T0 + timedelta(minutes=1)
    acks = [ack(e, s, i, t, entity_type=env.entity_type) for e, i in events for s in SERVICES]
    await produce(env.kafka, env.kafka.topics.acks, acks)
    await drain(env.tracker, len(acks))
    async with env.engine.connect() as conn:
        audited = len((await conn.execute(select(audit_log.c.seq))).all())

    async def nothing_recorded(*_: object) -> tuple[set[Any], set[Any]]:
        return set(), set()

    monkeypatch.setattr(ledger, "_recorded", nothing_recorded)
    await produce(env.kafka, env.kafka.topics.acks, acks)  # re-sent: new offsets, same acks
    # The ledger's unique keys refuse the rows; the batch is rolled back, to be read again.
    with pytest.raises(IntegrityError, match="duplicate key"):
        await _until_records(env.tracker.consume_acks)

    monkeypatch.undo()
    await drain(env.tracker, len(acks))
    async with env.engine.connect() as conn:
        accepted = await conn.execute(
            select(ack_ledger.c.id).where(
                ack_ledger.c.event_id.in_([e for e, _ in events]), ack_ledger.c.accepted
            )
        )
        assert len(accepted.all()) == len(acks)
        # The re-sent batch added no audit entry: nothing in it was new.
        assert len((await conn.execute(select(audit_log.c.seq))).all()) == audited
        assert (await audit.verify(conn))[1] is None
    assert await env.states(events) == ["completed"] * 2


async def test_an_overtaken_event_is_tracked_apart_and_stays_tracked_if_the_batch_fails(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The batch's transaction finds the event untracked and rolls back (`Overtaken`); the
    # event is tracked in a transaction of its own, which a failure of the batch's
    # second try does not undo; the batch is read again and completes it.
    await env.declare("billing")
    [(event, entity)] = await env.publish(1, T0)
    genuine = ack(event, "billing", entity, T0 + timedelta(minutes=1), entity_type=env.entity_type)
    await produce(env.kafka, env.kafka.topics.acks, [genuine])
    apply_acks = ledger.apply_acks
    tries: list[bool] = []

    async def fail_once_tracked(*args: Any, **kwargs: Any) -> ledger.LedgerOutcome:
        tries.append(kwargs["track_missing"])
        if kwargs["track_missing"]:
            raise ConnectionResetError("database gone")
        return await apply_acks(*args, **kwargs)

    monkeypatch.setattr(ledger, "apply_acks", fail_once_tracked)
    with pytest.raises(ConnectionResetError):
        await _until_records(env.tracker.consume_acks)
    assert tries == [False, True]
    assert await env.states([(event, entity)]) == ["pending"]

    monkeypatch.undo()
    await drain(env.tracker, 1)
    assert await env.states([(event, entity)]) == ["completed"]
    async with env.engine.connect() as conn:
        assert (await audit.verify(conn))[1] is None


async def test_a_connection_learns_the_bound_types_before_any_lock(env: Env) -> None:
    # Ack batches and tracking passes bind these with the audit chain locked: a type
    # looked up in the catalog there is a catalog query every other writer waits for.
    engine = make_engine(env.engine.url.render_as_string(hide_password=False), pool_size=1)
    ledger.learn_bound_types(engine)
    ledger.learn_bound_types(engine)  # once per engine, however many trackers share it
    types = ("retention_ack_row_us", "retention_ack_change_us", "uuid", "timestamptz", "interval")
    try:
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            ran: list[str] = []
            raw.add_query_logger(lambda record: ran.append(record.query))
            casts = ", ".join(f"CAST(:p{n} AS {t}[])" for n, t in enumerate(types))
            await conn.execute(text(f"SELECT {casts}"), {f"p{n}": [] for n in range(len(types))})
            await conn.rollback()
        assert ran
        assert not [q for q in ran if "pg_catalog" in q or "typeinfo" in q]
    finally:
        await engine.dispose()


async def test_a_database_not_yet_upgraded_fails_only_the_tracker_s_statements() -> None:
    # `serve` shares one engine between the API, relay, scheduler and tracker: a
    # database one migration behind the code must not fail every checkout.
    url = await infra.create_database(infra.database_url(), "tracker_types_missing")
    engine = make_engine(url, pool_size=1)
    try:
        await upgrade(url, "0033_verify_findings_index")
        ledger.learn_bound_types(engine)
        with capture_logs() as logs:
            for _ in range(2):
                async with engine.connect() as conn:
                    assert await conn.scalar(text("SELECT 1")) == 1
        warned = [e for e in logs if e["event"] == "tracker_types_missing"]
        assert [(e["types"], e["migrations"]) for e in warned] == [
            (["retention_ack_change_us", "retention_ack_row_us"], ["0034_ack_times_us"])
        ]
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError, match="retention_ack_row_us"):
                await conn.execute(text("SELECT CAST(:p AS retention_ack_row_us[])"), {"p": []})
        await upgrade(url)
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            ran: list[str] = []
            raw.add_query_logger(lambda record: ran.append(record.query))
            await conn.execute(text("SELECT CAST(:p AS retention_ack_row_us[])"), {"p": []})
        # The next checkout learned the type: binding it looked nothing up.
        assert ran
        assert not [q for q in ran if "pg_catalog" in q or "typeinfo" in q]
    finally:
        await engine.dispose()
        await infra.drop_database(url)


async def test_the_tracker_says_how_many_of_its_types_are_missing_until_they_exist(
    topics: KafkaSettings,
) -> None:
    """`retention_tracker_types_missing` follows the database from the tracker itself (at
    start, and when a batch fails on a missing type), not only from /healthz calls."""
    url = await infra.create_database(infra.database_url(), "tracker_types_gauge")
    tracker, engine, metrics = make_tracker(url, topics, FrozenClock(T0), services=[])
    try:
        await upgrade(url, "0033_verify_findings_index")
        await tracker.start()
        producer = AIOKafkaProducer(**topics.client_kwargs())
        await producer.start()
        try:
            await producer.send_and_wait(topics.topics.acks, b"not json", key=b"k")
        finally:
            await producer.stop()
        assert _value(metrics, "retention_tracker_types_missing") == 0  # not looked yet
        with pytest.raises(DBAPIError, match="retention_ack_row_us"):
            await tracker.consume_acks(timeout_s=10)
        assert _value(metrics, "retention_tracker_types_missing") == 2
        await upgrade(url)
        assert await tracker.consume_acks(timeout_s=10) is not None  # the batch again
        assert _value(metrics, "retention_tracker_types_missing") == 0
    finally:
        await tracker.stop()
        await engine.dispose()
        await infra.drop_database(url)
