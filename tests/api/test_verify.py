"""SPEC §12 verification over HTTP: POST /v1/entities/{type}/{id}/verify needs `write`, asks
the services that acked a deletion, goes into the outbox as a `verify` event the tracker
never snapshots, and shows under /verifications (never among the entity's events)."""

from __future__ import annotations

import dataclasses
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.api import ApiContext
from coordinator.api.tokens import Scope
from coordinator.copies.verification import answers, request
from coordinator.copies.verification.request import sample_all
from coordinator.evidence.pseudonyms import Pepper
from coordinator.outbox.lookup import EVENTS, by_event_ids
from coordinator.policy.model import Policy
from coordinator.store.tables import (
    event_status,
    expected_acks,
    outbox_batches,
    outbox_marks,
    verifications,
)
from coordinator.tracking.ledger import ConsumedAck, apply_acks, lock_events, sorted_ids
from coordinator.tracking.snapshot import track_published
from schemas import AckStatus, RetentionAck
from tests.api.conftest import auth, make_client

NOW = datetime.now(UTC)


async def _completed_deletion(
    engine: AsyncEngine, entity_id: str, *, published: datetime = NOW, policy: str = "accounts"
) -> uuid.UUID:
    event_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            insert(event_status).values(
                event_id=event_id,
                policy=policy,
                event_type="delete",
                entity_type="user",
                entity_id=entity_id,
                initiated_at=NOW,
                published_at=published,
                deadline=NOW + timedelta(days=30),
                state="completed",
                expected=3,
                completed_at=NOW,
                tracked_at=NOW,
                updated_at=NOW,
            )
        )
        await conn.execute(
            insert(expected_acks),
            [
                {"event_id": event_id, "service": "billing", "status": "completed"},
                {"event_id": event_id, "service": "search", "status": "not_found"},
                # Waived: it never said the data was gone, so it is not asked.
                {"event_id": event_id, "service": "crm", "status": "waived"},
            ],
        )
    return event_id


async def _lock(
    conn: AsyncConnection, records: list[ConsumedAck], asked: set[uuid.UUID]
) -> list[uuid.UUID]:
    """Lock what the tracker locks before recording `records` (`asked`: the verify events
    they answer): the delete events answers and later deletes may change."""
    locked = sorted_ids(
        {
            *await answers.events_to_lock(conn, records, asked),
            *await answers.reopened_to_lock(conn, records, asked),
        }
    )
    await lock_events(conn, locked)
    return locked


async def test_on_demand_verify(
    ctx: ApiContext, tokens: dict[Scope, str], engine: AsyncEngine
) -> None:
    entity = f"api-{uuid.uuid4().hex[:8]}"
    path = f"/v1/entities/user/{entity}"
    async with make_client(ctx) as client:
        read = await client.post(f"{path}/verify", headers=auth(tokens[Scope.READ]))
        assert read.status_code == 403
        nothing = await client.post(f"{path}/verify", headers=auth(tokens[Scope.WRITE]))
        assert nothing.status_code == 409
        assert "nothing to verify" in nothing.json()["detail"]

        deletion = await _completed_deletion(engine, entity)
        created = await client.post(f"{path}/verify", headers=auth(tokens[Scope.WRITE]))
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["trigger"] == "on_demand"
        assert body["requested_by"] == "write-bot"
        assert body["outcome"] == "incomplete"
        assert [(a["service"], a["status"]) for a in body["services"]] == [
            ("billing", "pending"),
            ("search", "pending"),
        ]
        listed = await client.get(f"{path}/verifications", headers=auth(tokens[Scope.READ]))
        assert [v["event_id"] for v in listed.json()] == [body["event_id"]]
        # The entity's events are its deletions only.
        events = await client.get(path, headers=auth(tokens[Scope.READ]))
        assert [e["event_id"] for e in events.json()] == [str(deletion)]

    async with engine.begin() as conn:
        row = (
            await conn.execute(
                select(EVENTS.c.event_type, EVENTS.c.policy, EVENTS.c.fields).where(
                    by_event_ids([uuid.UUID(body["event_id"])])
                )
            )
        ).one()
        assert tuple(row) == ("verify", "on_demand", [])
        # Published or not, the tracker never follows it as a deletion to complete.
        await conn.execute(
            insert(outbox_marks).values(
                up_to=select(func.max(outbox_batches.c.seq)).scalar_subquery(),
                published_at=NOW,
                events=1,
            )
        )
        await track_published(
            conn, declared=[], now=NOW, reminder_interval=timedelta(hours=1), limit=1000
        )
        tracked = await conn.scalar(
            select(event_status.c.event_id).where(
                event_status.c.event_id == uuid.UUID(body["event_id"])
            )
        )
        assert tracked is None


