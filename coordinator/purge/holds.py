"""Legal holds: entities (`type:id`) that no policy may touch while the hold is active.

How a hold can never lose against a running purge batch
-------------------------------------------------------
Every purge batch transaction starts with `pg_advisory_xact_lock_shared(HOLD_LOCK)` and
only then selects its rows (with `NOT EXISTS` against the hold tables). Creating a hold
takes the same lock *exclusively* before inserting. So the two serialize:

* a hold that committed before the batch took its lock is visible to the batch's select
  (READ COMMITTED takes a fresh snapshot per statement, after the lock was granted);
* a hold created while a batch runs waits until that batch commits, and is then honoured
  by every later batch. Its `created_at` and its audit entry come after the purge's.

Batches of different policies share the lock and run concurrently; hold creation waits
for at most the batches in flight. Releasing a hold needs no lock: a batch that misses a
release only keeps a row one run longer. The audit chain lock is always taken after this
one, in both paths, so the two locks cannot deadlock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Text, and_, cast, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from coordinator.audit import AuditEntry, append
from coordinator.tables import legal_hold_entities, legal_holds

__all__ = [
    "HOLD_LOCK",
    "Hold",
    "HoldConflict",
    "HoldError",
    "HoldNotFound",
    "active_hold_exists",
    "create_hold",
    "event_held",
    "get_hold",
    "list_holds",
    "lock_for_creation",
    "lock_for_purge",
    "parse_entity",
    "release_hold",
]

HOLD_LOCK = 0x686F6C64
"""Advisory lock key that orders hold creation against purge batches (see module doc)."""


class HoldError(ValueError):
    """A hold request that cannot be honoured (bad entity, unknown or released hold)."""


class HoldNotFound(HoldError):
    """No hold has this id."""


class HoldConflict(HoldError):
    """The hold's state forbids the request: its id is taken, or it is already released."""


@dataclass(frozen=True, slots=True)
class Hold:
    id: str
    reason: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    released_at: datetime | None
    released_by: str | None
    entity_count: int
    entities: tuple[tuple[str, str], ...] = ()

    def status(self, now: datetime) -> str:
        if self.released_at is not None:
            return "released"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def as_dict(self, now: datetime) -> dict[str, Any]:
        document: dict[str, Any] = {
            "id": self.id,
            "reason": self.reason,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "released_at": self.released_at.isoformat() if self.released_at else None,
            "released_by": self.released_by,
            "status": self.status(now),
            "entity_count": self.entity_count,
        }
        if self.entities:
            document["entities"] = [f"{t}:{i}" for t, i in self.entities]
        return document


def parse_entity(text: str) -> tuple[str, str]:
    """`"order:42"` → `("order", "42")`; the id may itself contain colons."""
    entity_type, sep, entity_id = text.strip().partition(":")
    if not sep or not entity_type.strip() or not entity_id.strip():
        raise HoldError(f"{text!r} is not an entity: write TYPE:ID, e.g. order:42")
    return entity_type.strip(), entity_id.strip()


async def lock_for_purge(conn: AsyncConnection) -> None:
    """Take at the start of every purge batch transaction, before selecting rows."""
    await conn.execute(select(func.pg_advisory_xact_lock_shared(HOLD_LOCK)))


async def lock_for_creation(conn: AsyncConnection) -> None:
    await conn.execute(select(func.pg_advisory_xact_lock(HOLD_LOCK)))


def active_hold_exists(
    entity_type: str, entity_id: ColumnElement[Any], now: datetime
) -> ColumnElement[bool]:
    """SQL: an unreleased, unexpired hold covers (entity_type, entity_id::text) at `now`."""
    return exists(
        select(1)
        .select_from(
            legal_hold_entities.join(legal_holds, legal_holds.c.id == legal_hold_entities.c.hold_id)
        )
        .where(
            legal_hold_entities.c.entity_type == entity_type,
            legal_hold_entities.c.entity_id == cast(entity_id, Text),
            legal_holds.c.released_at.is_(None),
            or_(legal_holds.c.expires_at.is_(None), legal_holds.c.expires_at > now),
        )
    )


def event_held(
    entity_type: ColumnElement[str],
    entity_id: ColumnElement[str],
    subject: ColumnElement[str | None],
    now: datetime,
) -> ColumnElement[bool]:
    """SQL: an active hold covers an event's entity, or its `subject` (`"type:id"`)."""
    active = and_(
        legal_holds.c.released_at.is_(None),
        or_(legal_holds.c.expires_at.is_(None), legal_holds.c.expires_at > now),
    )
    joined = legal_hold_entities.join(
        legal_holds, legal_holds.c.id == legal_hold_entities.c.hold_id
    )
    on_entity = exists(
        select(1)
        .select_from(joined)
        .where(
            legal_hold_entities.c.entity_type == entity_type,
            legal_hold_entities.c.entity_id == entity_id,
            active,
        )
    )
    on_subject = exists(
        select(1)
        .select_from(joined)
        .where(
            legal_hold_entities.c.entity_type == func.split_part(subject, ":", 1),
            legal_hold_entities.c.entity_id == func.substr(subject, func.strpos(subject, ":") + 1),
            active,
        )
    )
    return or_(on_entity, and_(subject.is_not(None), on_subject))


