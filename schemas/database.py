"""Database URL handling shared by the coordinator and the SDK's idempotency store."""

from __future__ import annotations

__all__ = ["DEFAULT_DATABASE_URL", "async_database_url"]

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
