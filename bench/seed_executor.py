"""The seed article's `RetentionExecutor` and `LegalHoldManager.check_ids`, reimplemented.

Faithful on purpose, slowness and bugs included, so the benchmark measures the design
the product replaced: `SELECT id … LIMIT batch` with no order and no keyset (every batch
re-scans from the start of the table), holds loaded as one JSON blob per batch and
filtered in Python, `DELETE … WHERE id IN (:id_0, :id_1, …)` with one parameter per id,
a commit per batch, and one awaited `send_and_wait` per event. Lives in `bench/` only.

Two deviations, both to keep the benchmark bounded and both reported:
* the article's anonymize loop re-selects rows it already anonymized (nothing in its
  WHERE excludes them), so it never ends; we stop it at the first batch with no new id
  and report `nonterminating`;
* the cutoff uses an aware `datetime.now(UTC)` instead of the deprecated `utcnow()`.
The hold check is the article's: JSON ids are strings, candidate ids are ints (or
UUIDs), so `held_ids.intersection(ids)` is empty and held rows get purged — counted by
the correctness check, not patched here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.data import BATCH_SIZE, POLICIES
from demo.seed_data import SEED_POLICIES


@dataclass
class SeedResult:
    policy: str
    action: str
    processed: int = 0
    held_skipped: int = 0
    seconds: float = 0.0
    nonterminating: bool = False
    errors: list[str] = field(default_factory=list)


async def check_ids(conn: AsyncConnection, table: str, ids: list[Any]) -> set[Any]:
    result = await conn.execute(
        text(
            "SELECT record_ids FROM seed_legal_holds "
            "WHERE :table = ANY(string_to_array(tables, ',')) "
            "AND (expires_at IS NULL OR expires_at > NOW())"
        ),
        {"table": table},
    )
    held_ids: set[Any] = set()
    for row in result.fetchall():
        record_map = json.loads(row[0])
        held_ids.update(record_map.get(table, []))
    return held_ids.intersection(ids)


def in_params(ids: list[Any]) -> tuple[str, dict[str, Any]]:
    placeholders = ", ".join(f":id_{i}" for i in range(len(ids)))
    return placeholders, {f"id_{i}": id_ for i, id_ in enumerate(ids)}


async def execute_policy(conn: AsyncConnection, policy: str) -> SeedResult:
    seed, spec = SEED_POLICIES[policy], POLICIES[policy]
    table, action = seed.table.name, spec["action"]
    result = SeedResult(policy, action)
    start = time.monotonic()
    cutoff = datetime.now(UTC) - seed.retention
    if not seed.table.c[seed.timestamp].type.timezone:  # type: ignore[attr-defined]
        cutoff = cutoff.replace(tzinfo=None)
    seen: set[Any] = set()
    while True:
        where = f"{seed.timestamp} < :cutoff"
        if spec["conditions"]:
            where += f" AND ({spec['conditions']})"
        rows = await conn.execute(
            text(f"SELECT id FROM {table} WHERE {where} LIMIT :batch_size"),
            {"cutoff": cutoff, "batch_size": BATCH_SIZE},
        )
        candidate_ids = [row[0] for row in rows.fetchall()]
        if not candidate_ids:
            break
        held_ids = await check_ids(conn, table, candidate_ids)
        actionable = [id_ for id_ in candidate_ids if id_ not in held_ids]
        result.held_skipped += len(held_ids)
        if not actionable:
            break
        new = [id_ for id_ in actionable if id_ not in seen]
        if not new:
            result.nonterminating = True
            await conn.rollback()
            break
        try:
            placeholders, params = in_params(actionable)
            if action == "delete":
                await conn.execute(
                    text(f"DELETE FROM {table} WHERE id IN ({placeholders})"), params
                )
            elif action == "anonymize":
                columns = ["customer_name", "email", "shipping_address", "phone"]
                assignments = ", ".join(f"{c} = '[ANONYMIZED]'" for c in columns)
                await conn.execute(
                    text(f"UPDATE {table} SET {assignments} WHERE id IN ({placeholders})"), params
                )
            else:
                await conn.execute(
                    text(
                        f"INSERT INTO {table}_archive_seed SELECT * FROM {table} "
                        f"WHERE id IN ({placeholders})"
                    ),
                    params,
                )
                await conn.execute(
                    text(f"DELETE FROM {table} WHERE id IN ({placeholders})"), params
                )
            result.processed += len(new)
            seen.update(new)
            await conn.commit()
        except Exception as exc:
            result.errors.append(str(exc)[:200])
            await conn.rollback()
            break
    result.seconds = time.monotonic() - start
    return result
