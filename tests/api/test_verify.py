"""SPEC §12 verification over HTTP: POST /v1/entities/{type}/{id}/verify needs `write`, asks
the services that acked a deletion, goes into the outbox as a `verify` event the tracker
never snapshots, and shows under /verifications (never among the entity's events)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api import ApiContext
from coordinator.store.tables import event_status, expected_acks, outbox
from coordinator.tokens import Scope
from coordinator.tracking.snapshot import track_published
from tests.api.conftest import auth, make_client

NOW = datetime.now(UTC)


async def _completed_deletion(engine: AsyncEngine, entity_id: str) -> uuid.UUID:
    event_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            insert(event_status).values(
                event_id=event_id,
                policy="accounts",
                event_type="delete",
                entity_type="user",
                entity_id=entity_id,
                initiated_at=NOW,
                published_at=NOW,
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
                select(outbox.c.event_type, outbox.c.policy, outbox.c.fields).where(
                    outbox.c.event_id == uuid.UUID(body["event_id"])
                )
            )
        ).one()
        assert tuple(row) == ("verify", "on_demand", [])
        # Published or not, the tracker never follows it as a deletion to complete.
        await conn.execute(
            outbox.update()
            .where(outbox.c.event_id == uuid.UUID(body["event_id"]))
            .values(published_at=NOW)
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
