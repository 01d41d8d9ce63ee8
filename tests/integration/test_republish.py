"""Re-publishing on the real broker and database: an overdue event completes after a
republish to one service, repeats are absorbed by the service's idempotency store, held
entities are never sent, and every batch is audited with its actor."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import RetentionConsumer, RetentionEvent
from coordinator.clock import FrozenClock
from coordinator.evidence import audit
from coordinator.kafka.clients import KafkaPublisher
from coordinator.operations.republish import (
    REPUBLISH_HEADER,
    Outcome,
    Republisher,
    Selection,
    UnknownSelection,
)
from coordinator.outbox.lookup import events_by
from coordinator.purge.holds import EntityTypes, IdForm, IdKind, create_hold
from coordinator.store.migrate import upgrade
from coordinator.store.tables import audit_log, expected_acks
from schemas import KafkaSettings
from schemas.signing import Verifier
from tests import infra, keys
from tests.integration.operations_support import FAST, event_states
from tests.integration.tracking_support import ack, drain, insert_published, make_tracker, produce
from tests.sdk.kafka_io import read_topic

BOTH = ["delete", "anonymize"]


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[str]:
    url = await infra.create_database(postgres_url, "test_republish")
    await upgrade(url)
    yield url
    await infra.drop_database(url)


def counting_app(
    kafka: KafkaSettings, url: str, service: str, entity_type: str, calls: Counter[uuid.UUID]
) -> RetentionConsumer:
    app = RetentionConsumer(service, kafka=kafka, settings=FAST, database_url=url)

    @app.on_delete(entity_type)
    async def delete(event: RetentionEvent, conn: AsyncConnection) -> int:
        calls[event.event_id] += 1
        return 1

    return app


async def test_an_overdue_event_completes_after_a_republish_to_one_service(
    database: str, fresh_database: str, topics: KafkaSettings
) -> None:
    entity_type = f"user_{uuid.uuid4().hex[:8]}"
    fixed, other = f"fixed-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"
    t0 = datetime.now(UTC)
    clock = FrozenClock(t0)
    tracker, engine, _ = make_tracker(
        database,
        topics,
        clock,
        services=[
            keys.declared(fixed, {entity_type: BOTH}),
            keys.declared(other, {entity_type: BOTH, "invoice": BOTH}),
        ],
    )
    await tracker.start()
    calls: Counter[uuid.UUID] = Counter()
    app = counting_app(topics, fresh_database, fixed, entity_type, calls)
    publisher = KafkaPublisher(topics)
    await publisher.start()
    republisher = Republisher(
        engine,
        publisher,
        topic=topics.topics.events,
        signer=keys.signer(keys.COORDINATOR),
        clock=clock,
    )
    try:
        # Three events `fixed` never acted on (its handler was broken then, and the records
        # are long gone from Kafka), and one only `other` is expected for.
        ids = ["u1", "u2", "u3"]
        events = await insert_published(
            engine,
            ids,
            published_at=t0,
            entity_type=entity_type,
            completion_deadline=timedelta(days=1),
        )
        [invoice] = await insert_published(engine, ["i1"], published_at=t0, entity_type="invoice")
        assert await tracker.track_published() == 4
        await produce(
            topics,
            topics.topics.acks,
            [
                ack(e, other, i, t0, entity_type=entity_type)
                for e, i in zip(events, ids, strict=True)
            ],
        )
        await drain(tracker, 3)
        clock.advance(timedelta(days=2))
        assert await tracker.escalate_overdue() == 3
        assert await event_states(engine, events) == ["overdue"] * 3

        # Read before the hold exists, as a batch in flight would have been.
        async with engine.connect() as conn:
            before_hold = await events_by(conn, now=clock.now(), event_ids=[events[2]])
        assert [s.held for s in before_hold] == [False]
        types = EntityTypes({entity_type: (IdForm(IdKind.TEXT),)})
        async with engine.begin() as conn:
            await create_hold(
                conn,
                entities=[f"{entity_type}:u3"],
                types=types,
                reason="subpoena",
                created_by="legal",
                now=clock.now(),
            )

        await app.start()
        one = await republisher.republish(
            Selection(event_id=events[0], service=fixed), actor="ops-token"
        )
        by_entity = await republisher.republish(
            Selection(entity=(entity_type, "u2"), service=fixed), actor="ops-token"
        )
        held = await republisher.republish(
            Selection(entity=(entity_type, "u3"), service=fixed), actor="ops-token"
        )
        assert (one.sent, one.held) == ([events[0]], [])
        assert (by_entity.sent, by_entity.held) == ([events[1]], [])
        assert (held.sent, held.held) == ([], [events[2]])
        assert (held.sent_total, held.held_total, held.truncated) == (0, 1, False)
        # The batch read before the hold is checked again when it is sent.
        late = Outcome()
        await republisher.send(
            before_hold, late, actor="ops-token", reason="republish", audit_data={}
        )
        assert (late.sent, late.held) == ([], [events[2]])
        with pytest.raises(UnknownSelection):
            await republisher.republish(Selection(event_id=invoice, service=fixed), actor="x")
        with pytest.raises(UnknownSelection):
            await republisher.republish(Selection(event_id=uuid.uuid4()), actor="x")

        await drain(tracker, 2)
        assert await event_states(engine, events) == ["completed", "completed", "overdue"]
        async with engine.connect() as conn:
            statuses = dict(
                (
                    await conn.execute(
                        select(expected_acks.c.service, expected_acks.c.status).where(
                            expected_acks.c.event_id == events[0]
                        )
                    )
                ).all()
            )
        assert statuses == {fixed: "completed", other: "completed"}

        # Sent again: the service's idempotency store answers; the handler never runs twice.
        await republisher.republish(Selection(event_id=events[0]), actor="ops-token")
        await drain(tracker, 1)
        assert calls == Counter({events[0]: 1, events[1]: 1})
        assert await event_states(engine, events) == ["completed", "completed", "overdue"]

        # What went out is the relay's record: same id, same bytes, a valid coordinator
        # signature, and the header saying why.
        records = await read_topic(topics, topics.topics.events, expect=3)
        verifier = Verifier([keys.private_key(keys.COORDINATOR).public_key()])
        for record in records:
            assert verifier.verify(record.key, record.value, record.headers).valid
            assert (REPUBLISH_HEADER, b"republish") in record.headers
        assert Counter(dict(r.headers)["event_id"] for r in records) == Counter(
            {str(events[0]).encode(): 2, str(events[1]).encode(): 1}
        )

        async with engine.connect() as conn:
            entries = (
                await conn.execute(
                    select(audit_log.c.actor, audit_log.c.data)
                    .where(audit_log.c.action == audit.AuditAction.EVENTS_REPUBLISHED.value)
                    .order_by(audit_log.c.seq)
                )
            ).all()
            assert (await audit.verify(conn))[1] is None
        assert [(a, d["event_ids"]) for a, d in entries] == [
            ("ops-token", [str(events[0])]),
            ("ops-token", [str(events[1])]),
            ("ops-token", [str(events[0])]),
        ]
        assert entries[1].data["entity"] == f"{entity_type}:u2"
        assert entries[0].data["service"] == fixed
    finally:
        await app.stop()
        await publisher.stop()
        await tracker.stop()
        await engine.dispose()
