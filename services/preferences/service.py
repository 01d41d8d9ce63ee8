"""Preferences: a user's settings are deleted when the user is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import EntityNotFound, EventType, RetentionEvent
from services._shared import delete_users_rows, user_erasure_log
from services.example import Example, Handler

__all__ = ["EXAMPLE", "SERVICE", "create_app", "erasure_log", "metadata", "preferences", "seed"]

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


def seed_rows(user_ids: Sequence[str]) -> dict[Table, list[dict[str, Any]]]:
    """The demo preferences for each user."""
    return {
        preferences: [
            {"user_id": user, "key": key, "value": value}
            for user in user_ids
            for key, value in DEMO_PREFERENCES.items()
        ]
    }


EXAMPLE = Example(
    SERVICE,
    metadata,
    erasure_log,
    (Handler("user", EventType.DELETE, delete_users, batch=True),),
    seed_rows,
)
create_app = EXAMPLE.consumer
seed = EXAMPLE.seed
