"""Rows/s of the policy engine's delete, anonymize and archive next to one raw DELETE.

    .venv/bin/python -m bench.purge_throughput [--rows 100000] [--held 0.01] [--subject]

Each scenario starts from the same table of `--rows` rows, all past retention, with
`--held` of them under one legal hold, on a scratch database that is dropped afterwards.
With `--subject` the policy maps its rows to subjects (`user:<user_id>`, 1000 users) and
one user is under a subject hold too: the cost of the subject half of the hold check.
The raw baseline is the single statement the engine replaces:
`DELETE FROM t WHERE ts < cutoff AND NOT EXISTS (active hold on the row)` — no batches,
no audit, no outbox, one long transaction holding every row lock.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from coordinator.clock import FrozenClock
from coordinator.policy.model import parse_policies
from coordinator.purge.holds import create_hold, entity_types
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from tests import infra

NOW = datetime.now(UTC) - timedelta(minutes=5)
BENCH_KEY = "bench-only-key"

POLICY = """
policies:
  - name: bench
    table: bench_rows
    entity_type: row
    timestamp_column: created_at
    retention: 30d
    action: {action}
    legal_basis: benchmark
    fan_out: {fan_out}
    batch_size: 5000
{extra}services:
  - {{name: bench, owner: bench, handles: {{row: [delete, anonymize]}}}}
"""
SUBJECT = """    subject: {entity_type: user, column: user_id}
"""
ANONYMIZE = """    anonymize:
      name: hash
      email: fake_email
      address: redact
      phone: "null"
"""

RAW_DELETE = """
DELETE FROM bench_rows r
WHERE r.created_at < :cutoff
  AND NOT EXISTS (
    SELECT 1 FROM legal_hold_entities e JOIN legal_holds h ON h.id = e.hold_id
    WHERE e.entity_type = 'row' AND e.entity_id = r.id::text
      AND h.released_at IS NULL AND (h.expires_at IS NULL OR h.expires_at > :now))
"""


async def _reset(url: str, rows: int, held: float, subject: bool) -> None:
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS bench_rows, bench_rows_archive"))
        await conn.execute(
            text(
                "TRUNCATE legal_hold_entities, legal_holds, retention_outbox_batches, "
                "retention_outbox_marks, retention_outbox_cursors, "
                "retention_anonymized, retention_anonymize_marks, retention_policy_results, "
                "retention_runs, audit_log"
            )
        )
        await conn.execute(
            text(
                "CREATE TABLE bench_rows (id bigint PRIMARY KEY, name text, email text, "
                "address text, phone text, created_at timestamptz, user_id bigint)"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO bench_rows SELECT g, 'Name ' || g, 'user' || g || '@mail.example', "
                "g || ' Main Street', '+44' || g, "
                "CAST(:old AS timestamptz) - g * interval '1 second', g % 1000 "
                "FROM generate_series(1, :rows) g"
            ),
            {"rows": rows, "old": NOW - timedelta(days=60)},
        )
        await conn.execute(text("CREATE INDEX ON bench_rows (created_at)"))
        step = max(1, round(1 / held)) if held else 0
        extra = SUBJECT if subject else ""
        types = await entity_types(
            conn, parse_policies(POLICY.format(action="delete", fan_out="false", extra=extra))
        )
        if subject:
            await create_hold(
                conn, types=types, entities=["user:7"], reason="bench", created_by="bench", now=NOW
            )
        if step:
            await create_hold(
                conn,
                types=types,
                entities=[f"row:{i}" for i in range(1, rows + 1, step)],
                reason="bench",
                created_by="bench",
                now=NOW,
            )
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE"))
    await engine.dispose()


async def _engine_run(url: str, action: str, fan_out: bool, subject: bool) -> tuple[int, float]:
    extra = (ANONYMIZE if action == "anonymize" else "") + (SUBJECT if subject else "")
    policy_set = parse_policies(
        POLICY.format(action=action, fan_out=str(fan_out).lower(), extra=extra)
    )
    engine = make_engine(url)
    runner = Runner(engine, policy_set, Settings(hash_secret=BENCH_KEY), clock=FrozenClock(NOW))
    start = time.perf_counter()
    report = await runner.run()
    elapsed = time.perf_counter() - start
    await engine.dispose()
    assert report.ok, report.as_dict()
    return report.outcomes[0].processed, elapsed


async def _raw_delete(url: str) -> tuple[int, float]:
    engine = make_engine(url)
    start = time.perf_counter()
    async with engine.begin() as conn:
        result = await conn.execute(
            text(RAW_DELETE), {"cutoff": NOW - timedelta(days=30), "now": NOW}
        )
    elapsed = time.perf_counter() - start
    await engine.dispose()
    return result.rowcount, elapsed


async def main(rows: int, held: float, subject: bool) -> None:
    url = await infra.create_database(infra.database_url(), "bench_purge")
    try:
        await upgrade(url)
        results: list[tuple[str, int, float]] = []
        await _reset(url, rows, held, subject)
        results.append(("raw DELETE … NOT EXISTS", *await _raw_delete(url)))
        for label, action, fan_out in (
            ("engine delete", "delete", False),
            ("engine delete + outbox", "delete", True),
            ("engine anonymize + outbox", "anonymize", True),
            ("engine archive + outbox", "archive", True),
        ):
            await _reset(url, rows, held, subject)
            results.append((label, *await _engine_run(url, action, fan_out, subject)))
        raw_rate = results[0][1] / results[0][2]
        mapped = ", subject-mapped (1 subject held)" if subject else ""
        print(f"{rows} rows, {held:.0%} held{mapped}, batch 5000\n")
        print(f"{'scenario':28} {'rows':>7} {'seconds':>8} {'rows/s':>9} {'vs raw':>7}")
        for label, processed, seconds in results:
            rate = processed / seconds
            print(f"{label:28} {processed:7d} {seconds:8.2f} {rate:9.0f} {rate / raw_rate:7.2f}")
    finally:
        await infra.drop_database(url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--held", type=float, default=0.01)
    parser.add_argument("--subject", action="store_true", help="map rows to subjects")
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.held, args.subject))
