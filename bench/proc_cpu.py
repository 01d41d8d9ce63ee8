"""CPU seconds of local processes, read from /proc: the benches run on the machine of
their PostgreSQL and their service processes, and compare snapshots taken around a phase."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import text

from coordinator.store.db import make_engine

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of `pid` so far (fields 14 and 15 of proc(5)).

    Raises:
        OSError: the process has ended, or is not on this machine.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def backend_cpu(
    admin_url: str, databases: Iterable[str], *, also: Iterable[int] = ()
) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving `databases`, and of the
    backends `also` names; `admin_url` is any database of the same server.

    Backends are pooled and live through a phase, so the difference of two snapshots is
    the database's work for it; one that ended meanwhile is left out."""
    engine = make_engine(admin_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = ANY(:names)"),
                {"names": list(databases)},
            )
            pids = {row[0] for row in rows} | set(also)
    finally:
        await engine.dispose()
    cpu: dict[int, float] = {}
    for pid in pids:
        try:
            cpu[pid] = cpu_seconds(pid)
        except OSError:
            continue
    return cpu
