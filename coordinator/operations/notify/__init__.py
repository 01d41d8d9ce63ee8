"""Webhook notifications: what happened that people should hear about, delivered at least
once, signed (docs/operations.md, "Notifications")."""
