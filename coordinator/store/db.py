"""The one place that makes database engines for the coordinator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from schemas import RetryPolicy, async_database_url, is_transient, retry

__all__ = [
    "RECONNECT",
    "bound_lock_waits",
    "connect_outside_pool",
    "make_engine",
    "name_sessions",
    "unbounded_lock_waits",
    "when_reachable",
]

T = TypeVar("T")

RECONNECT = RetryPolicy(initial_s=0.5, max_s=5.0, give_up_after_s=60.0)
"""Bookkeeping waits up to a minute for a restarting server, then gives up."""


_session: dict[str, str] = {
    "application_name": "retention",
    # The audit chain's writers read its head after taking its lock, and count on the
    # next statement's snapshot to see every entry committed before: READ COMMITTED,
    # whatever the server's or the role's default (REPEATABLE READ would fork the chain).
    "default_transaction_isolation": "read committed",
}
"""The server settings every session this process opens starts with (`name_sessions`,
`bound_lock_waits`)."""


def name_sessions(command: str) -> None:
    """Name every database session this process opens from now on `retention <command>`
    (`pg_stat_activity.application_name`): who holds a lock, or waits for one, shows which
    coordinator process it is (`retention serve`, `retention relay`, `retention holds`...).
    Called once by the command line's entry point, before any engine is made."""
    _session["application_name"] = f"retention {command}"[:_NAMEDATALEN]


def bound_lock_waits(timeout_s: float) -> None:
    """From now on, a statement of this process waiting longer than `timeout_s` for any
    lock fails (PostgreSQL's `lock_timeout`, SQLSTATE 55P03); 0: waits without bound."""
    if timeout_s > 0:
        _session["lock_timeout"] = f"{max(1, round(timeout_s * 1000))}ms"
    else:
        _session.pop("lock_timeout", None)


@asynccontextmanager
async def unbounded_lock_waits(conn: AsyncConnection) -> AsyncIterator[None]:
    """Inside, the statements on `conn` wait for their locks however long (`bound_lock_waits`
    lifted): for a step that must not give up halfway, such as the audit entry of records
    already sent. The bound comes back after; on a connection in a transaction, the
    setting is the transaction's own, so a rollback drops it too."""
    autocommit = conn.sync_connection is not None and (
        conn.sync_connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
    )
    before = await conn.scalar(select(func.current_setting("lock_timeout")))
    await conn.execute(select(func.set_config("lock_timeout", "0", not autocommit)))
    try:
        yield
    except BaseException:
        # A failed transaction takes no statement; its rollback drops the setting anyway.
        # A session cancelled mid-statement is invalidated: the pool discards it.
        if autocommit and not conn.invalidated:
            try:
                await conn.execute(select(func.set_config("lock_timeout", before, False)))
            except Exception:
                # What the caller sees is the first failure; a session whose bound could
                # not be put back must not go back to the pool either.
                with suppress(Exception):
                    await conn.invalidate()
        raise
    await conn.execute(select(func.set_config("lock_timeout", before, not autocommit)))


_NAMEDATALEN = 63
"""The longest application_name PostgreSQL keeps (it cuts the rest)."""


def make_engine(url: str, *, pool_size: int = 5, echo: bool = False) -> AsyncEngine:
    """An asyncpg-backed engine; `pool_pre_ping` so a restarted server is survived. Its
    sessions start with this process's settings (`name_sessions`, `bound_lock_waits`)."""
    return create_async_engine(
        async_database_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        # A statement's parameters (a hash key, personal data) stay out of its errors.
        hide_parameters=True,
        echo=echo,
        connect_args={"server_settings": dict(_session)},
    )


async def connect_outside_pool(engine: AsyncEngine) -> Any:
    """A raw asyncpg connection to the engine's database, with the engine's connection
    settings (its URL and query options), that no pool owns: for a session that must
    outlive any pooled checkout, such as a LISTEN. The caller closes it."""
    args, kwargs = engine.dialect.create_connect_args(engine.url)
    # Options the SQLAlchemy adapter consumes itself; asyncpg.connect would refuse them.
    for adapter_only in (
        "async_creator_fn",
        "prepared_statement_cache_size",
        "prepared_statement_name_func",
    ):
        kwargs.pop(adapter_only, None)
    return await asyncpg.connect(*args, **kwargs, server_settings=dict(_session))


async def when_reachable(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    policy: RetryPolicy = RECONNECT,
) -> T:
    """`operation()`, tried again while the server is unreachable, within `policy`.

    For the record of something that already happened (a run's or a fire's outcome):
    a server restart must not leave it unrecorded. Only outages are retried
    (`is_transient`: a disconnect, or a server that did not answer in time); a refused
    statement is raised at once. The operation must be one transaction, so a retry
    repeats all of it or nothing.
    """
    return await retry(operation, policy=policy, what=what, retry_on=is_transient)
