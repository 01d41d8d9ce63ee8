"""The end-to-end workload: users to erase, orders to anonymize, customers to leave alone.

`prepare` seeds the three core-SDK services' databases (and, with `with_search_index=True`,
the Faust service's index) through their own `seed` functions and
writes one outbox row per entity, as the policy engine's purge would. The expected
acks follow from what was seeded: a user without notifications is `not_found` there.
`data_problems` checks the services' tables afterwards, including that nothing outside
the workload was touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.store.db import make_engine
from schemas import AckStatus
from services import billing, notifications, preferences, search_index
from tests.e2e.harness import FAUST_SERVICE, Pair, Stack
from tests.outbox import insert_rows, outbox_rows

__all__ = ["ORDERS_PER_CUSTOMER", "Workload", "data_problems", "prepare"]

ORDERS_PER_CUSTOMER = 3
ANONYMIZED_PER_CUSTOMER = 2
NOTIFICATIONS_PER_USER = 3
DOCUMENTS_PER_USER = 2


@dataclass
class Workload:
    users: list[str]
    """Erased: one `user` delete event each, handled by all three services."""
    customers: list[str]
    """Never erased; some of their orders are anonymized (billing only)."""
    orders: list[str]
    """Anonymized: one `order` anonymize event each."""
    silent_users: set[str]
    """Users seeded without notifications: that service acks `not_found`."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    with_search_index: bool = False
    """Whether the Faust service's index was seeded: it takes part and acks every user."""

    @property
    def events(self) -> int:
        return len(self.rows)

    def event_ids(self, entity_type: str) -> dict[str, Any]:
        return {r["entity_id"]: r["event_id"] for r in self.rows if r["entity_type"] == entity_type}

    def expected_acks(self) -> dict[Pair, AckStatus]:
        expected: dict[Pair, AckStatus] = {}
        for user, event_id in self.event_ids("user").items():
            expected[(event_id, "notifications")] = (
                AckStatus.NOT_FOUND if user in self.silent_users else AckStatus.COMPLETED
            )
            expected[(event_id, "preferences")] = AckStatus.COMPLETED
            expected[(event_id, "billing")] = AckStatus.COMPLETED
            if self.with_search_index:
                expected[(event_id, FAUST_SERVICE)] = AckStatus.COMPLETED
        for event_id in self.event_ids("order").values():
            expected[(event_id, "billing")] = AckStatus.COMPLETED
        return expected


def _order_ids(customer: str) -> list[str]:
    return [f"{customer}-order-{n}" for n in range(ORDERS_PER_CUSTOMER)]


async def prepare(
    stack: Stack,
    *,
    users: int,
    customers: int,
    label: str = "e2e",
    silent_every: int = 10,
    with_search_index: bool = False,
) -> Workload:
    """Seed the services and fill the outbox; nothing is published yet."""
    user_ids = [f"{label}-u{i:05d}" for i in range(users)]
    customer_ids = [f"{label}-c{i:04d}" for i in range(customers)]
    silent = set(user_ids[::silent_every])
    orders = [o for c in customer_ids for o in _order_ids(c)[:ANONYMIZED_PER_CUSTOMER]]
    url = stack.services_url
    await notifications.seed(
        url,
        [u for u in user_ids if u not in silent] + customer_ids,
        per_user=NOTIFICATIONS_PER_USER,
    )
    await preferences.seed(url, user_ids + customer_ids)
    await billing.seed(url, user_ids)
    await billing.seed(url, customer_ids, order_ids={c: _order_ids(c) for c in customer_ids})
    if with_search_index:
        await search_index.seed(url, user_ids + customer_ids, per_user=DOCUMENTS_PER_USER)
    rows = outbox_rows(len(user_ids), policy="inactive_users", entity_ids=user_ids)
    rows += outbox_rows(
        len(orders),
        policy="order_records",
        entity_type="order",
        event_type="anonymize",
        entity_ids=orders,
    )
    engine = stack.engine()
    try:
        await insert_rows(engine, rows)
    finally:
        await engine.dispose()
    return Workload(user_ids, customer_ids, orders, silent, rows, with_search_index)


async def data_problems(stack: Stack, work: Workload) -> list[str]:
    """What is left of erased users, unmasked in anonymized orders, or lost by bystanders."""
    n, p, o = notifications.notifications, preferences.preferences, billing.orders
    anonymized = set(work.orders)
    engine = make_engine(stack.services_url)
    problems: list[str] = []
    try:
        async with engine.connect() as conn:
            left = await conn.scalar(
                select(func.count()).select_from(n).where(n.c.user_id.in_(work.users))
            )
            if left:
                problems.append(f"{left} notifications of erased users left")
            left = await conn.scalar(
                select(func.count()).select_from(p).where(p.c.user_id.in_(work.users))
            )
            if left:
                problems.append(f"{left} preferences of erased users left")
            left = await conn.scalar(
                select(func.count()).select_from(o).where(o.c.user_id.in_(work.users))
            )
            if left:
                problems.append(f"{left} orders still linked to erased users")
            kept = await conn.scalar(
                select(func.count()).select_from(n).where(n.c.user_id.in_(work.customers))
            )
            if kept != NOTIFICATIONS_PER_USER * len(work.customers):
                problems.append(f"customers' notifications: {kept} left")
            kept = await conn.scalar(
                select(func.count(func.distinct(p.c.user_id))).where(
                    p.c.user_id.in_(work.customers)
                )
            )
            if kept != len(work.customers):
                problems.append(f"customers' preferences: {kept} customers left")
            if work.with_search_index:
                problems.extend(await _index_problems(conn, work))
            for order in (await conn.execute(select(o))).all():
                problems.extend(_order_problems(order, work, anonymized))
    finally:
        await engine.dispose()
    return problems


async def _index_problems(conn: AsyncConnection, work: Workload) -> list[str]:
    d = search_index.documents
    problems: list[str] = []
    left = await conn.scalar(select(func.count()).select_from(d).where(d.c.user_id.in_(work.users)))
    if left:
        problems.append(f"{left} indexed documents of erased users left")
    kept = await conn.scalar(
        select(func.count()).select_from(d).where(d.c.user_id.in_(work.customers))
    )
    if kept != DOCUMENTS_PER_USER * len(work.customers):
        problems.append(f"customers' indexed documents: {kept} left")
    return problems


def _order_problems(order: Any, work: Workload, anonymized: set[str]) -> Sequence[str]:
    masked = (order.customer_name, order.email, order.address) == (billing.MASK,) * 3
    # The seed's amounts: 1000 + 250 n for the n-th order of a person.
    index = int(order.id.rsplit("-", 1)[1])
    kept_amount = order.amount_cents == 1000 + 250 * index
    erased_user = order.user_id is None
    if order.id in anonymized:
        ok = masked and kept_amount and order.user_id is not None and order.anonymized_at
    elif order.user_id in work.customers:
        ok = not masked and kept_amount and order.anonymized_at is None
    else:
        ok = erased_user and masked and kept_amount and order.anonymized_at is not None
    return [] if ok else [f"order {order.id}: masked={masked} user={order.user_id!r}"]
