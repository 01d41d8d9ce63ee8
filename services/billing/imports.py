"""Importing orders from an upstream system (a late sync, a restore of an old export):
an order of a user the coordinator erased is refused, never inserted again (SPEC §12).

The check is the SDK's `is_erased`, which answers from the suppression list (the erased
topic, keyed by HMAC under the pepper this service shares with the coordinator).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import RetentionConsumer
from services.billing.service import orders

__all__ = ["ImportResult", "import_orders"]


@dataclass(slots=True)
class ImportResult:
    imported: list[str] = field(default_factory=list)
    """Order ids inserted."""
    existing: list[str] = field(default_factory=list)
    """Order ids already here (kept as they are)."""
    refused: list[str] = field(default_factory=list)
    """Order ids of erased users: not imported."""


async def import_orders(
    app: RetentionConsumer, conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]
) -> ImportResult:
    """Insert `rows` (orders table columns) in the caller's transaction, except those
    whose `user_id` is an erased user."""
    result = ImportResult()
    for row in rows:
        user = row.get("user_id")
        if user is not None and await app.is_erased("user", str(user)):
            result.refused.append(row["id"])
            continue
        inserted = await conn.execute(
            insert(orders).values(**row).on_conflict_do_nothing().returning(orders.c.id)
        )
        (result.imported if inserted.first() is not None else result.existing).append(row["id"])
    return result
