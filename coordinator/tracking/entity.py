"""One entity's retention events, found by its id as a hold would store it.

Events carry the id in its column's text form (`orders.id` 42 → `"42"`), so a lookup by
`order:042`, `order:+42` or an upper-case UUID must normalise the id first, as holds do
(`coordinator.purge.holds.EntityTypes`), or it finds nothing and a caller concludes the
entity was never purged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.copies.backups import BackupHorizon
from coordinator.evidence.pseudonyms import Pepper
from coordinator.policy.model import PolicySet
from coordinator.purge.holds import entity_types
from coordinator.tracking.queries import certificate, entity_status

__all__ = ["entity_certificate", "entity_events"]


async def _stored_forms(
    conn: AsyncConnection, policy_set: PolicySet | None, entity_type: str, entity_id: str
) -> list[str]:
    if policy_set is None:
        return [entity_id]
    return (await entity_types(conn, policy_set)).lookup(entity_type, entity_id)


async def entity_events(
    conn: AsyncConnection,
    policy_set: PolicySet | None,
    entity_type: str,
    entity_id: str,
    *,
    now: datetime,
    pepper: Pepper | None = None,
) -> list[dict[str, Any]]:
    """Every retention event of one entity, oldest first (`entity_status`'s documents).

    The id is normalised for an entity type of `policy_set`; a type it does not have (or
    no `policy_set`) is looked up as written, so events of a policy since removed stay
    reachable.

    Raises:
        HoldError: a known type, and an id that no table of it can hold (names the types).
    """
    stored = await _stored_forms(conn, policy_set, entity_type, entity_id)
    # Several forms only when the type's tables differ in id type (int and text, say).
    events = [
        e for i in stored for e in await entity_status(conn, entity_type, i, now=now, pepper=pepper)
    ]
    events.sort(key=lambda e: (e["initiated_at"] or "", e["event_id"]))
    return events


async def entity_certificate(
    conn: AsyncConnection,
    policy_set: PolicySet | None,
    entity_type: str,
    entity_id: str,
    *,
    now: datetime,
    pepper: Pepper | None = None,
    backups: BackupHorizon | None = None,
) -> dict[str, Any] | None:
    """`queries.certificate` of one entity, its id normalised as in `entity_events`; of
    the first stored form with events when a type's tables differ in id type.

    Raises:
        HoldError: a known type, and an id that no table of it can hold.
    """
    for form in await _stored_forms(conn, policy_set, entity_type, entity_id):
        found = await certificate(conn, entity_type, form, now=now, pepper=pepper, backups=backups)
        if found is not None:
            return found
    return None
