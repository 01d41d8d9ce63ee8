"""The fault suite's world: coordinator tables with labelled rows, matching service data.

`prepare_world` writes, on a `Stack`:

* the five seed tables of `demo.seed_data` (every row in a labelled category)
  and one more, `fault_users`, whose `user` entities the three example services hold;
* the services' data through their own `seed` functions: every example service on the
  core SDK (`services.EXAMPLES`) seeds its rows for every fault user (due, held and young
  alike), and the service that handles orders gets an order for every row of the
  coordinator's `orders` table (its `purchase_records` policy anonymizes them and fans
  out to that service);
* a legal hold over every `held` row, and a policy file (the seed policies with small
  batches, plus `inactive_users`) for `retention run`.

It also records a checksum of every row that must stay untouched, so the invariant
check (tests/faults/invariants.py) can prove nothing held or young changed.

Times are real: `retention run` uses the system clock. Rows written `at_cutoff` are due
by the time any run starts (its cutoff is later than the one they were written at), so
here they count as processed; `young` rows are a day inside retention and stay.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Column, DateTime, MetaData, Table, Text, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.policy.model import load_policies
from coordinator.purge.holds import create_hold, entity_types
from coordinator.store.db import make_engine
from demo.seed_data import (
    PROCESSED,
    SeedData,
    create_seed_tables,
    populate,
)
from services import EXAMPLES, billing
from tests.e2e.harness import Stack
from tests.infra import ROOT

__all__ = [
    "ENTITY_SERVICES",
    "HASH_SECRET",
    "ORDERS_POLICY",
    "PROCESSED_LIVE",
    "USERS_POLICY",
    "PolicyFacts",
    "World",
    "fault_users",
    "prepare_world",
    "row_checksums",
    "seed_services",
    "user_tables",
]

HASH_SECRET = "faults-hash-secret"
USERS_POLICY = "inactive_users"
USERS_RETENTION = timedelta(days=365)
ORDER_OWNER = "shop-ledger"
"""The billing customer every coordinator order belongs to (never erased itself)."""
ORDERS_POLICY = "purchase_records"

PROCESSED_LIVE = PROCESSED | {"at_cutoff"}
"""Processed in a real-time run: the cutoff has moved past rows written at the old one."""

ENTITY_SERVICES: Mapping[str, frozenset[str]] = {
    entity_type: frozenset(
        e.name for e in EXAMPLES if not e.faust and entity_type in e.entity_types
    )
    for entity_type in {t for e in EXAMPLES for t in e.entity_types}
}
"""Which example services on the core SDK (the ones the fault scenarios run) register for
which entity type; every other type: none."""
SERVICES = tuple(sorted({s for names in ENTITY_SERVICES.values() for s in names}))
"""The example services on the core SDK that handle anything."""

SEED_POLICY_FILE = ROOT / "tests" / "data" / "seed_policies.yaml"

fault_metadata = MetaData()
fault_users = Table(
    "fault_users",
    fault_metadata,
    Column("id", Text, primary_key=True),
    Column("email", Text, nullable=False),
    Column("last_seen_at", DateTime(timezone=True)),
)


@dataclass(frozen=True, slots=True)
class PolicyFacts:
    """What the invariant check needs to know of one policy."""

    name: str
    table: str
    entity_type: str
    action: str
    fan_out: bool


@dataclass
class World:
    """Everything written, by policy and category, and how it must end."""

    data: SeedData
    policies: dict[str, PolicyFacts]
    policy_file: Path
    untouched_checksums: dict[str, dict[str, str]] = field(default_factory=dict)
    """Policy → entity id → md5 of the row, for every row that must not change."""
    subject_events: int = 0
    """Erasure requests' subject events (policy `erasure_request`) a scenario filed."""
    refiled: Counter[str] = field(default_factory=Counter)
    """Subject id → erasure requests filed for it after its first, each with a subject
    event of its own."""
    service_rows: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(service table, user) → rows seeded, for every table of `user_tables()`."""

    def ids(self, policy: str, *categories: str) -> set[str]:
        return {str(i) for c in categories for i in self.data.ids[policy].get(c, [])}

    def processed(self, policy: str) -> set[str]:
        return self.ids(policy, *PROCESSED_LIVE)

    def held(self, policy: str) -> set[str]:
        return self.ids(policy, "held")

    def young(self, policy: str) -> set[str]:
        """Rows not due: inside retention, NULL timestamp, or excluded by conditions."""
        return self.ids(policy, "young", "null_ts", "excluded")

    @property
    def expected_events(self) -> int:
        per_entity = sum(len(self.processed(p.name)) for p in self.policies.values() if p.fan_out)
        return per_entity + self.subject_events

    def expected_effects(self, service: str) -> int:
        """Effects `service` applies in a complete run: one per processed entity of every
        fan-out policy whose entity type it registers for."""
        return sum(
            len(self.processed(p.name))
            for p in self.policies.values()
            if p.fan_out and service in ENTITY_SERVICES.get(p.entity_type, frozenset())
        )

    @property
    def expected_acks(self) -> int:
        """Acks of a complete run: one per effect of every example service on the core SDK."""
        return sum(self.expected_effects(s) for s in SERVICES)

    def busiest_service(self) -> str:
        """The example service on the core SDK with the most effects to apply (the one
        that handles more than users), so a fault aimed at it lands mid-work."""
        return max(SERVICES, key=self.expected_effects)


def user_tables() -> list[Table]:
    """Every table of an example service on the core SDK that holds rows per user."""
    return [table for e in EXAMPLES if not e.faust for table in e.tables if "user_id" in table.c]


async def seed_services(url: str, world: World, users: Sequence[str]) -> None:
    """Each example service on the core SDK seeds its rows for `users` (its own `seed`,
    its own defaults); how many rows each user got per table goes into `world`."""
    for example in EXAMPLES:
        if not example.faust:
            await example.seed(url, users)
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            for table in user_tables():
                counts = await conn.execute(
                    select(table.c.user_id, func.count())
                    .where(table.c.user_id.in_(users))
                    .group_by(table.c.user_id)
                )
                for user, count in counts:
                    world.service_rows[(table.name, user)] = count
    finally:
        await engine.dispose()


def _policy_file(path: Path, *, batch_size: int) -> dict[str, PolicyFacts]:
    document = yaml.safe_load(SEED_POLICY_FILE.read_text())
    policies: list[dict[str, Any]] = document["policies"]
    policies.append(
        {
            "name": USERS_POLICY,
            "table": str(fault_users.name),
            "entity_type": "user",
            "timestamp_column": "last_seen_at",
            "retention": f"{USERS_RETENTION.days}d",
            "action": "delete",
            "legal_basis": "Storage limitation (inactive accounts)",
            "fan_out": True,
        }
    )
    for policy in policies:
        # Small batches: many transactions per run, so a kill lands between or inside them.
        policy["batch_size"] = batch_size
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return {
        p["name"]: PolicyFacts(
            p["name"], p["table"], p["entity_type"], p["action"], bool(p.get("fan_out"))
        )
        for p in policies
    }


async def _populate_users(conn: AsyncConnection, now: datetime, data: SeedData, users: int) -> None:
    cutoff = now - USERS_RETENTION
    held, young = max(2, users // 5), max(2, users // 5)
    categories = {
        "due": [cutoff - timedelta(days=1 + k) for k in range(users)],
        "held": [cutoff - timedelta(days=2 + k) for k in range(held)],
        "young": [cutoff + timedelta(days=1, hours=k) for k in range(young)],
        "null_ts": [None, None],
    }
    rows: list[dict[str, Any]] = []
    data.ids[USERS_POLICY] = {}
    for category, stamps in categories.items():
        for k, ts in enumerate(stamps):
            user = f"fu-{category}-{k:04d}"
            data.ids[USERS_POLICY].setdefault(category, []).append(user)
            rows.append({"id": user, "email": f"{user}@example.com", "last_seen_at": ts})
            if category == "held":
                data.holds.append(f"user:{user}")
    await conn.run_sync(fault_metadata.create_all)
    await conn.execute(insert(fault_users), rows)


async def row_checksums(
    conn: AsyncConnection, world: World, policy: str, ids: set[str]
) -> dict[str, str]:
    """md5 of each row's full text, by entity id (rows that no longer exist are absent)."""
    if not ids:
        return {}
    table = world.policies[policy].table
    # `table` comes from our own policy file (a fixed set of names), not from input.
    rows = await conn.execute(
        text(f'SELECT t.id::text, md5(t::text) FROM "{table}" t WHERE t.id::text = ANY(:ids)'),
        {"ids": sorted(ids)},
    )
    return {row[0]: row[1] for row in rows}


