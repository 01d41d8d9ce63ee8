"""Work kept in flight on purpose: a database-side brake and a look at what is running.

A scenario that must kill, restart or cut something *while* handlers run or a purge
batch is open cannot rely on the product being slow: it gets faster, and a schedule
timed for yesterday's speed finds everything done. So the scenario slows the work down
from inside the database it owns, never through a hook in the product:
`install_throttle` puts a row trigger on the given tables (the services' `erasure_log`,
a policy's table) that sleeps `delay_s` before each write, inside the writer's own
transaction; `set_throttle` changes the delay at once for every writer (0 lets the rest
finish at full speed). `wait_until_writing` watches `pg_stat_activity` until a statement
into a table is executing, that is, a transaction with uncommitted work is open: a kill
on that condition lands mid-batch by construction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

from sqlalchemy import Table, text

from coordinator.store.db import make_engine
from tests.e2e.harness import ServiceProcess
from tests.infra import with_database

__all__ = ["WRITES", "install_throttle", "set_throttle", "wait_until_writing"]

WRITES = ("INSERT INTO", "UPDATE", "DELETE FROM")
"""The statements `wait_until_writing` looks for, as SQLAlchemy writes them."""

_SETUP = [
    "CREATE TABLE IF NOT EXISTS public.fault_throttle (delay_s double precision NOT NULL)",
    "LOCK TABLE public.fault_throttle",
    "DELETE FROM public.fault_throttle",
    """
    CREATE OR REPLACE FUNCTION public.fault_throttle_sleep() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_sleep(coalesce((SELECT max(delay_s) FROM public.fault_throttle), 0));
        RETURN coalesce(NEW, OLD);
    END
    $$
    """,
]


def _qualified(table: Table) -> str:
    # Names of our own tables (fixed in the code), quoted as identifiers.
    name = f'"{table.name}"'
    return f'"{table.schema}".{name}' if table.schema else name


async def install_throttle(url: str, tables: Iterable[Table], *, delay_s: float) -> None:
    """Every INSERT, UPDATE and DELETE on `tables` (in database `url`) sleeps `delay_s`."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            for statement in _SETUP:
                await conn.execute(text(statement))
            await conn.execute(
                text("INSERT INTO public.fault_throttle (delay_s) VALUES (:d)"), {"d": delay_s}
            )
            for table in tables:
                target = _qualified(table)
                await conn.execute(text(f"DROP TRIGGER IF EXISTS fault_throttle ON {target}"))
                await conn.execute(
                    text(
                        f"CREATE TRIGGER fault_throttle BEFORE INSERT OR UPDATE OR DELETE "
                        f"ON {target} FOR EACH ROW EXECUTE FUNCTION public.fault_throttle_sleep()"
                    )
                )
    finally:
        await engine.dispose()


async def set_throttle(url: str, delay_s: float) -> None:
    """The delay every throttled write in database `url` sleeps from now on."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE public.fault_throttle SET delay_s = :d"), {"d": delay_s}
            )
    finally:
        await engine.dispose()


async def wait_until_writing(
    url: str,
    table: Table,
    *,
    process: ServiceProcess | None = None,
    timeout_s: float = 60.0,
    interval_s: float = 0.01,
    verbs: Sequence[str] = WRITES,
) -> bool:
    """Until a statement writing `table` runs in database `url`; False if `process` ended.

    The statement is what the service or the coordinator sent (SQLAlchemy's text names
    the verb and the qualified table, a purge's inside a CTE), seen from another
    database's session so the probe never sees itself. Active with `xact_start` set:
    its transaction is open. `verbs` narrows it to some writes (`("UPDATE",)`).
    """
    name = url.rpartition("/")[2]
    target = f"{table.schema}.{table.name}" if table.schema else table.name
    unknown = set(verbs) - set(WRITES)
    if unknown or not verbs:
        raise ValueError(f"verbs must be some of {WRITES}, not {sorted(unknown)}")
    matches = " OR ".join(f"query ILIKE '%{verb} ' || :t || ' %'" for verb in verbs)
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = :db "
        f"AND state = 'active' AND xact_start IS NOT NULL AND ({matches})"
    )
    deadline = time.monotonic() + timeout_s
    admin = make_engine(with_database(url, "postgres"), pool_size=1)
    try:
        async with admin.connect() as conn:
            while True:
                if await conn.scalar(query, {"db": name, "t": target}):
                    return True
                await conn.rollback()  # each poll sees a fresh snapshot of the activity
                if process is not None and not process.alive:
                    return False
                if time.monotonic() > deadline:
                    raise AssertionError(f"nothing wrote {target} within {timeout_s}s")
                await asyncio.sleep(interval_s)
    finally:
        await admin.dispose()
