"""Notifications service, driven in memory by consumer_sdk.testing on a real database."""

from __future__ import annotations

from sqlalchemy import func, select

from consumer_sdk import AckStatus, EntityNotFound
from consumer_sdk.testing import TestConsumer
from services import notifications
from services._shared import delete_users_rows, engine_for
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


async def test_a_call_logs_each_user_once_for_its_first_event(fresh_database: str) -> None:
    """One statement deletes, counts and logs: a user without rows is not logged, and a
    second event of one user gets no count and no row."""
    await notifications.seed(fresh_database, ["n7", "n8"])
    log = notifications.erasure_log
    first, again, missing, other = (event(user) for user in ("n7", "n7", "n9", "n8"))
    engine = engine_for(fresh_database)
    try:
        async with engine.begin() as conn:
            results = await delete_users_rows(
                conn, notifications.notifications, log, [first, again, missing, other], "none"
            )
            logged = (
                await conn.execute(
                    select(log.c.event_id, log.c.user_id, log.c.rows).where(
                        log.c.event_id.in_([e.event_id for e in (first, again, missing, other)])
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    assert [r if isinstance(r, int) else type(r) for r in results] == [
        3,
        EntityNotFound,
        EntityNotFound,
        3,
    ]
    assert sorted(logged) == sorted([(first.event_id, "n7", 3), (other.event_id, "n8", 3)])
