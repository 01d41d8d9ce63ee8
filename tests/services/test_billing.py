"""Billing service: anonymizes orders (amounts and dates kept), in memory via the test kit."""

from __future__ import annotations

from sqlalchemy import func, select

from consumer_sdk import AckStatus, EntityNotFound, EventType
from consumer_sdk.testing import TestConsumer
from services import billing
from services._shared import engine_for
from services.billing.service import anonymize_orders
from tests.sdk.helpers import event


async def test_anonymize_order_masks_personal_columns_only(fresh_database: str) -> None:
    app = billing.create_app(database_url=fresh_database)
    await billing.seed(fresh_database, ["b1"], order_ids={"b1": ["o-1", "o-2"]})
    o = billing.orders
    async with TestConsumer(app) as t:
        assert t.engine is not None
        async with t.engine.connect() as conn:
            before = (await conn.execute(select(o).where(o.c.id == "o-1"))).one()
        [ack] = await t.deliver(event("o-1", entity_type="order", action=EventType.ANONYMIZE))
        [twice] = await t.deliver(event("o-1", entity_type="order", action=EventType.ANONYMIZE))
        [gone] = await t.deliver(event("o-9", entity_type="order", action=EventType.ANONYMIZE))
        async with t.engine.connect() as conn:
            after = (await conn.execute(select(o).where(o.c.id == "o-1"))).one()
            other = (await conn.execute(select(o).where(o.c.id == "o-2"))).one()
    assert (ack.status, ack.records_affected) == (AckStatus.COMPLETED, 1)
    # Another event for an already anonymized order: done, nothing changed.
    assert (twice.status, twice.records_affected) == (AckStatus.COMPLETED, 0)
    assert gone.status is AckStatus.NOT_FOUND
    assert (after.customer_name, after.email, after.address) == (billing.MASK,) * 3
    assert (after.amount_cents, after.currency, after.ordered_at, after.user_id) == (
        before.amount_cents,
        before.currency,
        before.ordered_at,
        "b1",
    )
    assert after.anonymized_at is not None
    assert other.email == "b1@example.com"


async def test_user_delete_anonymizes_and_unlinks_the_users_orders(fresh_database: str) -> None:
    app = billing.create_app(database_url=fresh_database)
    await billing.seed(fresh_database, ["b2", "b3"])
    o = billing.orders
    async with TestConsumer(app) as t:
        assert t.engine is not None
        [ack] = await t.deliver(event("b2"))
        [none_left] = await t.deliver(event("b2"))
        async with t.engine.connect() as conn:
            rows = (await conn.execute(select(o).where(o.c.id.like("b2-%")))).all()
            kept = (await conn.execute(select(o.c.user_id).where(o.c.id.like("b3-%")))).scalars()
            kept_users = set(kept)
    assert (ack.status, ack.records_affected) == (AckStatus.COMPLETED, 2)
    assert none_left.status is AckStatus.NOT_FOUND
    assert len(rows) == 2
    assert {(r.user_id, r.customer_name, r.email, r.address) for r in rows} == {
        (None, billing.MASK, billing.MASK, billing.MASK)
    }
    assert all(r.amount_cents > 0 and r.anonymized_at is not None for r in rows)
    assert kept_users == {"b3"}


async def test_a_call_logs_each_order_once_for_its_first_event(fresh_database: str) -> None:
    """One statement masks, counts and logs: an already anonymized order counts 0 and is
    logged, a missing one is not, and a second event of one order gets no count and no
    row (the SDK never puts one in a call; the handler still must not log it twice)."""
    await billing.seed(fresh_database, ["b4"], order_ids={"b4": ["o-4", "o-5"]})
    o, log = billing.orders, billing.erasure_log
    first, again, missing, done = (
        event(order, entity_type="order", action=EventType.ANONYMIZE)
        for order in ("o-4", "o-4", "o-9", "o-5")
    )
    engine = engine_for(fresh_database)
    try:
        async with engine.begin() as conn:
            await conn.execute(o.update().where(o.c.id == "o-5").values(anonymized_at=func.now()))
            results = await anonymize_orders([first, again, missing, done], conn)
            logged = (
                await conn.execute(
                    select(log.c.event_id, log.c.entity_type, log.c.entity_id, log.c.rows).where(
                        log.c.event_id.in_([e.event_id for e in (first, again, missing, done)])
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    assert [r if isinstance(r, int) else type(r) for r in results] == [
        1,
        EntityNotFound,
        EntityNotFound,
        0,
    ]
    assert sorted(logged) == sorted(
        [(first.event_id, "order", "o-4", 1), (done.event_id, "order", "o-5", 0)]
    )
