"""Preferences: a user's settings are deleted when the user is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, DateTime, MetaData, PrimaryKeyConstraint, Table, Text, func

from services.example import user_rows_example

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

DEMO_PREFERENCES = {"language": "en", "theme": "dark", "newsletter": "weekly"}


def seed_rows(user_ids: Sequence[str]) -> dict[Table, list[dict[str, Any]]]:
    """The demo preferences for each user."""
    return {
        preferences: [
            {"user_id": user, "key": key, "value": value}
            for user in user_ids
            for key, value in DEMO_PREFERENCES.items()
        ]
    }


EXAMPLE = user_rows_example(
    SERVICE, metadata, preferences, seed_rows, missing="no preferences for this user"
)
erasure_log = EXAMPLE.erasure_log
create_app = EXAMPLE.consumer
seed = EXAMPLE.seed
