"""Declared services over HTTP: drift for `read`, retire and waive for `admin` only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api import ApiContext
from coordinator.api.tokens import Scope
from coordinator.store.tables import audit_log, expected_acks, service_registry
from coordinator.tracking import snapshot
from tests.api.conftest import auth
from tests.integration.tracking_support import insert_published

NOW = datetime.now(UTC)


async def _pending_event(engine: AsyncEngine, ctx: ApiContext) -> object:
    [event] = await insert_published(
        engine, [f"u-{NOW.timestamp()}"], published_at=NOW, entity_type="user"
    )
    declared = [(s.name, e, a) for s in ctx.policy_set.services for e, a in sorted(s.pairs())]
    async with engine.begin() as conn:
        await snapshot.track_events(
            conn, [event], declared=declared, now=NOW, reminder_interval=timedelta(hours=1)
        )
    return event


async def test_services_show_declared_registered_and_drift(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(service_registry),
            [
                {
                    "service": "billing",
                    "entity_type": "order",
                    "action": "anonymize",
                    "sdk_version": "1",
                    "first_seen": NOW,
                    "last_seen": NOW,
                },
                {
                    "service": "shadow",
                    "entity_type": "user",
                    "action": "delete",
                    "sdk_version": "1",
                    "first_seen": NOW,
                    "last_seen": NOW,
                },
            ],
        )
    response = await client.get("/v1/services")
    assert response.status_code == 200, response.text
    found = {s["service"]: s for s in response.json()}
    # billing registers orders only; the seed file declares users too.
    assert found["billing"]["drift"] == "handles_differ"
    assert found["billing"]["registered"] == {"order": ["anonymize"]}
    assert found["shadow"]["drift"] == "undeclared"
    assert found["flaky"]["drift"] == "not_registered"


async def test_waive_and_retire_need_admin_and_record_the_token(
    client: httpx.AsyncClient, ctx: ApiContext, engine: AsyncEngine, tokens: dict[Scope, str]
) -> None:
    event = await _pending_event(engine, ctx)
    body = {"service": "billing", "reason": "user never reached billing", "by": "ignored"}
    for scope in (Scope.READ, Scope.WRITE):
        refused = await client.post(
            f"/v1/events/{event}/waive", json=body, headers=auth(tokens[scope])
        )
        assert refused.status_code == 403, refused.text
    done = await client.post(
        f"/v1/events/{event}/waive", json=body, headers=auth(tokens[Scope.ADMIN])
    )
    assert done.status_code == 200, done.text
    assert done.json() == {"waived": [str(event)], "completed": [str(event)]}
    again = await client.post(
        f"/v1/events/{event}/waive", json=body, headers=auth(tokens[Scope.ADMIN])
    )
    assert again.status_code == 404

    shown = (await client.get(f"/v1/events/{event}")).json()
    assert shown["state"] == "completed"
    [answer] = shown["services"]
    assert (answer["status"], answer["waived_by"], answer["detail"]) == (
        "waived",
        "admin-bot",
        "user never reached billing",
    )
    async with engine.connect() as conn:
        entry = (
            await conn.execute(
                select(audit_log.c.actor, audit_log.c.data).where(
                    audit_log.c.action == "ack_waived"
                )
            )
        ).one()
    assert entry.actor == "admin-bot"
    # The console's counts and drill-down (and their JSON) show it as waived.
    [billing] = [
        s for s in (await client.get("/v1/completion/services")).json() if s["service"] == "billing"
    ]
    assert billing["waived"] >= 1
    waived = (await client.get("/v1/completion/services/billing/events?state=waived")).json()
    assert (str(event), "admin-bot", "waived") in {
        (w["event_id"], w["waived_by"], w["status"]) for w in waived
    }

    second = await _pending_event(engine, ctx)
    retired = await client.post(
        "/v1/services/billing/retire",
        json={"reason": "decommissioned"},
        headers=auth(tokens[Scope.ADMIN]),
    )
    assert retired.status_code == 200, retired.text
    assert str(second) in retired.json()["waived"]
    async with engine.connect() as conn:
        status = (
            await conn.execute(
                select(expected_acks.c.status).where(expected_acks.c.event_id == second)
            )
        ).scalar_one()
    assert status == "waived"
