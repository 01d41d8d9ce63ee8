"""Notifications service: deletes a user's notifications (`user` / delete)."""

from services.notifications.service import (
    SERVICE,
    create_app,
    erasure_log,
    metadata,
    notifications,
    seed,
)

__all__ = ["SERVICE", "create_app", "erasure_log", "metadata", "notifications", "seed"]
