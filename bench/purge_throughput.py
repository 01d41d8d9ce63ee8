"""Rows/s of the policy engine's delete, anonymize and archive next to one raw DELETE.

    .venv/bin/python -m bench.purge_throughput [--rows 100000] [--held 0.01] [--subject]
        [--batch 5000] [--profile] [--only delete+outbox ...]

Each scenario starts from the same table of `--rows` rows, all past retention, with
`--held` of them under one legal hold, on a scratch database that is dropped afterwards.
With `--subject` the policy maps its rows to subjects (`user:<user_id>`, 1000 users) and
one user is under a subject hold too: the cost of the subject half of the hold check.
`--profile` adds, per engine scenario, each kind of statement's count and total time
(SQLAlchemy cursor events, plus the commits), i.e. the round trips of a batch.
Each scenario also reports its CPU per row, which a loaded machine bends less than its
wall time: this process's (Python; the raw statement's is the driver's) and its
PostgreSQL backends' (read from /proc: PostgreSQL must run on this machine).
The raw baseline is the single statement the engine replaces:
`DELETE FROM t WHERE ts < cutoff AND NOT EXISTS (active hold on the row)` — no batches,
no audit, no outbox, one long transaction holding every row lock.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.proc_cpu import backend_cpu
from coordinator.clock import FrozenClock
from coordinator.copies.crypto.provider import write_kek
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
    batch_size: {batch}
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
            conn,
            parse_policies(POLICY.format(action="delete", fan_out="false", extra=extra, batch=1)),
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


# What each statement of a batch is, by its text (first match wins).
KINDS = (
    ("hold lock", r"pg_advisory_xact_lock_shared"),
    ("chain lock", r"pg_advisory_xact_lock\("),
    ("policy lock", r"pg_try_advisory_lock|pg_advisory_unlock"),
    ("chain head", r"FROM audit_log ORDER BY"),
    ("outbox row + audit entry", r"^WITH batch AS \(INSERT INTO retention_outbox_batches"),
    ("audit entry", r"^INSERT INTO audit_log"),
    ("choose + act", r"^WITH .*(DELETE|UPDATE)"),
    ("select and lock", r"FOR UPDATE"),
    ("ledger read", r"FROM retention_anonymized"),
    ("anonymize mark", r"retention_anonymize_marks"),
    ("key store / archive / vault", r"_archive|vault|data_key|retention_keys"),
    ("plan counts", r"count\("),
    ("ids' text", r"unnest"),
)


class Profile:
    """Count and time every statement (by kind) and commit of one engine's connections."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()

    def add(self, kind: str, seconds: float) -> None:
        self.count[kind] += 1
        self.seconds[kind] += seconds

    def attach(self, engine: AsyncEngine) -> None:
        started: dict[int, float] = {}

        def before(conn: object, *_: object) -> None:
            started[id(conn)] = time.perf_counter()

        def after(conn: object, _cursor: object, statement: str, *_: object) -> None:
            flat = " ".join(statement.split())
            kind = next((k for k, p in KINDS if re.search(p, flat)), "other: " + flat[:40])
            self.add(kind, time.perf_counter() - started.pop(id(conn)))

        event.listen(engine.sync_engine, "before_cursor_execute", before)
        event.listen(engine.sync_engine, "after_cursor_execute", after)

    def print(self, batches: int) -> None:
        print(f"  {'statement':34} {'count':>6} {'ms':>8} {'ms/batch':>9}")
        for kind, seconds in self.seconds.most_common():
            print(
                f"  {kind[:34]:34} {self.count[kind]:6d} {seconds * 1000:8.1f} "
                f"{seconds * 1000 / max(batches, 1):9.2f}"
            )


class Cpu:
    """CPU seconds of this process and of the scratch database's backends over a phase."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.database = url.rpartition("/")[2]
        self.python = 0.0
        self.postgres = 0.0

    async def start(self) -> None:
        self._python = time.process_time()
        self._backends = await backend_cpu(self.url, [self.database])

    async def stop(self) -> None:
        """Call it before the phase's engine is disposed of: its backends still live."""
        self.python = time.process_time() - self._python
        after = await backend_cpu(self.url, [self.database])
        self.postgres = sum(s - self._backends.get(pid, 0.0) for pid, s in after.items())