async def test_answers_reopen_the_deletion_and_show_in_the_console(
    ctx: ApiContext, tokens: dict[Scope, str], engine: AsyncEngine
) -> None:
    entity = f"ans-{uuid.uuid4().hex[:8]}"
    deletion = await _completed_deletion(engine, entity)
    async with make_client(ctx) as client:
        created = await client.post(
            f"/v1/entities/user/{entity}/verify", headers=auth(tokens[Scope.WRITE])
        )
    verify_id = uuid.UUID(created.json()["event_id"])

    def consumed(offset: int, event_id: uuid.UUID, service: str, status: AckStatus) -> ConsumedAck:
        ack = RetentionAck(
            event_id=event_id,
            service=service,
            entity_type="user",
            entity_id=entity,
            status=status,
            records_affected=2 if status is AckStatus.STILL_PRESENT else 0,
            acknowledged_at=datetime.now(UTC),
        )
        return ConsumedAck("acks", 0, offset, ack)

    base = int(uuid.uuid4().int % 10**9)
    async with engine.begin() as conn:
        answered = [
            found := consumed(base, verify_id, "billing", AckStatus.STILL_PRESENT),
            consumed(base + 1, verify_id, "search", AckStatus.UNSUPPORTED),
            # A deletion status is no answer to a verify event.
            consumed(base + 2, verify_id, "search", AckStatus.COMPLETED),
            # Nor may a service that was not asked answer.
            consumed(base + 3, verify_id, "crm", AckStatus.VERIFIED),
        ]
        locked = await _lock(conn, answered, {verify_id})
        assert locked == [deletion]
        outcome = await answers.apply_answers(conn, answered, now=datetime.now(UTC), locked=locked)
        # A verify answer to the deletion itself is refused by the ledger.
        refused = await apply_acks(
            conn,
            [consumed(base + 4, deletion, "billing", AckStatus.VERIFIED)],
            declared=[],
            now=datetime.now(UTC),
            reminder_interval=timedelta(hours=1),
        )
    assert [(a.service, a.status) for a in outcome.accepted] == [
        ("billing", AckStatus.STILL_PRESENT),
        ("search", AckStatus.UNSUPPORTED),
    ]
    assert [why.value for _, why in outcome.rejected] == ["unexpected_status", "unexpected_service"]
    assert outcome.resurrected == [("user", entity, "billing")]
    assert [why.value for _, why in refused.rejected] == ["unexpected_status"]
    async with engine.connect() as conn:
        state = await conn.scalar(
            select(event_status.c.state).where(event_status.c.event_id == deletion)
        )
        statuses = dict(
            (
                await conn.execute(
                    select(expected_acks.c.service, expected_acks.c.status).where(
                        expected_acks.c.event_id == deletion
                    )
                )
            ).all()
        )
        gauge = await answers.resurrected_events(conn)
    assert state == "resurrected"
    assert statuses == {"billing": "still_present", "search": "not_found", "crm": "waived"}
    assert gauge.get("billing") == 1

    async with make_client(ctx) as browser:
        await browser.post("/ui/sign-in", data={"token": tokens[Scope.READ], "next": "/ui/"})
        page = await browser.get(f"/ui/entities/user/{entity}")
    assert page.status_code == 200
    assert 'id="verifications"' in page.text
    assert "badge-still_present" in page.text
    assert "badge-unsupported" in page.text
    assert "billing answered verify: still_present (2 records left)" in page.text
    assert "badge-resurrected" in page.text

    # A later delete event for the entity, acked by billing, completes it again.
    later = await _completed_deletion(
        engine, entity, published=datetime.now(UTC) + timedelta(seconds=5)
    )
    async with engine.begin() as conn:
        done = consumed(base + 5, later, "billing", AckStatus.COMPLETED)
        locked = await _lock(conn, [done], set())
        assert locked == [deletion]
        again = await answers.delete_again(
            conn,
            [done.ack],  # type: ignore[list-item]
            now=datetime.now(UTC),
            locked=locked,
        )
        state = await conn.scalar(
            select(event_status.c.state).where(event_status.c.event_id == deletion)
        )
    assert again == [deletion]
    assert state == "completed"

    # The same `still_present` answer replayed at another offset changes nothing (the
    # ledger keeps one accepted ack per event, service, attempt and status).
    async with engine.begin() as conn:
        replay = [ConsumedAck("acks", 0, base + 6, found.ack)]
        replayed = await answers.apply_answers(
            conn, replay, now=datetime.now(UTC), locked=await _lock(conn, replay, {verify_id})
        )
        state = await conn.scalar(
            select(event_status.c.state).where(event_status.c.event_id == deletion)
        )
    assert replayed.resurrected == []
    assert state == "completed"


