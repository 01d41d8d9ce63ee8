"""Holds reach services (SPEC §11) on the real broker and database.

A service that lags behind the fan-out consumes an erasure request's events only after
a subject hold was created: it acks them `held` and deletes nothing; once the hold is
released the coordinator re-publishes them and the request completes. Two holds on one
entity: releasing one leaves it held. Forged hold records change nothing.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy import func, select, text

from consumer_sdk import RetentionEvent
from consumer_sdk._internal.holds import HoldReader, HoldTable, kafka_hold_source
from consumer_sdk._internal.trust import Trust
from consumer_sdk.metrics import ConsumerMetrics
from coordinator.clock import FrozenClock, SystemClock
from coordinator.erasure.certificate import certificate, render_html
from coordinator.erasure.due import Regulation
from coordinator.erasure.requests import Status, get_request
from coordinator.kafka.memory import MemoryKafka, MemoryPublisher
from coordinator.metrics import Metrics
from coordinator.outbox.lookup import EVENTS
from coordinator.outbox.relay import OutboxRelay
from coordinator.policy.model import parse_policies
from coordinator.purge.hold_topic import publish_pending
from coordinator.purge.holds import create_hold, entity_types, release_hold
from coordinator.purge.runner import Runner
from coordinator.settings import RelaySettings
from coordinator.store.tables import event_status, expected_acks
from coordinator.tracking import queries
from coordinator.tracking.tracker import Tracker
from schemas import AckStatus, EventType, HoldRecord, RetentionAck, decode, encode
from schemas.signing import SignatureSettings, key_id
from tests import keys
from tests.integration import test_erasure_requests as erasure
from tests.integration.test_erasure_requests import POLICIES, Env, _rows, _service, _until
from tests.integration.tracking_support import make_tracker, produce

env = erasure.env
"""The erasure tests' world: mapped tables, users 41, 42 and 44 (44 held), one service."""


async def _hold(env: Env, entity: str, hold_id: str) -> None:
    async with env.engine.begin() as conn:
        await create_hold(
            conn,
            types=await entity_types(conn, env.policy_set),
            entities=[entity],
            reason=f"litigation {hold_id}",
            created_by="legal",
            now=datetime.now(UTC),
            hold_id=hold_id,
        )


async def _release(env: Env, hold_id: str) -> None:
    async with env.engine.begin() as conn:
        await release_hold(conn, hold_id, by="legal", now=datetime.now(UTC))


async def _states(env: Env, request_id: uuid.UUID) -> dict[str, int]:
    async with env.engine.connect() as conn:
        rows = await conn.execute(
            select(expected_acks.c.status, func.count())
            .select_from(EVENTS)
            .join(expected_acks, expected_acks.c.event_id == EVENTS.c.event_id)
            .where(EVENTS.c.request_id == request_id)
            .group_by(expected_acks.c.status)
        )
        return {status: n for status, n in rows}


async def _event_states(env: Env, request_id: uuid.UUID) -> set[str]:
    async with env.engine.connect() as conn:
        rows = await conn.execute(
            select(event_status.c.state)
            .select_from(EVENTS)
            .join(event_status, event_status.c.event_id == EVENTS.c.event_id)
            .where(EVENTS.c.request_id == request_id)
        )
        return set(rows.scalars())


