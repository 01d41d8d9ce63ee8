"""The benchmark's data: a template database every contestant gets a fresh copy of.

The five seed tables (demo/seed_data.py) with `rows // 5` rows each, in id order
= timestamp order = physical order. Per table the first 1 % of ids (the oldest rows,
where the seed's `SELECT … LIMIT` keeps landing) are under legal hold, the last 5 % are
young (inside retention), everything between is due. Holds exist twice: in our
`legal_holds` tables, and as the article's JSON blob (`seed_legal_holds`) for the seed
executor. Copies are made with `CREATE DATABASE … TEMPLATE`, so every contestant starts
from byte-identical tables and statistics.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import text

from coordinator.policy.model import load_policies
from coordinator.purge.holds import create_hold, entity_types
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from demo.seed import POLICIES as DEMO_POLICIES
from demo.seed_data import SEED_POLICIES, create_seed_tables
from tests import infra

HELD_FRACTION = 0.01
YOUNG_FRACTION = 0.05
BATCH_SIZE = 5000  # the article's default, and ours

# policy name → (table, entity type, timestamp column, retention, action, conditions)
POLICIES: dict[str, dict[str, Any]] = {
    "session_logs": {"action": "delete", "conditions": None},
    "analytics_events": {"action": "delete", "conditions": None},
    "purchase_records": {"action": "anonymize", "conditions": None},
    "support_tickets": {"action": "archive", "conditions": "resolved_at IS NOT NULL"},
    "abandoned_carts": {"action": "delete", "conditions": "status = 'abandoned'"},
}
ANONYMIZE = {
    "customer_name": "hash",
    "email": "fake_email",
    "shipping_address": "redact",
    "phone": '"null"',
}


def policy_yaml() -> str:
    """Our policy file for the five tables: the article's policies, each fanning out."""
    lines = ["policies:"]
    for name, spec in POLICIES.items():
        seed = SEED_POLICIES[name]
        lines += [
            f"  - name: {name}",
            f"    table: {seed.table.name}",
            f"    entity_type: {seed.entity_type}",
            f"    timestamp_column: {seed.timestamp}",
            f"    retention: {seed.retention.days}d",
            f"    action: {spec['action']}",
            "    legal_basis: benchmark",
            "    fan_out: true",
            f"    batch_size: {BATCH_SIZE}",
        ]
        if spec["conditions"]:
            lines.append(f'    conditions: "{spec["conditions"]}"')
        if spec["action"] == "anonymize":
            lines.append("    anonymize:")
            lines += [f"      {column}: {strategy}" for column, strategy in ANONYMIZE.items()]
    # One declared service handles every event the policies publish (SPEC §9): nobody
    # acknowledges in this bench, which times purge and publication.
    handled = sorted(
        {
            (
                SEED_POLICIES[name].entity_type,
                "anonymize" if spec["action"] == "anonymize" else "delete",
            )
            for name, spec in POLICIES.items()
        }
    )
    lines += ["services:", "  - name: bench", "    owner: bench", "    handles:"]
    lines += [f"      {entity_type}: [{action}]" for entity_type, action in handled]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Layout:
    """Which ids of each table are held, due and young (ids 1..per_table)."""

    per_table: int
    now: datetime

    @property
    def held(self) -> int:
        return max(1, int(self.per_table * HELD_FRACTION))

    @property
    def young(self) -> int:
        return max(1, int(self.per_table * YOUNG_FRACTION))

    @property
    def due(self) -> int:
        return self.per_table - self.held - self.young

    @property
    def total_due(self) -> int:
        return self.due * len(POLICIES)

    def cutoff(self, policy: str) -> datetime:
        return self.now - SEED_POLICIES[policy].retention


def _id_sql(policy: str, column: str = "g") -> str:
    if policy == "abandoned_carts":  # uuid ids: uuid.UUID(int=g)
        return f"lpad(to_hex({column}), 32, '0')::uuid"
    return column


def _id_value(policy: str, n: int) -> Any:
    return uuid.UUID(int=n) if policy == "abandoned_carts" else n


_COLUMNS = {
    "session_logs": "g, 'user-' || (g % 97), '10.0.' || (g % 256) || '.' || (g % 251)",
    "analytics_events": "g, 'user-' || (g % 97), 'page_view'",
    "purchase_records": (
        "g, 'user-' || (g % 97), 'Customer ' || g, 'customer' || g || '@shop.example', "
        "g || ' Long Road', "
        "'+4420' || lpad(g::text, 7, '0'), 'shipped', g % 500"
    ),
    "support_tickets": "g, 'ticket ' || g, 'closed'",
    "abandoned_carts": "lpad(to_hex(g), 32, '0')::uuid, 'user-' || (g % 97), 'abandoned'",
}


