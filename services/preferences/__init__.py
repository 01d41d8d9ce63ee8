"""Preferences service: deletes a user's preferences (`user` / delete)."""

from services.preferences.service import (
    EXAMPLE,
    SERVICE,
    create_app,
    erasure_log,
    metadata,
    preferences,
    seed,
)

__all__ = ["EXAMPLE", "SERVICE", "create_app", "erasure_log", "metadata", "preferences", "seed"]
