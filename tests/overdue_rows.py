"""Overdue events written straight into the tracker's tables, for list and notify tests."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.store.tables import event_status, expected_acks


async def insert_events(
    engine: AsyncEngine,
    services: dict[str, str],
    *,
    n: int,
    deadline: datetime,
    state: str = "overdue",
    entity_type: str = "user",
) -> list[uuid.UUID]:
    """`n` events, deadlines a minute apart from `deadline`, each expecting `services`
    (service → its ack status); returns the event ids in deadline order."""
    ids = [uuid.uuid4() for _ in range(n)]
    published = deadline - timedelta(days=30)
    async with engine.begin() as conn:
        await conn.execute(
            insert(event_status),
            [
                {
                    "event_id": event_id,
                    "policy": "inactive_users",
                    "event_type": "delete",
                    "entity_type": entity_type,
                    "entity_id": f"u-{event_id.hex[:8]}",
                    "initiated_at": published,
                    "published_at": published,
                    "deadline": deadline + timedelta(minutes=i),
                    "state": state,
                    "expected": len(services),
                    "overdue_at": deadline + timedelta(minutes=i) if state == "overdue" else None,
                    "tracked_at": published,
                    "updated_at": published,
                }
                for i, event_id in enumerate(ids)
            ],
        )
        await conn.execute(
            insert(expected_acks),
            [
                {
                    "event_id": event_id,
                    "service": service,
                    "status": status,
                    "acknowledged_at": None if status == "pending" else published,
                    "attempt": None if status == "pending" else 1,
                }
                for event_id in ids
                for service, status in services.items()
            ],
        )
    return ids


async def delete_events(engine: AsyncEngine, ids: list[uuid.UUID]) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(expected_acks).where(expected_acks.c.event_id.in_(ids)))
        await conn.execute(delete(event_status).where(event_status.c.event_id.in_(ids)))
