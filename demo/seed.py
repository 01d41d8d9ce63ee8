"""Demo data: the five seed policies' tables, a users table, legal holds, the services' data.

`make demo` calls `seed_coordinator` and `seed_services` on fresh databases;
`python -m demo seed` (the compose stack's one-shot `seed` service) seeds migrated
databases once and leaves them alone when they already hold the demo data. Only runtime
dependencies are imported here: the Docker image has no test extras.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, MetaData, Text, func, insert, inspect, select
from sqlalchemy import Table as SqlTable
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from consumer_sdk import configure_logging
from coordinator.policy.model import load_policies
from coordinator.purge.holds import create_hold, entity_types
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from demo.keys import ensure_keys
from demo.seed_data import CATEGORIES, USER_MODULUS, create_seed_tables, populate, seed_metadata
from services import EXAMPLES, billing
from services._shared import ensure_database, service_database_url

__all__ = [
    "LOGINS_PER_USER",
    "POLICIES",
    "Seeded",
    "logins",
    "main",
    "seed_coordinator",
    "seed_services",
    "users",
]

POLICIES = Path(__file__).resolve().parent / "policies.yaml"
"""The seed file's five policies plus closed_accounts (on `users`), so every service has work."""

_demo_metadata = MetaData()
users = SqlTable(
    "users",
    _demo_metadata,
    Column("id", Text, primary_key=True),
    Column("email", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("closed_at", DateTime(timezone=True)),
)
logins = SqlTable(
    "logins",
    _demo_metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", Text, nullable=False),
    Column("ip", Text, nullable=False),
    Column("logged_in_at", DateTime(timezone=True), nullable=False),
)
LOGINS_PER_USER = 2
"""One past the login_history retention (archived by the run), one recent."""


@dataclass
class Seeded:
    rows: dict[str, int]
    held_entities: int
    users_due: list[str]
    users_unheld: list[str]
    """Active users none of whose rows is under a hold: an erasure request completes."""


async def seed_coordinator(engine: AsyncEngine, scale: int) -> tuple[Seeded, dict[str, list[str]]]:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await create_seed_tables(conn)
        await conn.run_sync(users.metadata.create_all)
        data = await populate(conn, now, per_category=scale)
        user_rows = _users(now, scale)
        await conn.execute(insert(users), user_rows)
        await conn.execute(insert(logins), _logins(now, user_rows))
        due_users = [
            u["id"]
            for u in user_rows
            if u["closed_at"] and u["closed_at"] < now - timedelta(days=30)
        ]
        held_users = [f"user:{u}" for u in due_users[: max(1, scale // 20)]]
        types = await entity_types(conn, load_policies(POLICIES))
        await create_hold(
            conn,
            types=types,
            entities=data.holds,
            reason="Litigation hold, case 2026-117 (demo)",
            created_by="legal@example.com",
            now=now,
            hold_id="case-2026-117",
        )
        await create_hold(
            conn,
            types=types,
            entities=held_users,
            reason="Data subject dispute (demo)",
            created_by="dpo@example.com",
            now=now,
            hold_id="dispute-42",
        )
        counts = {}
        for table in [*seed_metadata.sorted_tables, users, logins]:
            counts[table.name] = int(
                await conn.scalar(select(func.count()).select_from(table)) or 0
            )
    # Every coordinator order belongs to some user in billing, under the same id.
    orders_of: dict[str, list[str]] = {u["id"]: [] for u in user_rows}
    user_ids = list(orders_of)
    all_orders = [str(i) for ids in data.ids["purchase_records"].values() for i in ids]
    for n, order_id in enumerate(all_orders):
        orders_of[user_ids[n % len(user_ids)]].append(order_id)
    unheld = _active_unheld(user_rows, scale)
    return Seeded(counts, len(data.holds) + len(held_users), due_users, unheld), orders_of


def _active_unheld(user_rows: list[dict[str, Any]], scale: int) -> list[str]:
    # seed_data names row n's user `user-{n % 97}`, with n = category * 1000 + k: the
    # held category's rows name these users (all 97 of them from scale 97 on).
    base = CATEGORIES.index("held") * 1000
    held = {(base + k) % USER_MODULUS for k in range(scale)}
    return [u["id"] for n, u in enumerate(user_rows) if u["status"] == "active" and n not in held]


def _users(now: datetime, scale: int) -> list[dict[str, Any]]:
    rows = []
    for n in range(3 * scale):
        kind = n % 6  # half closed long ago, a sixth closed recently, a third active
        closed_at = (
            now - timedelta(days=31 + n % 400)
            if kind < 3
            else now - timedelta(days=n % 20)
            if kind == 3
            else None
        )
        rows.append(
            {
                "id": f"user-{n:05d}",
                "email": f"user{n}@example.com",
                "status": "closed" if closed_at else "active",
                "closed_at": closed_at,
            }
        )
    return rows


def _logins(now: datetime, user_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": n * LOGINS_PER_USER + k,
            "user_id": user["id"],
            "ip": f"10.1.{n % 256}.{k}",
            "logged_in_at": now - timedelta(days=200 if k == 0 else 2),
        }
        for n, user in enumerate(user_rows)
        for k in range(LOGINS_PER_USER)
    ]


async def seed_services(url: str, orders_of: dict[str, list[str]]) -> dict[str, int]:
    user_ids = list(orders_of)
    # Billing's orders take the coordinator's order ids; every other service its defaults.
    options: dict[str, dict[str, Any]] = {billing.SERVICE: {"order_ids": orders_of}}
    return {e.name: await e.seed(url, user_ids, **options.get(e.name, {})) for e in EXAMPLES}


async def _seeded_already(conn: AsyncConnection) -> bool:
    names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    return users.name in names


async def seed_once(database_url: str, services_url: str, scale: int) -> str:
    """Seed a migrated coordinator database and the services' database, unless done before."""
    engine = make_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            if await _seeded_already(conn):
                return "already seeded: left as it is"
        seeded, orders_of = await seed_coordinator(engine, scale)
    finally:
        await engine.dispose()
    await ensure_database(services_url)
    service_rows = await seed_services(services_url, orders_of)
    return (
        f"seeded {sum(seeded.rows.values())} rows in {len(seeded.rows)} tables, "
        f"{seeded.held_entities} entities under legal hold; services: "
        + ", ".join(f"{name} {rows}" for name, rows in service_rows.items())
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo seed",
        description="Seed the demo data into RETENTION_DATABASE_URL (migrated) and "
        "RETENTION_SERVICE_DATABASE_URL, once.",
    )
    parser.add_argument("--scale", type=int, default=100, help="rows per category and table")
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error("--scale must be at least 1")
    configure_logging("WARNING")
    # First, so every other container finds its key (compose mounts the folder).
    ensure_keys()
    database_url = Settings().database_url.get_secret_value()
    print(asyncio.run(seed_once(database_url, service_database_url(), args.scale)), file=sys.stderr)
    return 0
