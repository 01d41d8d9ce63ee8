"""Database URL handling shared by the coordinator and the SDK's idempotency store."""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

__all__ = ["DEFAULT_DATABASE_URL", "async_database_url", "is_disconnect"]

DEFAULT_DATABASE_URL = "postgresql://retention:retention@127.0.0.1:5432/retention"
"""Where `make infra-up` (and docker compose) expose PostgreSQL to the host."""

_ASYNC_SCHEMES = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def async_database_url(url: str) -> str:
    """Accept plain `postgresql://` URLs and return the asyncpg form SQLAlchemy needs."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _ASYNC_SCHEMES:
        raise ValueError(
            f"unsupported database URL scheme {scheme!r}: use postgresql://user:password@host/db"
        )
    return f"{_ASYNC_SCHEMES[scheme]}://{rest}"


_UNREACHABLE = (
    OSError,  # refused, reset, timed out
    asyncpg.PostgresConnectionError,  # class 08: the connection is gone
    asyncpg.CannotConnectNowError,  # "the database system is starting up" (recovery)
    asyncpg.InterfaceError,  # "connection is closed"
)
"""What asyncpg raises, e.g. on connect, before SQLAlchemy could wrap it."""


def is_disconnect(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) means the server was unreachable, not that the
    statement or the data was wrong."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError):
            if current.connection_invalidated or isinstance(
                current, InterfaceError | OperationalError
            ):
                return True
        elif isinstance(current, _UNREACHABLE):
            return True
        current = current.__cause__
    return False
