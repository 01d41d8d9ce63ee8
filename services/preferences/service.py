"""Preferences: a user's settings are deleted when the user is."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from sqlalchemy import (
    Column,
    DateTime,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import ConsumerSettings, EntityNotFound, RetentionConsumer, RetentionEvent
from schemas import KafkaSettings
from services._shared import (
    create_tables,
    delete_users_rows,
    engine_for,
    service_database_url,
    user_erasure_log,
)

__all__ = ["SERVICE", "create_app", "erasure_log", "metadata", "preferences", "seed"]

SERVICE = "preferences"
metadata = MetaData(schema="preferences")

preferences = Table(
    "preference",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("value", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("user_id", "key"),
)

erasure_log = user_erasure_log(metadata)

DEMO_PREFERENCES = {"language": "en", "theme": "dark", "newsletter": "weekly"}


async def delete_users(
    events: Sequence[RetentionEvent], conn: AsyncConnection
) -> list[int | EntityNotFound]:
    """Set-based: one DELETE for the batch's users, one insert into the erasure log."""
    return await delete_users_rows(
        conn, preferences, erasure_log, events, "no preferences for this user"
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


async def seed(database_url: str, user_ids: Sequence[str]) -> int:
    """Insert the demo preferences for each user (existing ones are kept); returns rows."""
    engine = engine_for(database_url)
    try:
        async with engine.begin() as conn:
            await create_tables(conn, metadata)
            rows = [
                {"user_id": user, "key": key, "value": value}
                for user in user_ids
                for key, value in DEMO_PREFERENCES.items()
            ]
            if rows:
                await conn.execute(postgresql.insert(preferences).on_conflict_do_nothing(), rows)
            return len(rows)
    finally:
        await engine.dispose()
