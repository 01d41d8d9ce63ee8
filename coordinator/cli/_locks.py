"""What a one-shot command that gave up waiting for a lock says: which lock it waited
for and, where PostgreSQL lets us read it, who holds it (process id, application name,
state, how long in a transaction). Never a statement's text or parameters: they may
quote the data a statement was about (SPEC §13)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import BigInteger, Interval, Text, cast, column, func, literal, select, table
from sqlalchemy.exc import DBAPIError

from coordinator.copies.verification.request import SAMPLE_LOCK
from coordinator.evidence.audit import CHAIN_LOCK
from coordinator.purge.hold_topic import HOLD_TOPIC_LOCK
from coordinator.purge.holds import HOLD_LOCK
from coordinator.settings import Settings
from coordinator.store.db import make_engine

__all__ = ["ADVISORY_LOCKS", "gave_up_waiting", "lock_report"]

ADVISORY_LOCKS = {
    CHAIN_LOCK: "the audit chain lock",
    HOLD_LOCK: "the hold lock",
    HOLD_TOPIC_LOCK: "the hold topic lock",
    SAMPLE_LOCK: "the verification sampler's lock",
}
"""The coordinator's advisory locks by key, as a command names them."""

_LOCK_NOT_AVAILABLE = "55P03"
_LOOKUP_S = 5.0
"""How long finding the holder may take before the command says what it knows."""
_SHOWN = 5


def gave_up_waiting(exc: BaseException) -> bool:
    """Whether `exc` is PostgreSQL's `lock_timeout` (or a NOWAIT lock) giving up."""
    return isinstance(exc, DBAPIError) and (
        getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE
    )


def lock_report(exc: DBAPIError, settings: Settings) -> str:
    """One line: what the failed statement waited for, and its holders if readable."""
    what, key = _waited_for(exc)
    waited = settings.cli_lock_timeout_s
    try:
        holders = asyncio.run(asyncio.wait_for(_holders(settings, key, waited), _LOOKUP_S))
    except Exception:  # the report must not hide the error it reports
        holders = None
    if holders is None:
        held = "its holder could not be read"
    elif not holders:
        held = "no holder found (it let go since, or this role may not see it)"
    elif key is None:
        held = "sessions in a transaction since before the wait: " + "; ".join(holders)
    else:
        held = "held by " + "; ".join(holders)
    return (
        f"gave up after {waited:g} s waiting for {what}, {held}. The transaction that "
        "waited was rolled back (what the command committed before it stands); "
        "RETENTION_CLI_LOCK_TIMEOUT_S sets the wait (0: no bound)."
    )


def _waited_for(exc: DBAPIError) -> tuple[str, int | None]:
    """What the failed statement waited for, and the key of the advisory lock if it asked
    for one by number (the parameters are read, never shown)."""
    if "pg_advisory" not in (exc.statement or ""):
        return "a row or table lock", None
    params: Any = exc.params
    values: Sequence[Any] = (
        list(params.values()) if isinstance(params, Mapping) else list(params or ())
    )
    key = next((v for v in values if isinstance(v, int) and not isinstance(v, bool)), None)
    if key is None:
        return "an advisory lock", None
    return ADVISORY_LOCKS.get(key, "an advisory lock"), key


async def _holders(settings: Settings, key: int | None, waited_s: float) -> list[str]:
    """The sessions holding advisory lock `key`; without one, the sessions of this
    database in a transaction since before the wait began (the holder is among them)."""
    engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
    a = _ACTIVITY.c
    since = (func.extract("epoch", func.now() - a.xact_start)).label("xact_s")
    shown = select(a.pid, a.application_name, a.state, since)
    if key is None:
        query = (
            shown.where(
                a.datname == func.current_database(),
                a.pid != func.pg_backend_pid(),
                a.xact_start < func.now() - literal(timedelta(seconds=waited_s), Interval()),
            )
            .order_by(a.xact_start)
            .limit(_SHOWN)
        )
    else:
        lock = _LOCKS.c
        query = (
            shown.join_from(_ACTIVITY, _LOCKS, lock.pid == a.pid)
            .where(
                lock.locktype == "advisory",
                lock.granted.is_(True),
                lock.objsubid == 1,
                a.datname == func.current_database(),
                cast(cast(lock.classid, Text), BigInteger) == key >> 32,
                cast(cast(lock.objid, Text), BigInteger) == key & 0xFFFFFFFF,
            )
            .order_by(a.pid)
        )
    try:
        async with engine.connect() as conn:
            return [_session(row) for row in await conn.execute(query)]
    finally:
        await engine.dispose()


def _session(row: Any) -> str:
    seconds = "" if row.xact_s is None else f", in a transaction for {float(row.xact_s):.0f} s"
    return f"pid {row.pid} ({row.application_name or '-'}, {row.state or 'state unknown'}{seconds})"


# PostgreSQL's views; another role's sessions show no state or times (NULL) unless this
# role may read all statistics (pg_read_all_stats).
_ACTIVITY = table(
    "pg_stat_activity",
    column("pid"),
    column("datname"),
    column("application_name"),
    column("state"),
    column("xact_start"),
)
_LOCKS = table(
    "pg_locks",
    column("pid"),
    column("locktype"),
    column("granted"),
    column("objsubid"),
    column("classid"),
    column("objid"),
)
