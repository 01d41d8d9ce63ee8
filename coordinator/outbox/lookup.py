"""Events already published, read back from the evidence the coordinator keeps.

Re-publishing (`retention republish`), service backfill and DLQ re-drive read past events
only through `events_by`, so that a change in how the outbox stores events changes this
one function. An event is found while its outbox row is kept: `retention db prune` removes
the rows of events completed more than the outbox retention ago, and those cannot be sent
again (their ids stay in the ledger as evidence).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.outbox.events import event_from_row
from coordinator.purge.holds import event_held
from coordinator.store.tables import outbox
from schemas import RetentionEvent

__all__ = ["StoredEvent", "events_by"]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event: RetentionEvent
    held: bool
    """An active legal hold covers the entity or its subject now: never send it again."""


async def events_by(
    conn: AsyncConnection,
    *,
    now: datetime,
    event_ids: Sequence[uuid.UUID] | None = None,
    entity: tuple[str, str] | None = None,
    run_id: uuid.UUID | None = None,
    initiated_since: datetime | None = None,
    entity_types: Sequence[str] | None = None,
    after: uuid.UUID | None = None,
    limit: int | None = None,
) -> list[StoredEvent]:
    """Published events matching every criterion given, in `event_id` order.

    `after` and `limit` page through a large selection (keyset on the event id).

    Raises:
        ValueError: a stored row no longer makes a valid event (a writer's bug).
    """
    o = outbox.c
    held = event_held(o.entity_type, o.entity_id, o.subject, now).label("held")
    query = select(outbox, held).where(o.published_at.is_not(None))
    if event_ids is not None:
        query = query.where(o.event_id.in_(list(event_ids)))
    if entity is not None:
        query = query.where(o.entity_type == entity[0], o.entity_id == entity[1])
    if run_id is not None:
        query = query.where(o.run_id == run_id)
    if initiated_since is not None:
        query = query.where(o.initiated_at >= initiated_since)
    if entity_types is not None:
        query = query.where(o.entity_type.in_(list(entity_types)))
    if after is not None:
        query = query.where(o.event_id > after)
    query = query.order_by(o.event_id)
    if limit is not None:
        query = query.limit(limit)
    return [StoredEvent(event_from_row(row), bool(row.held)) for row in await conn.execute(query)]
