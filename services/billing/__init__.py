"""Billing service: anonymizes orders (`order` / anonymize) and a deleted user's orders
(`user` / delete), keeping amounts and dates."""

from services.billing.service import (
    MASK,
    SERVICE,
    create_app,
    erasure_log,
    metadata,
    orders,
    seed,
)

__all__ = ["MASK", "SERVICE", "create_app", "erasure_log", "metadata", "orders", "seed"]