async def build_template(rows: int, label: str) -> tuple[str, Layout]:
    """Create, fill, index and analyze the template database; return its URL and layout."""
    url = await infra.create_database(infra.database_url(), label)
    await upgrade(url)
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            now = (await conn.execute(text("SELECT now()"))).scalar_one()
            layout = Layout(per_table=rows // len(POLICIES), now=now)
            await create_seed_tables(conn)
            for policy in POLICIES:
                seed = SEED_POLICIES[policy]
                cutoff = layout.cutoff(policy)
                naive = not seed.table.c[seed.timestamp].type.timezone  # type: ignore[attr-defined]
                stamp = (
                    "CASE WHEN g > :n - :young "
                    "THEN CAST(:cutoff AS timestamptz) + interval '1 day' "
                    "+ g * interval '1 second' "
                    "ELSE CAST(:cutoff AS timestamptz) - interval '1 day' "
                    "- (:n - g) * interval '1 second' END"
                )
                if naive:
                    stamp = f"({stamp}) AT TIME ZONE 'UTC'"
                await conn.execute(
                    text(
                        f"INSERT INTO {seed.table.name} "
                        f"SELECT {_COLUMNS[policy]}, {stamp} FROM generate_series(1, :n) g"
                    ),
                    {"n": layout.per_table, "young": layout.young, "cutoff": cutoff},
                )
                await conn.execute(text(f"CREATE INDEX ON {seed.table.name} ({seed.timestamp})"))
            entities = [
                f"{SEED_POLICIES[p].entity_type}:{_id_value(p, n)}"
                for p in POLICIES
                for n in range(1, layout.held + 1)
            ]
            await create_hold(
                conn,
                entities=entities,
                types=await entity_types(conn, load_policies(DEMO_POLICIES)),
                reason="bench",
                created_by="bench",
                now=layout.now,
            )
            # The article's hold: one row, record ids as a JSON blob of strings per table.
            await conn.execute(
                text(
                    "CREATE TABLE seed_legal_holds (id text PRIMARY KEY, reason text, "
                    "tables text, record_ids text, created_by text, "
                    "created_at timestamptz, expires_at timestamptz)"
                )
            )
            blob = {
                SEED_POLICIES[p].table.name: [
                    str(_id_value(p, n)) for n in range(1, layout.held + 1)
                ]
                for p in POLICIES
            }
            await conn.execute(
                text(
                    "INSERT INTO seed_legal_holds VALUES ('hold-bench', 'bench', :tables, "
                    ":ids, 'bench', now(), NULL)"
                ),
                {"tables": ",".join(blob), "ids": json.dumps(blob)},
            )
            await conn.execute(
                text("CREATE TABLE support_tickets_archive_seed (LIKE support_tickets)")
            )
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE"))
    finally:
        await engine.dispose()
    return url, layout


async def copy_of(template: str, label: str) -> str:
    """A fresh database cloned from `template` (which must have no open connections)."""
    name = f"{label}_{uuid.uuid4().hex[:8]}"
    dsn = infra.with_database(template, "postgres").replace("postgresql+asyncpg", "postgresql")
    conn = await asyncpg.connect(dsn)
    try:
        tpl = template.rpartition("/")[2]
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{tpl}"')
    finally:
        await conn.close()
    return infra.with_database(template, name)


async def check(url: str, layout: Layout, *, archive: str) -> dict[str, int]:
    """Held or young rows touched, and due rows left unprocessed, over all five tables."""
    n, h, y = layout.per_table, layout.held, layout.young
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        held_touched = young_touched = due_missed = lost = 0
        for policy, spec in POLICIES.items():
            table = SEED_POLICIES[policy].table.name
            key = "id"
            if policy == "abandoned_carts":  # uuid.UUID(int=n) back to n
                key = "('x' || right(replace(id::text, '-', ''), 16))::bit(64)::bigint"
            intact = "TRUE"
            if spec["action"] == "anonymize":
                intact = "email = 'customer' || id || '@shop.example'"
            row = await conn.fetchrow(
                f"SELECT count(*) FILTER (WHERE k <= $1 AND intact) AS held, "
                f"count(*) FILTER (WHERE k > $2::bigint - $3::bigint AND intact) AS young, "
                f"count(*) FILTER (WHERE k > $1::bigint AND k <= $2::bigint - $3::bigint "
                f"AND intact) AS due "
                f"FROM (SELECT {key} AS k, {intact} AS intact FROM {table}) t",
                h,
                n,
                y,
            )
            held_touched += h - row["held"]
            young_touched += y - row["young"]
            due_missed += row["due"]
            if spec["action"] == "archive":
                archived = await conn.fetchval(f"SELECT count(*) FROM {table}_{archive}")
                lost += max(0, (layout.due - row["due"]) - archived)
        return {
            "held_touched": held_touched,
            "young_touched": young_touched,
            "due_missed": due_missed,
            "archive_lost": lost,
        }
    finally:
        await conn.close()


__all__ = [
    "BATCH_SIZE",
    "POLICIES",
    "Layout",
    "build_template",
    "check",
    "copy_of",
    "policy_yaml",
]
