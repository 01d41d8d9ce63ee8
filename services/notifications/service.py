"""Notifications: a user's notifications are deleted when the user is."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    MetaData,
    Table,
    Text,
    func,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import (
    ConsumerSettings,
    EntityNotFound,
    RetentionConsumer,
    RetentionEvent,
)
from schemas import KafkaSettings
from services._shared import (
    create_tables,
    delete_users_rows,
    engine_for,
    service_database_url,
    user_erasure_log,
)

__all__ = ["SERVICE", "create_app", "erasure_log", "metadata", "notifications", "seed"]

SERVICE = "notifications"
metadata = MetaData(schema="notifications")

notifications = Table(
    "notification",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("user_id", Text, nullable=False, index=True),
    Column("channel", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

erasure_log = user_erasure_log(metadata)


async def delete_users(
    events: Sequence[RetentionEvent], conn: AsyncConnection
) -> list[int | EntityNotFound]:
    """Set-based: one DELETE for the batch's users, one insert into the erasure log."""
    return await delete_users_rows(
        conn, notifications, erasure_log, events, "no notifications for this user"
    )


async def _create_tables(conn: AsyncConnection) -> None:
    await create_tables(conn, metadata)


def create_app(
    *,
    database_url: str | None = None,
    kafka: KafkaSettings | None = None,
    settings: ConsumerSettings | None = None,
    registry: CollectorRegistry | None = None,
) -> RetentionConsumer:
    app = RetentionConsumer(
        SERVICE,
        kafka=kafka,
        settings=settings,
        database_url=database_url or service_database_url(),
        registry=registry,
    )
    app.on_startup(_create_tables)
    app.on_delete_batch("user")(delete_users)
    return app


async def seed(database_url: str, user_ids: Sequence[str], *, per_user: int = 3) -> int:
    """Insert `per_user` notifications for each user; returns rows inserted."""
    engine = engine_for(database_url)
    try:
        async with engine.begin() as conn:
            await create_tables(conn, metadata)
            rows = [
                {"user_id": user, "channel": ("email", "push", "sms")[n % 3], "body": f"note {n}"}
                for user in user_ids
                for n in range(per_user)
            ]
            if rows:
                await conn.execute(notifications.insert(), rows)
            return len(rows)
    finally:
        await engine.dispose()