async def test_sampling_considers_each_deletion_once_after_verify_after(
    engine: AsyncEngine,
) -> None:
    entities = [f"s-{n}" for n in range(6)]
    for entity in entities:
        await _completed_deletion(engine, entity, policy="sampled_accounts")
    policy = Policy.model_validate(
        {
            "name": "sampled_accounts",
            "table": "accounts",
            "entity_type": "user",
            "timestamp_column": "created_at",
            "retention": "30d",
            "action": "delete",
            "legal_basis": "Contract ended",
            "fan_out": True,
            "verify_sample": 0.5,
            "verify_after": "1d",
        }
    )
    # Completed just now: not yet `verify_after` old.
    assert await sample_all(engine, [policy], now=NOW) == []
    later = NOW + timedelta(days=1, minutes=1)
    asked = await sample_all(engine, [policy], now=later, chance=random.Random(7))
    assert 0 < len(asked) < len(entities)
    assert {a.entity_id for a in asked} <= set(entities)
    assert all(a.services == ("billing", "search") for a in asked)
    # Considered once: the next pass finds nothing new, whatever it draws.
    assert await sample_all(engine, [policy], now=later, chance=random.Random(8)) == []
    async with engine.connect() as conn:
        triggers = (
            await conn.execute(
                select(verifications.c.trigger, verifications.c.requested_by).where(
                    verifications.c.policy == "sampled_accounts"
                )
            )
        ).all()
    assert set(triggers) == {("sample", "verify-sampler")}


