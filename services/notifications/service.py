"""Notifications: a user's notifications are deleted when the user is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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

from consumer_sdk import EntityNotFound, EventType, RetentionEvent
from services._shared import delete_users_rows, user_erasure_log
from services.example import Example, Handler

__all__ = ["EXAMPLE", "SERVICE", "create_app", "erasure_log", "metadata", "notifications", "seed"]

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


def seed_rows(user_ids: Sequence[str], *, per_user: int = 3) -> dict[Table, list[dict[str, Any]]]:
    """`per_user` notifications for each user."""
    return {
        notifications: [
            {"user_id": user, "channel": ("email", "push", "sms")[n % 3], "body": f"note {n}"}
            for user in user_ids
            for n in range(per_user)
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
