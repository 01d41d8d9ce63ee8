"""Billing service: anonymizes orders (amounts and dates kept), in memory via the test kit."""

from __future__ import annotations

from sqlalchemy import select

from consumer_sdk import AckStatus, EventType
from consumer_sdk.testing import TestConsumer
from services import billing
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
