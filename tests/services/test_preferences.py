"""Preferences service, driven in memory by consumer_sdk.testing on a real database."""

from __future__ import annotations

from sqlalchemy import select

from consumer_sdk import AckStatus, EventType
from consumer_sdk.testing import TestConsumer
from services import preferences
from tests.sdk.helpers import event


async def test_deletes_the_users_preferences(fresh_database: str) -> None:
    app = preferences.create_app(database_url=fresh_database)
    await preferences.seed(fresh_database, ["p1", "p2"])
    async with TestConsumer(app) as t:
        assert t.engine is not None
        [ack] = await t.deliver(event("p1"))
        [missing] = await t.deliver(event("p1"))  # a second, different event: nothing left
        ignored = await t.deliver(event("p1", entity_type="order", action=EventType.ANONYMIZE))
        async with t.engine.connect() as conn:
            users = (await conn.execute(select(preferences.preferences.c.user_id))).scalars()
            left = sorted(set(users))
    assert (ack.status, ack.records_affected) == (AckStatus.COMPLETED, 3)
    assert missing.status is AckStatus.NOT_FOUND
    assert ignored == []
    assert left == ["p2"]


async def test_registration_says_what_it_handles(fresh_database: str) -> None:
    app = preferences.create_app(database_url=fresh_database)
    assert [(h.entity_type, h.actions) for h in app.registration().handles] == [
        ("user", [EventType.DELETE])
    ]
