"""Notifications: a user's notifications are deleted when the user is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Identity, MetaData, Table, Text, func

from services.example import user_rows_example

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


def seed_rows(user_ids: Sequence[str], *, per_user: int = 3) -> dict[Table, list[dict[str, Any]]]:
    """`per_user` notifications for each user."""
    return {
        notifications: [
            {"user_id": user, "channel": ("email", "push", "sms")[n % 3], "body": f"note {n}"}
            for user in user_ids
            for n in range(per_user)
        ]
    }


EXAMPLE = user_rows_example(
    SERVICE, metadata, notifications, seed_rows, missing="no notifications for this user"
)
erasure_log = EXAMPLE.erasure_log
create_app = EXAMPLE.consumer
seed = EXAMPLE.seed