async def prepare_world(
    stack: Stack, directory: Path, *, per_category: int = 3, users: int = 20, batch_size: int = 2
) -> World:
    """Seed the coordinator and the services; create the holds and the policy file."""
    policies = _policy_file(directory / "policies.yaml", batch_size=batch_size)
    now = datetime.now(UTC)
    engine = stack.engine()
    try:
        async with engine.begin() as conn:
            await create_seed_tables(conn)
            data = await populate(conn, now, per_category=per_category)
            await _populate_users(conn, now, data, users)
            await create_hold(
                conn,
                types=await entity_types(conn, load_policies(directory / "policies.yaml")),
                entities=data.holds,
                reason="litigation (fault suite)",
                created_by="legal",
                now=now,
            )
        world = World(data, policies, directory / "policies.yaml")
        async with engine.connect() as conn:
            for name in policies:
                untouched = world.held(name) | world.young(name)
                world.untouched_checksums[name] = await row_checksums(conn, world, name, untouched)
    finally:
        await engine.dispose()
    every_user = sorted(world.ids(USERS_POLICY, *data.ids[USERS_POLICY]))
    await seed_services(stack.services_url, world, every_user)
    # Billing's own seed option links its orders to the coordinator's order ids.
    order_ids = sorted(world.ids(ORDERS_POLICY, *data.ids[ORDERS_POLICY]))
    await billing.seed(stack.services_url, [ORDER_OWNER], order_ids={ORDER_OWNER: order_ids})
    return world