async def create_hold(
    conn: AsyncConnection,
    *,
    entities: Iterable[str],
    reason: str,
    created_by: str,
    now: datetime,
    expires_at: datetime | None = None,
    hold_id: str | None = None,
) -> Hold:
    """Create one hold over many entities, in the caller's transaction."""
    parsed = sorted({parse_entity(entity) for entity in entities})
    if not parsed:
        raise HoldError("a hold needs at least one entity (TYPE:ID)")
    if not reason.strip():
        raise HoldError("a hold needs a reason")
    if not created_by.strip():
        raise HoldError("a hold needs --by (who asked for it)")
    if expires_at is not None and expires_at.tzinfo is None:
        raise HoldError("expires_at needs a timezone (e.g. 2027-01-01T00:00:00Z)")
    if expires_at is not None and expires_at <= now:
        raise HoldError(f"expires_at {expires_at.isoformat()} is not in the future")
    hold_id = hold_id or f"hold-{uuid.uuid4()}"
    await lock_for_creation(conn)
    try:
        async with conn.begin_nested():
            await conn.execute(
                insert(legal_holds).values(
                    id=hold_id,
                    reason=reason,
                    created_by=created_by,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
    except IntegrityError:
        raise HoldConflict(f"hold {hold_id!r} already exists") from None
    await conn.execute(
        insert(legal_hold_entities),
        [{"hold_id": hold_id, "entity_type": t, "entity_id": i} for t, i in parsed],
    )
    await append(
        conn,
        [
            AuditEntry(
                "hold.create",
                created_by,
                {
                    "hold_id": hold_id,
                    "expires_at": expires_at,
                    "entities": [f"{t}:{i}" for t, i in parsed],
                },
            )
        ],
        at=now,
    )
    return Hold(
        hold_id, reason, created_by, now, expires_at, None, None, len(parsed), tuple(parsed)
    )


def _summary_query() -> Any:
    count = (
        select(func.count())
        .where(legal_hold_entities.c.hold_id == legal_holds.c.id)
        .scalar_subquery()
    )
    return select(legal_holds, count.label("entity_count"))


def _hold(row: Any, entities: Sequence[tuple[str, str]] = ()) -> Hold:
    return Hold(
        row.id,
        row.reason,
        row.created_by,
        row.created_at,
        row.expires_at,
        row.released_at,
        row.released_by,
        row.entity_count,
        tuple(entities),
    )


async def list_holds(
    conn: AsyncConnection, *, now: datetime, include_inactive: bool = False
) -> list[Hold]:
    query = _summary_query().order_by(legal_holds.c.created_at, legal_holds.c.id)
    if not include_inactive:
        query = query.where(
            legal_holds.c.released_at.is_(None),
            or_(legal_holds.c.expires_at.is_(None), legal_holds.c.expires_at > now),
        )
    return [_hold(row) for row in await conn.execute(query)]


async def get_hold(conn: AsyncConnection, hold_id: str) -> Hold:
    row = (await conn.execute(_summary_query().where(legal_holds.c.id == hold_id))).first()
    if row is None:
        raise HoldNotFound(f"no hold with id {hold_id!r}")
    entities = await conn.execute(
        select(legal_hold_entities.c.entity_type, legal_hold_entities.c.entity_id)
        .where(legal_hold_entities.c.hold_id == hold_id)
        .order_by(legal_hold_entities.c.entity_type, legal_hold_entities.c.entity_id)
    )
    return _hold(row, [(t, i) for t, i in entities])


async def release_hold(conn: AsyncConnection, hold_id: str, *, by: str, now: datetime) -> Hold:
    """Release an active hold, in the caller's transaction; its rows become purgeable."""
    if not by.strip():
        raise HoldError("releasing a hold needs --by (who released it)")
    released = (
        await conn.execute(
            update(legal_holds)
            .where(and_(legal_holds.c.id == hold_id, legal_holds.c.released_at.is_(None)))
            .values(released_at=now, released_by=by)
            .returning(legal_holds.c.id)
        )
    ).first()
    if released is None:
        hold = await get_hold(conn, hold_id)  # raises for an unknown id
        raise HoldConflict(f"hold {hold_id!r} was already released at {hold.released_at}")
    await append(conn, [AuditEntry("hold.release", by, {"hold_id": hold_id})], at=now)
    return await get_hold(conn, hold_id)
