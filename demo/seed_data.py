"""The seed article's five example tables, and data in labelled categories.

Used by the policy-engine tests (tests/data/seed_policies.yaml), and reusable by the
demo and the benchmarks. Every row belongs to one category, so the expected outcome of
a run is known exactly:

* `due`: past retention, in scope, not held → processed;
* `boundary`: one microsecond older than the cutoff → processed;
* `held`: due, but under a legal hold → untouched;
* `at_cutoff`: exactly at the cutoff (the rule is `ts < cutoff`) → untouched;
* `young`: a day inside retention → untouched;
* `null_ts`: NULL timestamp (never due) → untouched;
* `excluded`: old, but the policy's conditions exclude it → untouched.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    Numeric,
    Table,
    Text,
    Uuid,
    insert,
)
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "CATEGORIES",
    "PROCESSED",
    "SEED_POLICIES",
    "SeedData",
    "create_seed_tables",
    "drop_seed_tables",
    "populate",
    "seed_metadata",
]

seed_metadata = MetaData()

session_logs = Table(
    "session_logs",
    seed_metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", Text, nullable=False),
    Column("ip", Text),
    Column("created_at", DateTime(timezone=True)),
)
analytics_events = Table(
    "analytics_events",
    seed_metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", Text, nullable=False),
    Column("event_name", Text, nullable=False),
    # A naive `timestamp` on purpose: the planner reads naive columns as UTC.
    Column("event_time", DateTime(timezone=False)),
)
orders = Table(
    "orders",
    seed_metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("customer_id", Text),
    Column("customer_name", Text, nullable=False),
    Column("email", Text, nullable=False),
    Column("shipping_address", Text),
    Column("phone", Text),
    Column("status", Text, nullable=False),
    Column("total", Numeric(12, 2), nullable=False),
    Column("created_at", DateTime(timezone=True)),
)
support_tickets = Table(
    "support_tickets",
    seed_metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("subject", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("resolved_at", DateTime(timezone=True)),
)
shopping_carts = Table(
    "shopping_carts",
    seed_metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True)),
)

USER_MODULUS = 97
"""Row n of a seed table belongs to user `user-{n % USER_MODULUS}`."""
CATEGORIES = ("due", "boundary", "held", "at_cutoff", "young", "null_ts", "excluded")
PROCESSED = frozenset({"due", "boundary"})


@dataclass(frozen=True, slots=True)
class _Seed:
    table: Table
    entity_type: str
    timestamp: str
    retention: timedelta
    # (column, value) that puts a row in scope / out of scope; None: no conditions.
    scope: tuple[str, str, str] | None


SEED_POLICIES: dict[str, _Seed] = {
    "session_logs": _Seed(session_logs, "session", "created_at", timedelta(days=90), None),
    "analytics_events": _Seed(
        analytics_events, "analytics_event", "event_time", timedelta(days=395), None
    ),
    "purchase_records": _Seed(orders, "order", "created_at", timedelta(days=2557), None),
    "support_tickets": _Seed(
        support_tickets, "ticket", "resolved_at", timedelta(days=730), ("status", "closed", "open")
    ),
    "abandoned_carts": _Seed(
        shopping_carts, "cart", "updated_at", timedelta(days=30), ("status", "abandoned", "active")
    ),
}
"""Policy name → table and the facts of tests/data/seed_policies.yaml the data relies on."""


@dataclass
class SeedData:
    """Ids of every row written, by policy and category; holds to create as `type:id`."""

    ids: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    holds: list[str] = field(default_factory=list)

    def expected_processed(self, policy: str) -> set[Any]:
        return {i for c in PROCESSED for i in self.ids[policy].get(c, [])}

    def untouched(self, policy: str) -> set[Any]:
        return {i for c, ids in self.ids[policy].items() if c not in PROCESSED for i in ids}


async def create_seed_tables(conn: AsyncConnection) -> None:
    await conn.run_sync(seed_metadata.create_all)


async def drop_seed_tables(conn: AsyncConnection) -> None:
    def drop(sync: Any) -> None:
        for table in seed_metadata.sorted_tables:
            Table(f"{table.name}_archive", MetaData()).drop(sync, checkfirst=True)
        seed_metadata.drop_all(sync)

    await conn.run_sync(drop)


def _row(seed: _Seed, row_id: Any, n: int, ts: datetime | None, in_scope: bool) -> dict[str, Any]:
    table = seed.table.name
    row: dict[str, Any] = {"id": row_id, seed.timestamp: ts}
    if ts is not None and not seed.table.c[seed.timestamp].type.timezone:  # type: ignore[attr-defined]
        row[seed.timestamp] = ts.astimezone(UTC).replace(tzinfo=None)
    if seed.scope is not None:
        column, yes, no = seed.scope
        row[column] = yes if in_scope else no
    if table == "session_logs":
        row.update(user_id=f"user-{n % USER_MODULUS:05d}", ip=f"10.0.{n % 256}.{n % 251}")
    elif table == "analytics_events":
        row.update(user_id=f"user-{n % USER_MODULUS:05d}", event_name="page_view")
    elif table == "orders":
        row.update(
            customer_id=f"user-{n % USER_MODULUS:05d}",
            customer_name=f"Customer {n}",
            email=f"customer{n}@shop.example",
            shipping_address=f"{n} Long Road",
            phone=f"+4420{n:07d}",
            status="shipped",
            total=n % 500,
        )
    elif table == "support_tickets":
        row.update(subject=f"ticket {n}")
    else:
        row.update(user_id=f"user-{n % USER_MODULUS:05d}")
    return row


def _ids(seed: _Seed, start: int) -> Iterator[Any]:
    n = start
    while True:
        n += 1
        yield uuid.UUID(int=n) if isinstance(seed.table.c.id.type, Uuid) else n


async def populate(conn: AsyncConnection, now: datetime, *, per_category: int = 3) -> SeedData:
    """Write `per_category` rows of every category into each seed table, relative to `now`."""
    data = SeedData()
    tiny = timedelta(microseconds=1)
    for policy, seed in SEED_POLICIES.items():
        cutoff = now - seed.retention
        timestamps: dict[str, list[Any]] = {
            "due": [cutoff - timedelta(days=1 + k) for k in range(per_category)],
            "boundary": [cutoff - tiny * max(1, k * 1_000_000) for k in range(per_category)],
            "held": [cutoff - timedelta(days=3 + k) for k in range(per_category)],
            "at_cutoff": [cutoff] * per_category,
            "young": [cutoff + timedelta(days=1, hours=k) for k in range(per_category)],
            "null_ts": [None] * per_category,
        }
        if seed.scope is not None:
            timestamps["excluded"] = [cutoff - timedelta(days=5 + k) for k in range(per_category)]
        ids = _ids(seed, 0)
        rows, data.ids[policy] = [], {}
        for n, (category, stamps) in enumerate(timestamps.items()):
            for k, ts in enumerate(stamps):
                row_id = next(ids)
                data.ids[policy].setdefault(category, []).append(row_id)
                rows.append(_row(seed, row_id, n * 1000 + k, ts, category != "excluded"))
                if category == "held":
                    data.holds.append(f"{seed.entity_type}:{row_id}")
        await conn.execute(insert(seed.table), rows)
    return data