async def test_sampling_resumes_after_the_last_deletion_among_equal_completion_times(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Acks of one batch share a time: deletions completed at the same instant straddle
    # chunk boundaries, and each is still considered exactly once.
    monkeypatch.setattr(request, "_SAMPLE_CHUNK", 2)
    name = f"tied_{uuid.uuid4().hex[:8]}"
    entities = {f"t-{n}" for n in range(5)}
    for entity in entities:
        await _completed_deletion(engine, entity, policy=name)
    policy = Policy.model_validate(
        {
            "name": name,
            "table": "accounts",
            "entity_type": "user",
            "timestamp_column": "created_at",
            "retention": "30d",
            "action": "delete",
            "legal_basis": "Contract ended",
            "fan_out": True,
            "verify_sample": 1.0,
            "verify_after": "1d",
        }
    )
    later = NOW + timedelta(days=1, minutes=1)
    asked = await sample_all(engine, [policy], now=later)
    assert sorted(a.entity_id for a in asked) == sorted(entities)
    assert await sample_all(engine, [policy], now=later) == []


async def test_a_deletion_still_open_elsewhere_is_never_completed_by_verification(
    ctx: ApiContext, tokens: dict[Scope, str], engine: AsyncEngine
) -> None:
    # Billing acked the deletion, search never did (overdue): billing found still holding
    # data, then deleting again, must not complete the event while search is open.
    entity = f"open-{uuid.uuid4().hex[:8]}"
    deletion = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            insert(event_status).values(
                event_id=deletion,
                policy="accounts",
                event_type="delete",
                entity_type="user",
                entity_id=entity,
                initiated_at=NOW,
                published_at=NOW,
                deadline=NOW,
                state="overdue",
                expected=2,
                tracked_at=NOW,
                updated_at=NOW,
            )
        )
        await conn.execute(
            insert(expected_acks),
            [
                {"event_id": deletion, "service": "billing", "status": "completed"},
                {"event_id": deletion, "service": "search", "status": "pending"},
            ],
        )

    async def state_and_acks() -> tuple[str, dict[str, str]]:
        async with engine.connect() as conn:
            state = await conn.scalar(
                select(event_status.c.state).where(event_status.c.event_id == deletion)
            )
            acks = (
                await conn.execute(
                    select(expected_acks.c.service, expected_acks.c.status).where(
                        expected_acks.c.event_id == deletion
                    )
                )
            ).all()
        return str(state), dict(acks)

    def consumed(
        offset: int,
        event_id: uuid.UUID,
        service: str,
        status: AckStatus,
        at: datetime | None = None,
    ) -> ConsumedAck:
        ack = RetentionAck(
            event_id=event_id,
            service=service,
            entity_type="user",
            entity_id=entity,
            status=status,
            records_affected=1 if status is AckStatus.STILL_PRESENT else 0,
            acknowledged_at=at or datetime.now(UTC),
        )
        return ConsumedAck("acks", 0, offset, ack)

    async def verify_finds_billing(offset: int, at: datetime | None = None) -> None:
        async with make_client(ctx) as client:
            created = await client.post(
                f"/v1/entities/user/{entity}/verify", headers=auth(tokens[Scope.WRITE])
            )
        assert "billing" in [s["service"] for s in created.json()["services"]]
        verify_id = uuid.UUID(created.json()["event_id"])
        async with engine.begin() as conn:
            answered = [consumed(offset, verify_id, "billing", AckStatus.STILL_PRESENT, at)]
            await answers.apply_answers(
                conn,
                answered,
                now=datetime.now(UTC),
                locked=await _lock(conn, answered, {verify_id}),
            )

    base = int(uuid.uuid4().int % 10**9)
    await verify_finds_billing(base)
    assert await state_and_acks() == ("overdue", {"billing": "still_present", "search": "pending"})

    later = await _completed_deletion(
        engine, entity, published=datetime.now(UTC) + timedelta(seconds=5)
    )
    async with engine.begin() as conn:
        done = consumed(base + 1, later, "billing", AckStatus.COMPLETED)
        again = await answers.delete_again(
            conn,
            [done.ack],  # type: ignore[list-item]
            now=datetime.now(UTC),
            locked=await _lock(conn, [done], set()),
        )
    assert again == []
    assert await state_and_acks() == ("overdue", {"billing": "completed", "search": "pending"})

    # Found again, after the later delete (an answer older than a delete done since
    # reopens nothing); once search is done too, the event is resurrected, not completed.
    await verify_finds_billing(base + 2, at=datetime.now(UTC) + timedelta(seconds=10))
    async with engine.begin() as conn:
        await apply_acks(
            conn,
            [consumed(base + 3, deletion, "search", AckStatus.COMPLETED)],
            declared=[],
            now=datetime.now(UTC),
            reminder_interval=timedelta(hours=1),
        )
        completed_at = await conn.scalar(
            select(event_status.c.completed_at).where(event_status.c.event_id == deletion)
        )
    assert await state_and_acks() == (
        "resurrected",
        {"billing": "still_present", "search": "completed"},
    )
    assert completed_at is not None


async def test_a_pseudonymised_verification_is_listed_under_the_asked_id(
    engine: AsyncEngine, ctx: ApiContext, tokens: dict[Scope, str]
) -> None:
    """Past the outbox retention the record names the entity by its HMAC (SPEC §13): the
    endpoint computes it with the context's pepper, and shows the kept publication time."""
    pepper = Pepper(b"v" * 32)
    event_id, asked = uuid.uuid4(), NOW - timedelta(days=40)
    async with engine.begin() as conn:
        await conn.execute(
            insert(verifications).values(
                event_id=event_id,
                entity_type="user",
                entity_id=pepper.pseudonym("user", "gone-1"),
                policy=request.ON_DEMAND,
                trigger="on_demand",
                requested_by="op",
                requested_at=asked,
                published_at=asked,
                pseudonymised_at=NOW,
            )
        )
    path = "/v1/entities/user/gone-1/verifications"
    async with make_client(dataclasses.replace(ctx, pepper=pepper), tokens[Scope.READ]) as c:
        [found] = (await c.get(path)).json()
    assert (found["event_id"], found["entity_id"]) == (str(event_id), "gone-1")
    assert found["published_at"] is not None
    # Without the pepper nothing names it.
    async with make_client(ctx, tokens[Scope.READ]) as c:
        assert (await c.get(path)).json() == []
