"""What `restore_window` costs a delete policy, and how fast `retention restore` puts rows back.

    python -m bench.restore_window        # BENCH_RESTORE_ROWS=50000, batch 1000

Both runs are `retention run`'s engine (`Runner`) on the same seeded table (copies in fresh
databases): a delete policy without the window (one statement per batch: the DELETE picks
its own rows), and with `restore_window: 14d` (the rows come back to Python as JSON, are
sealed under 1 of `BENCH_RESTORE_SUBJECTS` (1000) subjects' data keys and inserted into
the vault, in the batch's transaction). Then the vault is restored (`restore_run`, batch
1000). Prints rows/s for each, the ratio, and the load average.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from bench.archive_crypto import _seed
from coordinator.copies.crypto.keystore import open_keystore
from coordinator.copies.crypto.provider import write_kek
from coordinator.copies.vault.restore import restore_run
from coordinator.policy.model import parse_policies
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from tests import infra

BATCH = 1000


def _policy(window: bool) -> str:
    return f"""\
policies:
  - name: tickets
    table: tickets
    entity_type: ticket
    timestamp_column: closed_at
    retention: 30d
    action: delete
    legal_basis: benchmark
    batch_size: {BATCH}
    subject: {{entity_type: user, column: owner_id}}
{"    restore_window: 14d" if window else ""}
"""


async def _run(url: str, kek: Path, *, window: bool) -> tuple[float, float | None]:
    await upgrade(url)
    engine = make_engine(url)
    try:
        settings = Settings(database_url=url, kek_file=kek)
        runner = Runner(engine, parse_policies(_policy(window), "bench.yaml"), settings)
        start = time.perf_counter()
        report = await runner.run(None)
        seconds = time.perf_counter() - start
        assert report.ok, report.as_dict()
        (outcome,) = report.outcomes
        deleted = outcome.processed / seconds
        if not window:
            return deleted, None
        keys = open_keystore(settings, engine)
        try:
            async with engine.connect() as conn:
                now = (await conn.execute(text("SELECT now()"))).scalar_one()
            start = time.perf_counter()
            restored = await restore_run(
                engine, keys, report.run_id, dry_run=False, by="bench", now=now, batch_size=BATCH
            )
            seconds = time.perf_counter() - start
        finally:
            await keys.aclose()
        assert restored.error is None
        assert not restored.conflicts
        return deleted, len(restored.restored) / seconds
    finally:
        await engine.dispose()


async def main() -> None:
    rows = int(os.environ.get("BENCH_RESTORE_ROWS", 50_000))
    subjects = int(os.environ.get("BENCH_RESTORE_SUBJECTS", 1000))
    base = infra.database_url()
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as keys:
        kek = Path(keys) / "kek.hex"
        write_kek(kek)
        for window in (False, True):
            url = await infra.create_database(base, "bench_restore_window")
            try:
                await _seed(url, rows, subjects)
                deleted, restored = await _run(url, kek, window=window)
            finally:
                await infra.drop_database(url)
            rates["vaulted delete" if window else "plain delete"] = deleted
            if restored is not None:
                rates["restore"] = restored
    load = os.getloadavg()
    print(
        f"rows {rows}, subjects {subjects}, batch {BATCH}, cpus {os.cpu_count()}\n"
        f"delete, no window:      {rates['plain delete']:,.0f} rows/s\n"
        f"delete, restore_window: {rates['vaulted delete']:,.0f} rows/s\n"
        f"ratio vaulted/plain: {rates['vaulted delete'] / rates['plain delete']:.2f}\n"
        f"restore from the vault: {rates['restore']:,.0f} rows/s\n"
        f"load average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        file=sys.stdout,
    )


if __name__ == "__main__":
    asyncio.run(main())
