"""Database URL handling shared by the coordinator and the SDK's idempotency store."""

from __future__ import annotations

import re

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

__all__ = ["DEFAULT_DATABASE_URL", "async_database_url", "is_disconnect", "mask_passwords"]

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
    url = f"{_ASYNC_SCHEMES[scheme]}://{rest}"
    try:
        make_url(url)
    except Exception as exc:
        # The parser's own message quotes pieces of the URL, the password's among them.
        raise ValueError(
            f"database URL {mask_passwords(url)!r} does not parse ({type(exc).__name__}): "
            "percent-encode special characters in the password"
        ) from None
    return url


# Up to the last `@` of the URL: a password may itself hold `@`, `:` or `/`.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^\s]*(?P<at>@)")


def mask_passwords(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`.

    Works on any text (an exception message quoting a URL), not only on URLs that parse:
    a password with `%` or `@` is exactly what breaks parsers and ends up printed.
    """
    return _URL_PASSWORD.sub(r"\g<head>***\g<at>", text)


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
