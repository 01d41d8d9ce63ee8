"""The service registry: who handles which entity types and actions, and since when."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Text, and_, case, column, func, null, update, values
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.store.tables import service_registry
from schemas import ServiceRegistration

__all__ = ["Retirement", "apply_registrations"]


@dataclass(frozen=True, slots=True)
class Retirement:
    """A tombstone on the services topic: the service handles nothing from `at` on."""

    service: str
    at: datetime


async def apply_registrations(
    conn: AsyncConnection, records: Sequence[ServiceRegistration | Retirement]
) -> int:
    """Fold registrations into the registry; return the number of services touched.

    A (service, entity type, action) that a service's newest registration no longer lists
    is retired at that registration's time. Registrations older than what is stored only
    widen first_seen: replays of the compacted topic are harmless.
    """
    latest: dict[str, ServiceRegistration | Retirement] = {}
    for record in records:
        previous = latest.get(record.service)
        if previous is None or _at(record) >= _at(previous):
            latest[record.service] = record
    if not latest:
        return 0

    rows = [
        {
            "service": reg.service,
            "entity_type": handled.entity_type,
            "action": action.value,
            "sdk_version": reg.sdk_version,
            "first_seen": reg.registered_at,
            "last_seen": reg.registered_at,
        }
        for reg in records
        if isinstance(reg, ServiceRegistration)
        for handled in reg.handles
        for action in handled.actions
    ]
    if rows:
        stmt = pg_insert(service_registry).values(_merged(rows))
        ex, t = stmt.excluded, service_registry.c
        newer = ex.last_seen >= t.last_seen
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[t.service, t.entity_type, t.action],
                set_={
                    "sdk_version": case((newer, ex.sdk_version), else_=t.sdk_version),
                    "first_seen": func.least(ex.first_seen, t.first_seen),
                    "last_seen": func.greatest(ex.last_seen, t.last_seen),
                    # Re-listed after a retirement: active again.
                    "retired_at": case((ex.last_seen > t.retired_at, null()), else_=t.retired_at),
                },
            )
        )

    # Whatever a service's newest registration did not refresh is no longer handled.
    v = values(column("service", Text), column("at", DateTime(timezone=True)), name="latest").data(
        [(service, _at(record)) for service, record in latest.items()]
    )
    t = service_registry.c
    await conn.execute(
        update(service_registry)
        .where(
            and_(
                t.service == v.c.service,
                t.retired_at.is_(None),
                t.last_seen < v.c.at,
            )
        )
        .values(retired_at=v.c.at)
    )
    return len(latest)


def _at(record: ServiceRegistration | Retirement) -> datetime:
    return record.registered_at if isinstance(record, ServiceRegistration) else record.at


def _merged(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # One INSERT .. ON CONFLICT DO UPDATE may not touch a row twice: fold what the batch
    # says about each (service, entity type, action) into one row first.
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = (row["service"], row["entity_type"], row["action"])
        seen = merged.get(key)
        if seen is None:
            merged[key] = dict(row)
            continue
        seen["first_seen"] = min(seen["first_seen"], row["first_seen"])
        if row["last_seen"] >= seen["last_seen"]:
            seen["last_seen"], seen["sdk_version"] = row["last_seen"], row["sdk_version"]
    return list(merged.values())
