"""Notifications service: deletes a user's notifications (`user` / delete)."""

from services.notifications.service import (
    EXAMPLE,
    SERVICE,
    create_app,
    erasure_log,
    metadata,
    notifications,
    seed,
)

__all__ = ["EXAMPLE", "SERVICE", "create_app", "erasure_log", "metadata", "notifications", "seed"]
