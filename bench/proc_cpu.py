"""CPU seconds of local processes, read from /proc: the benches run on the machine of
their PostgreSQL, their broker and their service processes, and compare snapshots taken
around a phase."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import text

from coordinator.store.db import make_engine

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """proc(5)'s stat fields of `pid` after its name: index 0 is field 3 (state).

    Raises:
        OSError: the process has ended, or is not on this machine.
    """
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of `pid` so far (fields 14 and 15 of proc(5)).

    Raises:
        OSError: the process has ended, or is not on this machine.
    """
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def family_cpu_seconds(pid: int) -> float:
    """CPU seconds so far of `pid`, its live children and the children it has reaped.

    A PostgreSQL server's postmaster forks a process per connection, autovacuum worker
    and parallel worker; the short-lived ones end between two snapshots, and their CPU
    then shows only in the postmaster's reaped-children fields (16 and 17). So the
    difference of two snapshots is everything the server did meanwhile, for any client.

    Raises:
        OSError: `pid` has ended, or is not on this machine.
    """
    fields = _stat(pid)
    total = sum(int(fields[n]) for n in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = _stat(int(entry.name))
        except OSError:
            continue
        if int(child[1]) == pid:
            total += int(child[11]) + int(child[12])
    return total / CLOCK_TICKS


def parent_pid(pid: int) -> int:
    """The parent of `pid` (field 4 of proc(5)).

    Raises:
        OSError: the process has ended, or is not on this machine.
    """
    return int(_stat(pid)[1])


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
