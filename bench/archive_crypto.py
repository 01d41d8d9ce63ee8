"""The encrypted archive against the plain one it replaced: archived rows per second.

    python -m bench.archive_crypto        # BENCH_ARCHIVE_ROWS=50000, batch 1000

Plain: the former archive statement, `WITH moved AS (DELETE … RETURNING *) INSERT INTO
<table>_archive SELECT …`, one per batch of ids in keyset order, nothing else. Encrypted:
`retention run`'s engine (`Runner`) on an archive policy with a subject: the same delete,
the rows sealed in Python under 1 of `BENCH_ARCHIVE_SUBJECTS` (1000) subjects' data keys,
plus the run's own bookkeeping (hold lock, audit entry, run log). Both on copies of one
seeded table in fresh databases; prints rows/s, the ratio, and the load average.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from coordinator.copies.crypto.provider import write_kek
from coordinator.policy.model import parse_policies
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from tests import infra

BATCH = 1000
POLICY = f"""\
policies:
  - name: tickets
    table: tickets
    entity_type: ticket
    timestamp_column: closed_at
    retention: 30d
    action: archive
    legal_basis: benchmark
    batch_size: {BATCH}
    subject: {{entity_type: user, column: owner_id}}
"""


async def _seed(url: str, rows: int, subjects: int) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE TABLE tickets (id bigint PRIMARY KEY, owner_id bigint, "
                    "subject text, body text, closed_at timestamptz)"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO tickets SELECT n, n % :s, 'subject ' || n, "
                    "repeat(md5(n::text), 6), now() - interval '60 days' "
                    "FROM generate_series(1, :rows) n"
                ),
                {"rows": rows, "s": subjects},
            )
            await conn.execute(text("ANALYZE tickets"))
    finally:
        await engine.dispose()


async def _plain(url: str) -> float:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE TABLE tickets_archive AS SELECT *, now() AS archived_at "
                    "FROM tickets WHERE false"
                )
            )
        start, after, moved = time.perf_counter(), 0, 0
        while True:
            async with engine.begin() as conn:
                last = (
                    await conn.execute(
                        text(
                            "WITH chosen AS (SELECT id FROM tickets WHERE id > :after "
                            "AND closed_at < now() - interval '30 days' ORDER BY id LIMIT :n), "
                            "moved AS (DELETE FROM tickets t USING chosen c WHERE t.id = c.id "
                            "RETURNING t.*), "
                            "archived AS (INSERT INTO tickets_archive SELECT *, now() "
                            "FROM moved RETURNING id) "
                            "SELECT max(id), count(*) FROM archived"
                        ),
                        {"after": after, "n": BATCH},
                    )
                ).one()
            if not last[1]:
                break
            after, moved = last[0], moved + last[1]
        return moved / (time.perf_counter() - start)
    finally:
        await engine.dispose()


async def _encrypted(url: str, kek: Path) -> float:
    await upgrade(url)
    engine = make_engine(url)
    try:
        settings = Settings(database_url=url, kek_file=kek)
        runner = Runner(engine, parse_policies(POLICY, "bench.yaml"), settings)
        start = time.perf_counter()
        report = await runner.run(None)
        seconds = time.perf_counter() - start
        assert report.ok, report.as_dict()
        (outcome,) = report.outcomes
        return outcome.processed / seconds
    finally:
        await engine.dispose()


async def main() -> None:
    rows = int(os.environ.get("BENCH_ARCHIVE_ROWS", 50_000))
    subjects = int(os.environ.get("BENCH_ARCHIVE_SUBJECTS", 1000))
    base = infra.database_url()
    with tempfile.TemporaryDirectory() as keys:
        kek = Path(keys) / "kek.hex"
        write_kek(kek)
        rates = {}
        for name in ("plain", "encrypted"):
            url = await infra.create_database(base, f"bench_archive_{name}")
            try:
                await _seed(url, rows, subjects)
                rates[name] = await (_plain(url) if name == "plain" else _encrypted(url, kek))
            finally:
                await infra.drop_database(url)
    load = os.getloadavg()
    print(
        f"rows {rows}, subjects {subjects}, batch {BATCH}, cpus {os.cpu_count()}\n"
        f"plain archive:     {rates['plain']:,.0f} rows/s\n"
        f"encrypted archive: {rates['encrypted']:,.0f} rows/s\n"
        f"ratio encrypted/plain: {rates['encrypted'] / rates['plain']:.2f}\n"
        f"load average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        file=sys.stdout,
    )


if __name__ == "__main__":
    asyncio.run(main())
