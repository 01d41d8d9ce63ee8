"""The end-to-end workload: users to erase, orders to anonymize, customers to leave alone.

`prepare` seeds every example service on the core SDK (`services.EXAMPLES`; with
`with_search_index=True` the Faust one too) through its own `seed` and writes one outbox
row per entity, as the policy engine's purge would. The expected acks follow from what
was seeded and what each service handles: the first service holds nothing of the silent
users, so it acks `not_found` for them. `data_problems` checks the services' tables
afterwards, including that nothing outside the workload was touched.

Billing is named in two places, both about its orders: customers' orders are seeded with
the ids the order events carry (its `order_ids` seed option), and anonymized orders are
checked column by column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.store.db import make_engine
from schemas import AckStatus, EventType
from services import EXAMPLES, billing
from services.example import Example
from tests.e2e.harness import PRODUCT_SERVICES, Pair, Stack
from tests.outbox import insert_rows, outbox_rows

__all__ = [
    "ORDERS_PER_CUSTOMER",
    "SILENT_SERVICE",
    "Workload",
    "data_problems",
    "prepare",
    "rows_per_user",
]

ORDERS_PER_CUSTOMER = 3
ANONYMIZED_PER_CUSTOMER = 2
SILENT_SERVICE = PRODUCT_SERVICES[0]
"""The service seeded without the silent users' rows."""


def _examples(with_search_index: bool) -> list[Example]:
    return [e for e in EXAMPLES if not e.faust or with_search_index]


def _handles(example: Example, entity_type: str, action: EventType) -> bool:
    return any(h.entity_type == entity_type and h.action == action for h in example.handlers)


def _user_tables(example: Example) -> list[Any]:
    return [t for t in example.tables if "user_id" in t.c]


def _customer_seed(example: Example, customers: Sequence[str]) -> dict[str, Any]:
    """Seed options for the customers: billing's orders get the ids the order events name."""
    if example is billing.EXAMPLE:
        return {"order_ids": {c: _order_ids(c) for c in customers}}
    return {}


def rows_per_user(service: str) -> int:
    """The rows a service's own seed gives one user, over its tables of users' rows."""
    [example] = [e for e in EXAMPLES if e.name == service]
    rows = example.seed_rows(["one"])
    return sum(len(rows.get(t, [])) for t in _user_tables(example))


@dataclass
class Workload:
    users: list[str]
    """Erased: one `user` delete event each, handled by every service that handles users."""
    customers: list[str]
    """Never erased; some of their orders are anonymized (by the services handling orders)."""
    orders: list[str]
    """Anonymized: one `order` anonymize event each."""
    silent_users: set[str]
    """Users seeded without rows in `SILENT_SERVICE`: it acks `not_found` for them."""
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
        examples = _examples(self.with_search_index)
        deleting = [e.name for e in examples if _handles(e, "user", EventType.DELETE)]
        anonymizing = [e.name for e in examples if _handles(e, "order", EventType.ANONYMIZE)]
        for user, event_id in self.event_ids("user").items():
            for service in deleting:
                silent = service == SILENT_SERVICE and user in self.silent_users
                expected[(event_id, service)] = (
                    AckStatus.NOT_FOUND if silent else AckStatus.COMPLETED
                )
        for event_id in self.event_ids("order").values():
            for service in anonymizing:
                expected[(event_id, service)] = AckStatus.COMPLETED
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
    for example in _examples(with_search_index):
        seeded = [u for u in user_ids if example.name != SILENT_SERVICE or u not in silent]
        await example.seed(url, seeded)
        await example.seed(url, customer_ids, **_customer_seed(example, customer_ids))
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
    anonymized = set(work.orders)
    engine = make_engine(stack.services_url)
    problems: list[str] = []
    try:
        async with engine.connect() as conn:
            for example in _examples(work.with_search_index):
                problems.extend(await _table_problems(conn, example, work))
            for order in (await conn.execute(select(billing.orders))).all():
                problems.extend(_order_problems(order, work, anonymized))
    finally:
        await engine.dispose()
    return problems


async def _table_problems(conn: AsyncConnection, example: Example, work: Workload) -> list[str]:
    """No row of an erased user is still linked to them (billing's orders are kept,
    unlinked); every customer's row is there as seeded."""
    problems: list[str] = []
    seeded = example.seed_rows(work.customers, **_customer_seed(example, work.customers))
    for table in _user_tables(example):
        where = f"{example.name}.{table.name}"
        left = await conn.scalar(
            select(func.count()).select_from(table).where(table.c.user_id.in_(work.users))
        )
        if left:
            problems.append(f"{where}: {left} rows of erased users left")
        kept = await conn.scalar(
            select(func.count()).select_from(table).where(table.c.user_id.in_(work.customers))
        )
        if kept != len(seeded.get(table, [])):
            problems.append(f"{where}: customers' rows: {kept} left")
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
