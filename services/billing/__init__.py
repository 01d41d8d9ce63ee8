"""Billing service: anonymizes orders (`order` / anonymize) and a deleted user's orders
(`user` / delete), keeping amounts and dates."""

from services.billing.service import (
    EXAMPLE,
    MASK,
    SERVICE,
    create_app,
    erasure_log,
    metadata,
    orders,
    seed,
)

__all__ = ["EXAMPLE", "MASK", "SERVICE", "create_app", "erasure_log", "metadata", "orders", "seed"]
