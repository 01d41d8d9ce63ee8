"""The one place that makes database engines for the coordinator."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from schemas import async_database_url

__all__ = ["make_engine"]


def make_engine(url: str, *, pool_size: int = 5, echo: bool = False) -> AsyncEngine:
    """An asyncpg-backed engine; `pool_pre_ping` so a restarted server is survived."""
    return create_async_engine(
        async_database_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        echo=echo,
    )