async def test_a_lagging_service_acks_held_and_acts_after_the_release(env: Env) -> None:
    seen: list[RetentionEvent] = []
    tracker: Tracker
    tracker, tracker_engine, metrics = make_tracker(
        env.url, env.kafka, SystemClock(), services=parse_policies(POLICIES).services
    )
    await tracker.start()
    app = _service(env.kafka, seen)
    try:
        request, _ = await env.erasure.create(
            subject="user:42",
            regulation=Regulation.GDPR,
            received_at=datetime(2026, 1, 31, 9, 0, tzinfo=UTC),  # long overdue
            reference="lagging-42",
            by="dpo@example.com",
        )
        assert request.status is Status.IN_PROGRESS
        relay = OutboxRelay(env.engine, env.kafka, settings=RelaySettings(), metrics=Metrics())
        async with relay:
            assert await relay.drain(timeout_s=60) == 6
        await tracker.track_published()
        assert await tracker.publish_holds() == 1  # the fixture's hold on user 44

        # Published, not yet consumed: the subject is put on hold now.
        await _hold(env, "user:42", "dispute-42")
        assert await tracker.publish_holds() == 1

        # The lagging service starts only now; it reads the holds table first.
        await app.start()

        async def all_held() -> bool:
            await tracker.consume_acks(timeout_s=0.2)
            return (await _states(env, request.id)).get("held") == 6

        await _until(all_held, "six held acks")
        assert seen == []  # nothing executed
        # Held is its own state: neither overdue (the deadline passed long ago) nor done.
        await tracker.escalate_overdue()
        await tracker.send_reminders()
        assert await _event_states(env, request.id) == {"held"}
        # The request is on hold, naming the hold; local work stays done.
        await env.erasure.advance()
        async with env.engine.connect() as conn:
            on_hold = await get_request(conn, request.id)
        assert (on_hold.status, on_hold.holds) == (Status.ON_HOLD, ("dispute-42",))
        async with env.engine.connect() as conn:
            held_now = await certificate(conn, request.id, now=datetime.now(UTC))
            # The console's services page and /v1/completion/services: held, not overdue.
            (billing,) = await queries.services_completion(conn, now=datetime.now(UTC))
            listed = await queries.service_events(
                conn, "billing", state="held", now=datetime.now(UTC), limit=10
            )
        assert (billing["held"], billing["overdue"], billing["pending"]) == (6, 0, 0)
        assert len(listed) == 6
        assert [(x["service"], x["held"], x["pending"]) for x in held_now["services"]] == [
            ("billing", 6, 0)
        ]
        sample = metrics.registry.get_sample_value
        assert sample("retention_acks_total", {"service": "billing", "status": "held"}) == 6
        # Still held: nothing is re-published while the hold lasts.
        assert await tracker.republish_released() == 0

        await _release(env, "dispute-42")
        # The tombstone goes out first, then the held events, same ids.
        assert await tracker.republish_released() == 0
        assert await tracker.publish_holds() == 1
        assert await tracker.republish_released() == 6
        assert (await _states(env, request.id)).get("held") is None
        # The next status pass executes it again (nothing left locally) and it goes on.
        await env.erasure.advance()
        async with env.engine.connect() as conn:
            resumed = await get_request(conn, request.id)
        assert resumed.status in (Status.IN_PROGRESS, Status.COMPLETED)
        assert resumed.holds == ()

        async def completed() -> bool:
            await tracker.track_published()
            await tracker.consume_acks(timeout_s=0.2)
            await env.erasure.advance()
            async with env.engine.connect() as conn:
                return (await get_request(conn, request.id)).status is Status.COMPLETED

        await _until(completed, "the request to complete")
        published = {e.event_id for e in seen}
        async with env.engine.connect() as conn:
            ids = await conn.execute(
                select(EVENTS.c.event_id).where(EVENTS.c.request_id == request.id)
            )
            assert published == set(ids.scalars())
        assert await _event_states(env, request.id) == {"completed"}
        async with env.engine.connect() as conn:
            document = await certificate(conn, request.id, now=datetime.now(UTC))
        (billing,) = document["services"]
        service_key = key_id(keys.private_key(keys.SERVICE).public_key())
        assert (billing["acknowledged"], billing["held"], billing["key_ids"]) == (
            6,
            0,
            [service_key],
        )
        assert service_key in render_html(document)
        async with env.engine.connect() as conn:
            audited = await conn.execute(
                text("SELECT count(*) FROM audit_log WHERE action = 'held_events_republished'")
            )
            assert audited.scalar_one() == 1
    finally:
        await tracker.stop()
        await tracker_engine.dispose()
        await app.stop()


def _event(entity: str, subject: str | None = None) -> RetentionEvent:
    entity_type, _, entity_id = entity.partition(":")
    now = datetime.now(UTC)
    return RetentionEvent(
        event_id=uuid.uuid4(),
        type=EventType.DELETE,
        entity_type=entity_type,
        entity_id=entity_id,
        policy="p",
        legal_basis="b",
        initiated_at=now,
        deadline=now,
        subject=subject,
    )


