"""Notifications service, driven in memory by consumer_sdk.testing on a real database."""

from __future__ import annotations

from sqlalchemy import func, select

from consumer_sdk import AckStatus
from consumer_sdk.testing import TestConsumer
from services import notifications
from tests.sdk.helpers import event


async def test_deletes_the_users_notifications_once(fresh_database: str) -> None:
    app = notifications.create_app(database_url=fresh_database)
    await notifications.seed(fresh_database, ["n1", "n2"])
    e = event("n1")
    async with TestConsumer(app) as t:
        assert t.engine is not None
        [ack] = await t.deliver(e)
        [again] = await t.deliver(e)
        [missing] = await t.deliver(event("nobody"))
        async with t.engine.connect() as conn:
            left = dict(
                (
                    await conn.execute(
                        select(notifications.notifications.c.user_id, func.count()).group_by(
                            notifications.notifications.c.user_id
                        )
                    )
                ).all()
            )
            log = (await conn.execute(select(notifications.erasure_log.c.rows))).scalars().all()
    assert (ack.status, ack.records_affected, ack.service) == (
        AckStatus.COMPLETED,
        3,
        "notifications",
    )
    assert (again.status, again.records_affected) == (AckStatus.COMPLETED, 3)
    assert t.mock(notifications.EXAMPLE.handlers[0].handle).call_count == 2  # n1 once, nobody once
    assert missing.status is AckStatus.NOT_FOUND
    assert left == {"n2": 3}
    assert log == [3]
