"""Re-publishing over HTTP: `admin` only, the token's name audited, records on the topic."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api import ApiContext
from coordinator.api.tokens import Scope
from coordinator.operations.republish import RepublishSetup
from coordinator.store.tables import audit_log
from schemas import KafkaSettings, RetentionEvent, decode
from tests import keys
from tests.api.conftest import auth, make_client
from tests.integration.tracking_support import insert_published
from tests.sdk.kafka_io import read_topic


async def test_republish_routes_need_admin_and_send_the_stored_event(
    ctx: ApiContext,
    engine: AsyncEngine,
    topics: KafkaSettings,
    tokens: dict[Scope, str],
) -> None:
    now = datetime.now(UTC)
    entity_id = f"u-{uuid.uuid4().hex[:8]}"
    [event_id] = await insert_published(engine, [entity_id], published_at=now)
    # Unpublished rows are the relay's business, never re-sent from here.
    [unpublished] = await insert_published(engine, [entity_id + "-new"], published_at=None)
    routes = (
        f"/v1/events/{event_id}/republish",
        f"/v1/entities/user/{entity_id}/republish",
    )
    async with make_client(ctx) as unconfigured:
        response = await unconfigured.post(routes[0], json={}, headers=auth(tokens[Scope.ADMIN]))
        assert response.status_code == 503, response.text

    setup = RepublishSetup(topics, keys.signer(keys.COORDINATOR))
    async with make_client(dataclasses.replace(ctx, republish=setup)) as client:
        for scope in (Scope.READ, Scope.WRITE):
            refused = await client.post(routes[0], json={}, headers=auth(tokens[scope]))
            assert refused.status_code == 403, refused.text
        for route in routes:
            done = await client.post(route, json={}, headers=auth(tokens[Scope.ADMIN]))
            assert done.status_code == 200, done.text
            assert done.json() == {
                "sent": [str(event_id)],
                "sent_total": 1,
                "held": [],
                "held_total": 0,
                "truncated": False,
            }
        missing = await client.post(
            f"/v1/events/{unpublished}/republish", json={}, headers=auth(tokens[Scope.ADMIN])
        )
        assert missing.status_code == 404, missing.text
        # Error texts never name the entity: its id may be personal data.
        unknown = f"person-{uuid.uuid4().hex[:8]}"
        nothing = await client.post(
            f"/v1/entities/user/{unknown}/republish", json={}, headers=auth(tokens[Scope.ADMIN])
        )
        assert nothing.status_code == 404, nothing.text
        assert unknown not in nothing.text
        not_expected = await client.post(
            routes[0], json={"service": "billing"}, headers=auth(tokens[Scope.ADMIN])
        )
        assert not_expected.status_code == 404, not_expected.text  # never tracked for billing
        bad = await client.post(
            f"/v1/runs/{uuid.uuid4()}/republish",
            json={"service": "no spaces"},
            headers=auth(tokens[Scope.ADMIN]),
        )
        assert bad.status_code == 422, bad.text

    records = await read_topic(topics, topics.topics.events, expect=2)
    assert {decode(RetentionEvent, r.value).event_id for r in records} == {event_id}
    async with engine.connect() as conn:
        actors = (
            await conn.execute(
                select(audit_log.c.actor).where(
                    audit_log.c.action == "events_republished",
                    audit_log.c.data["event_ids"].contains([str(event_id)]),
                )
            )
        ).scalars()
        assert list(actors) == ["admin-bot", "admin-bot"]
