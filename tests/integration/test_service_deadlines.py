"""A declared service's own `completion_deadline` (SPEC §9): fixed per expected ack when the
event is tracked, and applied by escalation, the overdue list, the per-service counts, the
entity view and the overdue gauge, on the real database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.outbox.events import event_id as nth_event_id
from coordinator.store.tables import audit_log, expected_acks, outbox_batches
from coordinator.tracking import deadlines, queries
from coordinator.tracking.overdue import overdue_page
from schemas import EventReason, KafkaSettings
from tests import keys
from tests.integration.operations_support import event_states
from tests.integration.tracking_support import insert_published, make_tracker

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


async def _complete(engine: AsyncEngine, event_id: uuid.UUID, *services: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(expected_acks)
            .where(expected_acks.c.event_id == event_id, expected_acks.c.service.in_(services))
            .values(status="completed", acknowledged_at=T0 + DAY)
        )


async def _last_overdue_audit(engine: AsyncEngine) -> dict[str, list[str]]:
    async with engine.connect() as conn:
        data = (
            await conn.execute(
                select(audit_log.c.data)
                .where(audit_log.c.action == "events_overdue")
                .order_by(audit_log.c.seq.desc())
                .limit(1)
            )
        ).scalar_one()
    return {e["event_id"]: e["missing"] for e in data["events"]}


async def test_each_service_is_late_by_its_own_deadline(
    coordinator_db: str, kafka_settings: KafkaSettings
) -> None:
    clock = FrozenClock(T0 + timedelta(hours=1))
    # billing must answer within 7 days, crm keeps the policy's 30, archive has 60.
    services = [
        keys.declared("billing", {"user": ["delete"]}).model_copy(
            update={"completion_deadline": 7 * DAY}
        ),
        keys.declared("crm", {"user": ["delete"]}),
        keys.declared("archive", {"user": ["delete"]}).model_copy(
            update={"completion_deadline": 60 * DAY}
        ),
    ]
    tracker, engine, _ = make_tracker(coordinator_db, kafka_settings, clock, services=services)
    try:
        tag = uuid.uuid4().hex[:8]
        events = await insert_published(
            engine, [f"{tag}-{n}" for n in range(4)], published_at=T0, entity_type="user"
        )
        first, second, third, fourth = events
        assert await tracker.track_published() == 4

        # Fixed at the snapshot, counted from publication; NULL for the event's own.
        async with engine.connect() as conn:
            own = {
                (row.event_id, row.service): row.deadline
                for row in await conn.execute(select(expected_acks))
            }
        assert {own[(first, s)] for s in ("billing", "crm", "archive")} == {
            T0 + 7 * DAY,
            None,
            T0 + 60 * DAY,
        }
        assert own[(first, "crm")] is None

        await _complete(engine, first, "billing")
        await _complete(engine, fourth, "billing", "crm")

        # Day 7: billing is late where it has not answered; nobody else is late yet.
        clock.set(T0 + 7 * DAY + timedelta(seconds=1))
        assert await tracker.escalate_overdue() == 2
        assert await event_states(engine, events) == ["pending", "overdue", "overdue", "pending"]
        assert await _last_overdue_audit(engine) == {
            str(second): ["billing"],
            str(third): ["billing"],
        }
        async with engine.connect() as conn:
            page = await overdue_page(conn, service=None, after=None, limit=10, now=clock.now())
            completion = {
                s["service"]: s for s in await queries.services_completion(conn, now=clock.now())
            }
            view = await queries.event_status_of(conn, second, now=clock.now())
            gauges = await deadlines.open_acks_by_service(conn, now=clock.now())
        assert sorted((i["event_id"], i["service"]) for i in page.items) == sorted(
            [(str(second), "billing"), (str(third), "billing")]
        )
        assert {i["deadline"] for i in page.items} == {"2026-03-09T09:00:00.000000Z"}
        assert (completion["billing"]["overdue"], completion["billing"]["pending"]) == (2, 0)
        assert (completion["crm"]["overdue"], completion["crm"]["pending"]) == (0, 3)
        assert completion["archive"]["next_deadline"] == "2026-05-01T09:00:00.000000Z"
        assert view is not None
        assert {s["service"]: s["deadline"] for s in view["services"]} == {
            "archive": "2026-05-01T09:00:00.000000Z",
            "billing": "2026-03-09T09:00:00.000000Z",
            "crm": "2026-04-01T09:00:00.000000Z",  # the event's: published + 30 days
        }
        assert gauges == {"billing": (2, 2), "crm": (3, 0), "archive": (4, 0)}

        # Day 30: crm is late on the first event. The fourth waits only for archive, whose
        # 60 days are not over: past the event's deadline, yet not overdue.
        clock.set(T0 + 30 * DAY + timedelta(seconds=1))
        assert await tracker.escalate_overdue() == 1
        assert await event_states(engine, events) == ["overdue", "overdue", "overdue", "pending"]
        assert await _last_overdue_audit(engine) == {str(first): ["crm"]}
        async with engine.connect() as conn:
            archive = await overdue_page(
                conn, service="archive", after=None, limit=10, now=clock.now()
            )
        assert archive.items == []

        # Day 60: archive is late everywhere it has not answered.
        clock.set(T0 + 60 * DAY + timedelta(seconds=1))
        assert await tracker.escalate_overdue() == 1
        assert await event_states(engine, events) == ["overdue"] * 4
        assert await _last_overdue_audit(engine) == {str(fourth): ["archive"]}
        async with engine.connect() as conn:
            archive = await overdue_page(
                conn, service="archive", after=None, limit=10, now=clock.now()
            )
        assert len(archive.items) == 4
    finally:
        await tracker.stop()
        await engine.dispose()


async def test_an_erasure_requests_due_date_binds_every_service(
    coordinator_db: str, kafka_settings: KafkaSettings
) -> None:
    """A service's own deadline overrides the policy's, never an erasure request's legal
    due date: a service declared with 60 days is late at the request's due date."""
    clock = FrozenClock(T0 + timedelta(hours=1))
    services = [
        keys.declared("billing", {"user": ["delete"]}).model_copy(
            update={"completion_deadline": 7 * DAY}
        ),
        keys.declared("archive", {"user": ["delete"]}).model_copy(
            update={"completion_deadline": 60 * DAY}
        ),
    ]
    tracker, engine, _ = make_tracker(coordinator_db, kafka_settings, clock, services=services)
    try:
        tag = uuid.uuid4().hex[:8]
        [policy_event] = await insert_published(
            engine, [f"{tag}-policy"], published_at=T0, entity_type="user"
        )
        # Its own batch (insert_published writes one per call), made a request's.
        [request_event] = await insert_published(
            engine, [f"{tag}-request"], published_at=T0, entity_type="user"
        )
        async with engine.begin() as conn:
            await conn.execute(
                update(outbox_batches)
                .where(outbox_batches.c.id_base == nth_event_id(request_event, 0))
                .values(reason=EventReason.ERASURE_REQUEST.value, request_id=uuid.uuid4())
            )
        assert await tracker.track_published() == 2
        async with engine.connect() as conn:
            own = {
                (row.event_id, row.service): row.deadline
                for row in await conn.execute(
                    select(expected_acks).where(
                        expected_acks.c.event_id.in_([policy_event, request_event])
                    )
                )
            }
        assert own == {
            (policy_event, "billing"): T0 + 7 * DAY,
            (policy_event, "archive"): T0 + 60 * DAY,
            (request_event, "billing"): None,
            (request_event, "archive"): None,
        }
        await _complete(engine, request_event, "billing")

        # The request's due date (the event's deadline here): archive is late on the
        # request's event, not on the policy's.
        clock.set(T0 + 30 * DAY + timedelta(seconds=1))
        await tracker.escalate_overdue()
        assert await event_states(engine, [policy_event, request_event]) == ["overdue", "overdue"]
        async with engine.connect() as conn:
            archive = await overdue_page(
                conn, service="archive", after=None, limit=10, now=clock.now()
            )
        assert [i["event_id"] for i in archive.items] == [str(request_event)]
    finally:
        await tracker.stop()
        await engine.dispose()