async def test_two_holds_on_one_entity_releasing_one_keeps_it_held(env: Env) -> None:
    tracker, tracker_engine, _ = make_tracker(
        env.url, env.kafka, SystemClock(), services=parse_policies(POLICIES).services
    )
    await tracker.start()
    consumer_metrics = ConsumerMetrics()
    trust = Trust.from_settings("billing", SignatureSettings(), consumer_metrics)
    reader = HoldReader(kafka_hold_source(env.kafka), HoldTable(trust), read_timeout_s=30)
    try:
        await _hold(env, "user:41", "case-a")
        await _hold(env, "user:41", "case-b")
        assert await tracker.publish_holds() == 2  # and the fixture's hold on user 44
        await _release(env, "case-a")
        assert await tracker.publish_holds() == 1

        await reader.start(timeout_s=30)
        session = _event("session:7", subject="user:41")
        assert reader.table.holds_on(_event("user:41")) == ("case-b",)
        assert reader.table.holds_on(session) == ("case-b",)
        assert reader.table.holds_on(_event("session:7")) == ()

        # Forged records, unsigned or signed by a service key: a tombstone that would lift
        # the hold, and a set that would invent one. Both ignored and counted.
        forged_set = HoldRecord(
            entity_type="user", entity_id="41", holds=["x"], updated_at=datetime.now(UTC)
        )
        topic = env.kafka.topics.holds
        await produce(env.kafka, topic, [(b"user:41", None)], signer=None)
        await produce(env.kafka, topic, [(b"user:41", encode(forged_set))])
        await reader.catch_up()
        assert reader.table.holds_on(session) == ("case-b",)
        sample = consumer_metrics.registry.get_sample_value
        rejected = "retention_consumer_hold_records_rejected_total"
        assert sample(rejected, {"service": "billing", "reason": "unsigned"}) == 1
        assert sample(rejected, {"service": "billing", "reason": "unknown_key"}) == 1

        # A genuine record whose value names another entity than its key is refused too.
        mismatched = keys.signer(keys.COORDINATOR)
        await produce(env.kafka, topic, [(b"user:99", encode(forged_set))], signer=mismatched)
        await reader.catch_up()
        assert reader.table.holds_on(_event("user:99")) == ()
        assert sample(rejected, {"service": "billing", "reason": "key_mismatch"}) == 1

        await _release(env, "case-b")
        assert await tracker.publish_holds() == 1
        await reader.catch_up()
        assert reader.table.holds_on(session) == ()
        assert len(reader.table) == 1  # the fixture's hold on user 44
    finally:
        await reader.stop()
        await tracker.stop()
        await tracker_engine.dispose()


async def test_a_service_acks_held_while_one_of_two_holds_remains(env: Env) -> None:
    """Through a running service: after one of two holds is released, an event for the
    entity is still acked `held` and not executed."""
    seen: list[RetentionEvent] = []
    tracker, tracker_engine, _ = make_tracker(
        env.url, env.kafka, SystemClock(), services=parse_policies(POLICIES).services
    )
    await tracker.start()
    app = _service(env.kafka, seen)
    try:
        await _hold(env, "user:41", "case-a")
        await _hold(env, "user:41", "case-b")
        await _release(env, "case-a")
        assert await tracker.publish_holds() == 2  # and the fixture's hold on user 44
        await app.start()
        request, _ = await env.erasure.create(
            subject="user:41",
            regulation=Regulation.CCPA,
            received_at=None,
            reference=None,
            by="dpo@example.com",
        )
        # Held locally too: no row touched, no event written for the held subject.
        assert request.status is Status.ON_HOLD
        assert request.holds == ("case-b",)
        assert len(await _rows(env.engine, "er_accounts", "id", 41)) == 1
        event = _event("user:41")
        await produce(
            env.kafka,
            env.kafka.topics.events,
            [(event.key.encode(), encode(event))],
            signer=keys.signer(keys.COORDINATOR),
        )

        acks: list[RetentionAck] = []
        consumer = AIOKafkaConsumer(
            env.kafka.topics.acks, **env.kafka.client_kwargs(), auto_offset_reset="earliest"
        )
        await consumer.start()
        try:

            async def acked() -> bool:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    acks.extend(decode(RetentionAck, r.value) for r in records)
                return any(a.event_id == event.event_id for a in acks)

            await _until(acked, "the service's ack")
        finally:
            await consumer.stop()
        (ack,) = [a for a in acks if a.event_id == event.event_id]
        assert (ack.status, ack.records_affected, ack.detail) == (
            AckStatus.HELD,
            0,
            "held by case-b",
        )
        assert seen == []
    finally:
        await tracker.stop()
        await tracker_engine.dispose()
        await app.stop()


