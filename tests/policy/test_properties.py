"""Property: over random rows, holds and clocks, a run touches exactly the rows that are due.

Rows and hold expiries sit a quarter hour off a half-hour grid around the database's
clock, and clocks on whole hours, so "due" is never ambiguous by the seconds a run takes.
Clocks run up to 12 hours ahead of the database (the skew the planner must defuse) or
weeks behind.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.policy.model import parse_policies
from coordinator.purge.holds import create_hold, entity_types, release_hold
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from demo.seed_data import orders, shopping_carts

POLICIES = parse_policies("""
policies:
  - name: carts
    table: shopping_carts
    entity_type: cart
    timestamp_column: updated_at
    retention: 2d
    action: delete
    legal_basis: test
    conditions: "status = 'abandoned'"
    batch_size: 3
    fan_out: true
  - name: orders
    table: orders
    entity_type: order
    timestamp_column: created_at
    retention: 36h
    action: anonymize
    legal_basis: test
    conditions: "status IN ('closed', 'refunded') AND total >= 10"
    anonymize: {email: fake_email, phone: "null"}
    batch_size: 2
services:
  - {name: carts_service, owner: tests, handles: {cart: [delete]}}
""")
CART_RETENTION = timedelta(days=2)
ORDER_RETENTION = timedelta(hours=36)
HALF_HOUR = timedelta(minutes=30)
QUARTER = timedelta(minutes=15)


@dataclass(frozen=True)
class Row:
    age_half_hours: int | None  # None: NULL timestamp
    status: str
    total: int
    hold: tuple[int | None, bool] | None  # (expiry in half hours from base, released)


rows = st.lists(
    st.builds(
        Row,
        st.one_of(st.none(), st.integers(-40, 400)),
        st.sampled_from(["abandoned", "active", "closed", "refunded"]),
        st.integers(0, 20),
        st.one_of(
            st.none(),
            st.tuples(st.one_of(st.none(), st.integers(-100, 100)), st.booleans()),
        ),
    ),
    max_size=14,
)


def ts(base: datetime, row: Row) -> datetime | None:
    if row.age_half_hours is None:
        return None
    return base - row.age_half_hours * HALF_HOUR - QUARTER


def hold_active(row: Row, base: datetime, now: datetime) -> bool:
    if row.hold is None:
        return False
    expiry, released = row.hold
    return not released and (expiry is None or expires(base, expiry) > now)


def expires(base: datetime, half_hours: int) -> datetime:
    return base + half_hours * HALF_HOUR + QUARTER


def due(row: Row, base: datetime, now: datetime, retention: timedelta, in_scope: bool) -> bool:
    stamp = ts(base, row)
    return (
        stamp is not None
        and stamp < now - retention
        and in_scope
        and not hold_active(row, base, now)
    )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    carts=rows,
    order_rows=rows,
    clock_hours=st.one_of(st.integers(1, 12), st.integers(-6, 0), st.integers(-24 * 20, 0)),
)
async def test_a_run_touches_exactly_the_due_rows(
    engine: AsyncEngine,
    settings: Settings,
    carts: list[Row],
    order_rows: list[Row],
    clock_hours: int,
) -> None:
    async with engine.begin() as conn:
        for table in (shopping_carts, orders):
            await conn.execute(delete(table))
        await conn.execute(
            text(
                "TRUNCATE legal_hold_entities, legal_holds, retention_outbox_batches, "
                "retention_outbox_marks, retention_outbox_cursors, "
                "retention_anonymized, retention_anonymize_marks"
            )
        )
        base = (await conn.execute(select(func.now()))).scalar_one()
        cart_ids = [uuid.uuid4() for _ in carts]
        if carts:
            await conn.execute(
                insert(shopping_carts),
                [
                    {"id": i, "user_id": "u", "status": r.status, "updated_at": ts(base, r)}
                    for i, r in zip(cart_ids, carts, strict=True)
                ],
            )
        if order_rows:
            await conn.execute(
                insert(orders),
                [
                    {
                        "id": n,
                        "customer_name": "c",
                        "email": f"c{n}@shop.example",
                        "phone": "1",
                        "status": r.status,
                        "total": r.total,
                        "created_at": ts(base, r),
                    }
                    for n, r in enumerate(order_rows)
                ],
            )
        held = [(f"cart:{i}", r) for i, r in zip(cart_ids, carts, strict=True) if r.hold] + [
            (f"order:{n}", r) for n, r in enumerate(order_rows) if r.hold
        ]
        for entity, row in held:
            assert row.hold is not None
            expiry, released = row.hold
            hold = await create_hold(
                conn,
                types=await entity_types(conn, POLICIES),
                entities=[entity],
                reason="p",
                created_by="t",
                now=base - timedelta(days=30),
                expires_at=None if expiry is None else expires(base, expiry),
            )
            if released:
                await release_hold(conn, hold.id, by="t", now=base)

    clock_now = base + timedelta(hours=clock_hours)
    now = min(clock_now, base)  # the DB clock is base + seconds: same quarter-hour slot
    report = await Runner(engine, POLICIES, settings, clock=FrozenClock(clock_now)).run()
    assert report.ok, report.as_dict()

    async with engine.connect() as conn:
        left_carts = set((await conn.execute(select(shopping_carts.c.id))).scalars())
        rewritten = set(
            (
                await conn.execute(
                    select(orders.c.id).where(orders.c.email.like("%@example.invalid"))
                )
            ).scalars()
        )
        events = set(
            (
                await conn.execute(text("SELECT unnest(entity_ids) FROM retention_outbox_batches"))
            ).scalars()
        )
    expected_carts = {
        i
        for i, r in zip(cart_ids, carts, strict=True)
        if due(r, base, now, CART_RETENTION, r.status == "abandoned")
    }
    expected_orders = {
        n
        for n, r in enumerate(order_rows)
        if due(r, base, now, ORDER_RETENTION, r.status in ("closed", "refunded") and r.total >= 10)
    }
    assert set(cart_ids) - left_carts == expected_carts
    assert rewritten == expected_orders
    assert events == {str(i) for i in expected_carts}
