"""`before_purge` hooks the policy tests name in their policy files."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.purge.batch import PurgeBatch

ALLOWED = (__name__,)
"""What the policy tests pass as `hook_modules`: these hooks, nothing else."""

Interceptor = Callable[[AsyncConnection, PurgeBatch], Awaitable[None]]
calls: list[PurgeBatch] = []
interceptor: Interceptor | None = None


async def record(conn: AsyncConnection, batch: PurgeBatch) -> None:
    calls.append(batch)
    if interceptor is not None:
        await interceptor(conn, batch)


async def fail(conn: AsyncConnection, batch: PurgeBatch) -> None:
    raise RuntimeError("aggregation failed")


def not_async(*_: Any) -> None:
    """Not a valid hook: hooks must be async."""
