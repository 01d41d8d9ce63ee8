"""What a handler may ask for besides the event."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk.exceptions import ConfigurationError

__all__ = ["HandlerContext"]


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """Passed to handlers whose second parameter is annotated `HandlerContext`."""

    service: str
    attempt: int
    """1 on the first call for this delivery, then 2, 3, … on retries."""
    max_attempts: int
    _connection: AsyncConnection | None

    @property
    def connection(self) -> AsyncConnection:
        """The open transaction the SDK commits together with the event's idempotency record."""
        if self._connection is None:
            raise ConfigurationError(
                f"service {self.service!r} has no database: give RetentionConsumer a "
                "database_url (or RETENTION_SERVICE_DATABASE_URL) or a store with connections"
            )
        return self._connection

    @property
    def has_connection(self) -> bool:
        return self._connection is not None
