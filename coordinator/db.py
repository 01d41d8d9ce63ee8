"""The one place that makes database engines for the coordinator."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from schemas import async_database_url, is_disconnect

__all__ = ["RECONNECT_TIMEOUT_S", "make_engine", "when_reachable"]

log = structlog.get_logger("retention.db")

T = TypeVar("T")

RECONNECT_TIMEOUT_S = 60.0
"""How long bookkeeping waits for a restarting server before giving up."""


def make_engine(url: str, *, pool_size: int = 5, echo: bool = False) -> AsyncEngine:
    """An asyncpg-backed engine; `pool_pre_ping` so a restarted server is survived."""
    return create_async_engine(
        async_database_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        # A statement's parameters (a hash key, personal data) stay out of its errors.
        hide_parameters=True,
        echo=echo,
    )


async def when_reachable(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    timeout_s: float = RECONNECT_TIMEOUT_S,
    first_delay_s: float = 0.5,
) -> T:
    """`operation()`, tried again while the server is unreachable, for up to `timeout_s`.

    For the record of something that already happened (a run's or a fire's outcome):
    a server restart must not leave it unrecorded. Only disconnects are retried; the
    operation must be one transaction, so a retry repeats all of it or nothing.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay = first_delay_s
    while True:
        try:
            return await operation()
        except Exception as exc:
            if not is_disconnect(exc) or loop.time() + delay > deadline:
                raise
            log.warning("db_unreachable_retrying", what=what, error=type(exc).__name__)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
