"""Billing: orders are financial records that must be kept (amounts, dates) but need not
name anyone. Anonymizing an order masks its customer's name, email and address; deleting
a user anonymizes all of that user's orders and unlinks them from the user."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    Table,
    Text,
    any_,
    case,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import EntityNotFound, EventType, RetentionEvent
from services._shared import (
    counted_and_logged,
    entity_erasure_log,
    entity_ids,
    logged_ids_of,
    per_entity,
)
from services.example import Example, Handler

__all__ = [
    "EXAMPLE",
    "MASK",
    "SERVICE",
    "count_user_orders",
    "create_app",
    "erasure_log",
    "metadata",
    "orders",
    "seed",
]

SERVICE = "billing"
MASK = "[redacted]"
metadata = MetaData(schema="billing")

orders = Table(
    "orders",
    metadata,
    Column("id", Text, primary_key=True),
    Column("user_id", Text, nullable=True, index=True),
    Column("customer_name", Text, nullable=False),
    Column("email", Text, nullable=False),
    Column("address", Text, nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("currency", Text, nullable=False),
    Column("ordered_at", DateTime(timezone=True), nullable=False),
    Column("anonymized_at", DateTime(timezone=True), nullable=True),
)

erasure_log = entity_erasure_log(metadata)

_MASKED = {"customer_name": MASK, "email": MASK, "address": MASK}


# Built once (see `entity_ids`), bound per batch.
_masked = (
    orders.update()
    .where(orders.c.id == any_(entity_ids()), orders.c.anonymized_at.is_(None))
    .values(**_MASKED, anonymized_at=func.now())
    .returning(orders.c.id)
    .cte("masked")
)
# `orders` read in the statement's snapshot, before the UPDATE: every existing order of
# the events, 1 if this statement masked it, 0 if it was anonymized already.
_order_counts = (
    select(
        orders.c.id.label("entity_id"),
        case((_masked.c.id.is_(None), 0), else_=1).label("n"),
    )
    .select_from(orders.outerjoin(_masked, _masked.c.id == orders.c.id))
    .where(orders.c.id == any_(entity_ids()))
    .cte("counts")
)
_ANONYMIZE = counted_and_logged(erasure_log, _order_counts)
_erased = func.unnest(entity_ids()).table_valued("user_id").render_derived(name="erased")
_unlinked = (
    orders.update()
    .where(orders.c.user_id == _erased.c.user_id)
    .values(
        **_MASKED,
        user_id=None,
        anonymized_at=func.coalesce(orders.c.anonymized_at, func.now()),
    )
    .returning(_erased.c.user_id)
    .cte("updated")
)
_user_counts = (
    select(_unlinked.c.user_id.label("entity_id"), func.count().label("n"))
    .group_by(_unlinked.c.user_id)
    .cte("counts")
)
_DELETE_USERS = counted_and_logged(erasure_log, _user_counts)


async def anonymize_orders(
    events: Sequence[RetentionEvent], conn: AsyncConnection
) -> list[int | EntityNotFound]:
    """Mask the orders' personal columns; amounts and dates stay for the tax authority.

    Set-based: one statement for the batch, which masks, tells an already anonymized
    order (0 records) from a missing one, and logs. The events' `fields` name the
    coordinator's columns, not ours: billing always masks every personal column it has.
    """
    counts = await conn.execute(_ANONYMIZE, logged_ids_of(events))
    return per_entity(events, {order: n for order, n in counts}, "no such order")


async def delete_users(
    events: Sequence[RetentionEvent], conn: AsyncConnection
) -> list[int | EntityNotFound]:
    """Deleted users' orders are kept anonymized and no longer linked to the users.

    Set-based: one statement for the batch's users, the UPDATE joined to their ids so
    RETURNING can name the user each order belonged to (the row's own `user_id` is now
    NULL), and the log.
    """
    counts = await conn.execute(_DELETE_USERS, logged_ids_of(events))
    return per_entity(events, {user: n for user, n in counts}, "no orders for this user")


async def count_user_orders(event: RetentionEvent, conn: AsyncConnection) -> int:
    """Verification (SPEC §12): orders still linked to the user. A deleted user's orders
    are unlinked, so anything counted here came back after the deletion (a restore, a late
    import)."""
    found = await conn.execute(
        select(func.count()).select_from(orders).where(orders.c.user_id == event.entity_id)
    )
    return int(found.scalar_one())


def seed_rows(
    user_ids: Sequence[str],
    *,
    order_ids: Mapping[str, Sequence[str]] | None = None,
    per_user: int = 2,
) -> dict[Table, list[dict[str, Any]]]:
    """Orders per user: `order_ids[user]` when given (to match the coordinator's order
    ids), else `per_user` orders named `<user>-order-<n>`."""
    now = datetime.now(UTC)
    return {
        orders: [
            {
                "id": order_id,
                "user_id": user,
                "customer_name": f"Customer {user}",
                "email": f"{user}@example.com",
                "address": f"{n + 1} Example Street",
                "amount_cents": 1000 + 250 * n,
                "currency": "EUR",
                "ordered_at": now - timedelta(days=30 * (n + 1)),
            }
            for user in user_ids
            for n, order_id in enumerate(
                (order_ids or {}).get(user) or [f"{user}-order-{i}" for i in range(per_user)]
            )
        ]
    }


EXAMPLE = Example(
    SERVICE,
    metadata,
    erasure_log,
    (
        Handler("order", EventType.ANONYMIZE, anonymize_orders, batch=True),
        Handler("user", EventType.DELETE, delete_users, batch=True),
    ),
    seed_rows,
    verifiers=(Handler("user", EventType.VERIFY, count_user_orders),),
)
create_app = EXAMPLE.consumer
seed = EXAMPLE.seed
