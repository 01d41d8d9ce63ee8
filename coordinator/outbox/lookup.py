"""Reading the outbox's events: every reader goes through here.

`EVENTS` expands the batch rows into one row per event with the columns the per-event
outbox had (event_id, entity_id, subject, the shared fields of `events.SHARED`,
created_at and published_at), plus the batch's `seq` and `id_base`. A filter on a batch
column (request_id, run_id, policy, seq) reaches the batch table's indexes through the
expansion; a filter on an event id must also name its batch, which `by_event_ids` and
`joined_on` do through the (id_base, id_first) index, since the id is computed. Entity
lookups go through the tracker's event status (indexed by entity) for tracked events and
scan only the few batches past the tracker's cursor for the rest (`by_entity`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Select,
    Text,
    Uuid,
    and_,
    any_,
    bindparam,
    column,
    func,
    or_,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.outbox.events import SHARED, event_from_row, event_id
from coordinator.purge.holds import event_held
from coordinator.store.tables import event_status, outbox_batches, outbox_cursors, outbox_marks
from schemas import RetentionEvent

__all__ = [
    "EVENTS",
    "TRACKED",
    "StoredEvent",
    "by_entity",
    "by_event_ids",
    "event_counts",
    "events",
    "events_by",
    "joined_on",
    "load_events",
    "published_up_to",
    "tracked_up_to",
    "unpublished_events",
]

TRACKED = "tracked"
"""The tracker's cursor in `outbox_cursors`."""

_b = outbox_batches.c
_each = (
    func.unnest(_b.entity_ids, _b.subjects)
    .table_valued(column("entity_id", Text), column("subject", Text), with_ordinality="n")
    .render_derived()
)
# Once per batch, not per event: a lateral subquery joined before the expansion.
_mark = (
    select(outbox_marks.c.published_at)
    .where(outbox_marks.c.up_to >= _b.seq)
    .order_by(outbox_marks.c.up_to)
    .limit(1)
    .lateral("mark")
)

EVENTS = (
    select(
        _b.seq,
        _b.id_base,
        func.retention_uuidv7_nth(_b.id_base, _b.id_first + _each.c.n - 1, type_=Uuid).label(
            "event_id"
        ),
        _each.c.entity_id,
        _each.c.subject,
        *(_b[name] for name in dict.fromkeys(SHARED.values())),
        _b.created_at,
        _mark.c.published_at,
    )
    .select_from(outbox_batches)
    .outerjoin(_mark, true())
    .join(_each, true())
    .subquery("outbox_events")
)
"""One row per event of every outbox batch (published_at NULL while unpublished)."""


def events(*where: ColumnElement[bool]) -> Select[Any]:
    """The events matching `where` (conditions on `EVENTS`' columns), oldest first."""
    return select(EVENTS).where(*where).order_by(EVENTS.c.seq, EVENTS.c.event_id)


def by_event_ids(ids: Sequence[uuid.UUID]) -> ColumnElement[bool]:
    """`EVENTS` rows of these event ids, found through their batches' index."""
    bases = sorted({event_id(i, 0) for i in ids})
    return and_(
        EVENTS.c.id_base == any_(bindparam(None, bases, type_=ARRAY(Uuid))),
        EVENTS.c.event_id == any_(bindparam(None, list(ids), type_=ARRAY(Uuid))),
    )


def joined_on(event_id_column: ColumnElement[uuid.UUID]) -> ColumnElement[bool]:
    """Join condition of `EVENTS` to another table's event id (index on the batch)."""
    return and_(
        EVENTS.c.id_base == func.retention_uuidv7_nth(event_id_column, 0, type_=Uuid),
        EVENTS.c.event_id == event_id_column,
    )


def _cursor(name: str) -> Any:
    return func.coalesce(
        select(outbox_cursors.c.seq).where(outbox_cursors.c.name == name).scalar_subquery(), 0
    )