async def test_a_locally_purged_entity_has_a_certificate_from_the_audit_chain(env: Env) -> None:
    """Sessions do not fan out: their certificate comes from the run log and the audit
    chain (the purge batch's seq and hash), with no event."""
    request, _ = await env.erasure.create(
        subject="user:41",
        regulation=Regulation.GDPR,
        received_at=None,
        reference=None,
        by="dpo@example.com",
    )
    assert await _rows(env.engine, "er_sessions", "user_id", 41) == []
    async with env.engine.connect() as conn:
        document = await queries.certificate(conn, "session", "410", now=datetime.now(UTC))
        assert document is not None
        (purge,) = document["local_purges"]
        stored = await conn.execute(
            text("SELECT hash, data FROM audit_log WHERE seq = :s"), {"s": purge["audit"]["seq"]}
        )
        digest, data = stored.one()
        assert await queries.certificate(conn, "session", "999999", now=datetime.now(UTC)) is None
    assert document["events"] == []
    assert document["complete"] is True
    assert (purge["policy"], purge["action"], purge["legal_basis"]) == (
        "sessions",
        "delete",
        "Legitimate interest",
    )
    assert (purge["trigger"], purge["request_id"], purge["fanned_out"]) == (
        "erasure_request",
        str(request.id),
        False,
    )
    assert purge["audit"]["hash"] == digest
    assert "410" in data["ids"]

    # A policy run's purge: the run log gives its trigger and legal basis.
    async with env.engine.begin() as conn:
        await conn.execute(text("UPDATE er_sessions SET created_at = now() - interval '400 days'"))
    report = await Runner(env.engine, env.policy_set, env.settings).run(only=["sessions_scrub"])
    async with env.engine.connect() as conn:
        document = await queries.certificate(conn, "session", "420", now=datetime.now(UTC))
    assert document is not None
    (scrubbed,) = document["local_purges"]
    assert (scrubbed["policy"], scrubbed["action"], scrubbed["legal_basis"]) == (
        "sessions_scrub",
        "anonymize",
        "Legitimate interest",
    )
    assert (scrubbed["trigger"], scrubbed["run_id"], scrubbed["request_id"]) == (
        "cli",
        str(report.run_id),
        None,
    )


async def test_an_expiry_and_a_crash_before_the_broker_acked_leave_nothing_unpublished(
    env: Env,
) -> None:
    """The queue is the holds topic's outbox: a publication the broker refused leaves it
    queued (published again, with the set of that moment); an expiry queues the entity by
    itself and publishes its tombstone."""
    kafka = MemoryKafka()
    publisher = MemoryPublisher(kafka)
    clock = FrozenClock(datetime.now(UTC))
    topic = env.kafka.topics.holds
    # The fixture's hold on user 44 is queued too; publish it out of the way.
    assert await publish_pending(env.engine, publisher, topic=topic, signer=None, clock=clock) == 1
    async with env.engine.begin() as conn:
        await create_hold(
            conn,
            types=await entity_types(conn, env.policy_set),
            entities=["user:41"],
            reason="until the audit ends",
            created_by="legal",
            now=clock.now(),
            expires_at=clock.now() + timedelta(hours=1),
            hold_id="audit-2026",
        )
    publisher.fail_with.append(ConnectionError("broker gone"))
    with pytest.raises(ConnectionError):
        await publish_pending(env.engine, publisher, topic=topic, signer=None, clock=clock)
    assert kafka.topics[topic][1:] == []
    assert await publish_pending(env.engine, publisher, topic=topic, signer=None, clock=clock) == 1
    (published,) = kafka.topics[topic][1:]
    record = decode(HoldRecord, published.value)
    assert (published.key, record.holds) == (b"user:41", ["audit-2026"])

    clock.advance(timedelta(hours=2))
    assert await publish_pending(env.engine, publisher, topic=topic, signer=None, clock=clock) == 1
    expired = kafka.topics[topic][-1]
    assert (expired.key, expired.value) == (b"user:41", None)
    # Once: the expiry is queued a single time.
    assert await publish_pending(env.engine, publisher, topic=topic, signer=None, clock=clock) == 0