async def _engine_run(
    url: str, action: str, fan_out: bool, subject: bool, batch: int, profile: Profile | None
) -> tuple[int, float, Cpu]:
    extra = (ANONYMIZE if action == "anonymize" else "") + (SUBJECT if subject else "")
    policy_set = parse_policies(
        POLICY.format(action=action, fan_out=str(fan_out).lower(), extra=extra, batch=batch)
    )
    engine = make_engine(url)
    if profile is not None:
        profile.attach(engine)
    with tempfile.TemporaryDirectory() as keys:
        # The archive seals its rows under data keys wrapped by a KEK.
        write_kek(Path(keys) / "kek.hex")
        settings = Settings(hash_secret=BENCH_KEY, kek_file=Path(keys) / "kek.hex")
        runner = Runner(engine, policy_set, settings, clock=FrozenClock(NOW))
        cpu = Cpu(url)
        await cpu.start()
        start = time.perf_counter()
        report = await runner.run()
        elapsed = time.perf_counter() - start
        await cpu.stop()
    await engine.dispose()
    assert report.ok, report.as_dict()
    return report.outcomes[0].processed, elapsed, cpu


async def _raw_delete(url: str) -> tuple[int, float, Cpu]:
    engine = make_engine(url)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))  # the backend exists before the snapshot
    cpu = Cpu(url)
    await cpu.start()
    start = time.perf_counter()
    async with engine.begin() as conn:
        result = await conn.execute(
            text(RAW_DELETE), {"cutoff": NOW - timedelta(days=30), "now": NOW}
        )
    elapsed = time.perf_counter() - start
    await cpu.stop()
    await engine.dispose()
    return result.rowcount, elapsed, cpu


SCENARIOS = {
    "delete": ("engine delete", "delete", False),
    "delete+outbox": ("engine delete + outbox", "delete", True),
    "anonymize+outbox": ("engine anonymize + outbox", "anonymize", True),
    "archive+outbox": ("engine archive + outbox", "archive", True),
}


async def main(
    rows: int, held: float, subject: bool, batch: int, profile: bool, only: list[str]
) -> None:
    url = await infra.create_database(infra.database_url(), "bench_purge")
    profiles: dict[str, Profile] = {}
    commits = AsyncAdapt_asyncpg_connection.commit
    try:
        await upgrade(url)
        results: list[tuple[str, int, float, Cpu]] = []
        await _reset(url, rows, held, subject)
        results.append(("raw DELETE … NOT EXISTS", *await _raw_delete(url)))
        for label, action, fan_out in (SCENARIOS[name] for name in only):
            await _reset(url, rows, held, subject)
            if profile:
                profiles[label] = Profile()
                AsyncAdapt_asyncpg_connection.commit = _timed_commit(commits, profiles[label])
            results.append(
                (
                    label,
                    *await _engine_run(url, action, fan_out, subject, batch, profiles.get(label)),
                )
            )
        _, raw_rows, raw_seconds, raw_cpu = results[0]
        raw_rate = raw_rows / raw_seconds
        raw_us = 1e6 * (raw_cpu.python + raw_cpu.postgres) / raw_rows
        mapped = ", subject-mapped (1 subject held)" if subject else ""
        load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"{rows} rows, {held:.0%} held{mapped}, batch {batch}; load {load}\n")
        print(
            f"{'scenario':28} {'rows':>7} {'seconds':>8} {'rows/s':>9} {'vs raw':>7}"
            f" {'py µs/row':>10} {'pg µs/row':>10} {'raw/cpu':>8}"
        )
        for label, processed, seconds, cpu in results:
            rate = processed / seconds
            py, pg = (1e6 * s / processed for s in (cpu.python, cpu.postgres))
            print(
                f"{label:28} {processed:7d} {seconds:8.2f} {rate:9.0f} {rate / raw_rate:7.2f}"
                f" {py:10.2f} {pg:10.2f} {raw_us / (py + pg):8.2f}"
            )
        for label, got in profiles.items():
            batches = got.count["hold lock"]
            print(f"\n{label}: {batches} batch transactions")
            got.print(batches)
    finally:
        AsyncAdapt_asyncpg_connection.commit = commits  # type: ignore[method-assign]
        await infra.drop_database(url)


def _timed_commit(commit: Any, profile: Profile) -> Any:
    def timed(self: AsyncAdapt_asyncpg_connection) -> None:
        start = time.perf_counter()
        commit(self)
        profile.add("COMMIT", time.perf_counter() - start)

    return timed


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--held", type=float, default=0.01)
    parser.add_argument("--subject", action="store_true", help="map rows to subjects")
    parser.add_argument("--batch", type=int, default=5000, help="the policies' batch_size")
    parser.add_argument("--profile", action="store_true", help="statements per batch")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(SCENARIOS),
        default=list(SCENARIOS),
        help="the engine scenarios to run (the raw statement always runs)",
    )
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.held, args.subject, args.batch, args.profile, args.only))