def by_entity(entity_type: str, entity_id: str) -> ColumnElement[bool]:
    """`EVENTS` rows of one entity: its tracked events by the status index, the others
    among the batches past the tracker's cursor."""
    s = event_status.c
    tracked = select(func.retention_uuidv7_nth(s.event_id, 0, type_=Uuid)).where(
        s.entity_type == entity_type, s.entity_id == entity_id
    )
    # `= ANY(ARRAY(…))`, not `IN (…)`: an index condition, so the OR is a BitmapOr of
    # the batch index and a primary-key range, not a scan of every batch.
    bases = func.array(tracked.scalar_subquery(), type_=ARRAY(Uuid))
    return and_(
        EVENTS.c.entity_type == entity_type,
        EVENTS.c.entity_id == entity_id,
        or_(EVENTS.c.id_base == any_(bases), EVENTS.c.seq > _cursor(TRACKED)),
    )


async def published_up_to(conn: AsyncConnection) -> int:
    """The relay's watermark: every batch with seq at most this was published."""
    found = await conn.scalar(select(func.max(outbox_marks.c.up_to)))
    return int(found or 0)


async def tracked_up_to(conn: AsyncConnection) -> int:
    """The tracker's cursor: it follows every published batch with seq at most this."""
    return int(await conn.scalar(select(_cursor(TRACKED))) or 0)


async def unpublished_events(conn: AsyncConnection) -> int:
    """Events in batches past the watermark (a range of the primary key)."""
    up_to = select(func.coalesce(func.max(outbox_marks.c.up_to), 0)).scalar_subquery()
    found = await conn.scalar(select(func.coalesce(func.sum(_b.events), 0)).where(_b.seq > up_to))
    return int(found or 0)


async def event_counts(conn: AsyncConnection, *where: ColumnElement[bool]) -> tuple[int, int]:
    """(events, published events) of the batches matching `where` (batch columns)."""
    up_to = select(func.coalesce(func.max(outbox_marks.c.up_to), 0)).scalar_subquery()
    row = (
        await conn.execute(
            select(
                func.coalesce(func.sum(_b.events), 0),
                func.coalesce(func.sum(_b.events).filter(_b.seq <= up_to), 0),
            ).where(*where)
        )
    ).one()
    return int(row[0]), int(row[1])


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event: RetentionEvent
    held: bool
    """An active legal hold covers the entity or its subject now: never send it again."""
    seq: int
    """Its outbox batch: with the event id, the keyset position `events_by` pages on."""

    @property
    def position(self) -> tuple[int, uuid.UUID]:
        return (self.seq, self.event.event_id)


async def events_by(
    conn: AsyncConnection,
    *,
    now: datetime,
    event_ids: Sequence[uuid.UUID] | None = None,
    entity: tuple[str, str] | None = None,
    run_id: uuid.UUID | None = None,
    initiated_since: datetime | None = None,
    entity_types: Sequence[str] | None = None,
    after: tuple[int, uuid.UUID] | None = None,
    limit: int | None = None,
) -> list[StoredEvent]:
    """Published events matching every criterion given, in outbox order (batch, event id).

    Re-publishing, service backfill and DLQ re-drive read past events only through here.
    `after` (a `StoredEvent.position`) and `limit` page through a large selection: a
    keyset on the batch sequence, so each page reads only the batches past the last one.

    Raises:
        ValueError: a stored row no longer makes a valid event (a writer's bug).
    """
    e = EVENTS.c
    where: list[ColumnElement[bool]] = [e.published_at.is_not(None)]
    if event_ids is not None:
        where.append(by_event_ids(list(event_ids)))
    if entity is not None:
        where.append(by_entity(*entity))
    if run_id is not None:
        where.append(e.run_id == run_id)
    if initiated_since is not None:
        where.append(e.initiated_at >= initiated_since)
    if entity_types is not None:
        where.append(e.entity_type.in_(list(entity_types)))
    if after is not None:
        seq, last = after
        where += [e.seq >= seq, or_(e.seq > seq, e.event_id > last)]
    held = event_held(e.entity_type, e.entity_id, e.subject, now).label("held")
    query = select(EVENTS, held).where(*where).order_by(e.seq, e.event_id)
    if limit is not None:
        query = query.limit(limit)
    return [
        StoredEvent(event_from_row(row), bool(row.held), int(row.seq))
        for row in await conn.execute(query)
    ]


async def load_events(
    conn: AsyncConnection, event_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, RetentionEvent]:
    """The published or unpublished events with these ids, as the wire events they are
    (re-publication after a hold's release reads through it)."""
    if not event_ids:
        return {}
    rows = await conn.execute(select(EVENTS).where(by_event_ids(list(event_ids))))
    return {row.event_id: event_from_row(row) for row in rows}
