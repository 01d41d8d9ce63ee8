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

How a hold names exactly the rows it protects
---------------------------------------------
A purge matches a hold by `(entity_type, id_column::text)`. So a hold is only accepted
for an entity type some policy has (`EntityTypes`, from the policies and the id columns'
reflected types), and its id is stored in the text form PostgreSQL gives that column:
an integer without sign or leading zeros (`+042` → `42`, within the column's range), a
UUID in canonical lower-case form, text exactly as written. An unknown type or an id the
column cannot hold is refused naming the known types, never stored to protect nothing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    SmallInteger,
    Text,
    Uuid,
    and_,
    cast,
    exists,
    func,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine

from coordinator import CoordinatorError
from coordinator.evidence.audit import AuditAction, AuditEntry, append
from coordinator.policy.model import PolicySet
from coordinator.purge import hold_topic
from coordinator.store.tables import audit_log, legal_hold_entities, legal_holds

__all__ = [
    "HOLD_LOCK",
    "EntityTypes",
    "Hold",
    "HoldConflict",
    "HoldError",
    "HoldNotFound",
    "IdForm",
    "IdKind",
    "active_hold_exists",
    "create_hold",
    "entity_types",
    "event_held",
    "get_hold",
    "hold_audit",
    "list_holds",
    "lock_for_creation",
    "lock_for_purge",
    "parse_entity",
    "release_hold",
]

HOLD_LOCK = 0x686F6C64
"""Advisory lock key that orders hold creation against purge batches (see module doc)."""


class HoldError(CoordinatorError, ValueError):
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
    """`"order:42"` → `("order", "42")`; the id may itself contain colons.

    Only the shape: `EntityTypes.resolve` checks the type and normalises the id.
    """
    entity_type, sep, entity_id = text.strip().partition(":")
    if not sep or not entity_type.strip() or not entity_id.strip():
        raise HoldError(f"{_shown(text)} is not an entity: write TYPE:ID, e.g. order:42")
    return entity_type.strip(), entity_id


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "…")


class IdKind(StrEnum):
    INTEGER = "integer"
    UUID = "uuid"
    TEXT = "text"


_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True, slots=True, order=True)
class IdForm:
    """How one id column's values read as text (what `column::text` gives)."""

    kind: IdKind
    bits: int = 0
    """Width of an integer column (16, 32, 64)."""

    @classmethod
    def of(cls, column_type: TypeEngine[Any]) -> IdForm:
        if isinstance(column_type, SmallInteger):
            return cls(IdKind.INTEGER, 16)
        if isinstance(column_type, BigInteger):
            return cls(IdKind.INTEGER, 64)
        if isinstance(column_type, Integer):
            return cls(IdKind.INTEGER, 32)
        if isinstance(column_type, Uuid):
            return cls(IdKind.UUID)
        # Text, varchar and anything else compare by their text form, exactly.
        return cls(IdKind.TEXT)

    def describe(self) -> str:
        return f"{self.bits}-bit integer" if self.kind is IdKind.INTEGER else self.kind.value

    def normalise(self, entity_id: str) -> str | None:
        """The column's text form of `entity_id`, or None if no row can have this id."""
        if self.kind is IdKind.TEXT:
            return None if "\x00" in entity_id else entity_id  # PostgreSQL text has no NUL
        candidate = entity_id.strip()
        if not candidate.isascii():
            return None  # look-alike digits and letters never name a row
        if self.kind is IdKind.UUID:
            try:
                return str(uuid.UUID(candidate))
            except ValueError:
                return None
        if not _INTEGER.fullmatch(candidate):
            return None
        value = int(candidate)
        limit = 1 << (self.bits - 1)
        return str(value) if -limit <= value < limit else None


@dataclass(frozen=True, slots=True)
class EntityTypes:
    """The entity types the policies purge, each with the id forms of its tables."""

    forms: Mapping[str, tuple[IdForm, ...]]

    def known(self) -> str:
        return ", ".join(sorted(self.forms)) or "none: the policy file has no policies"

    def resolve(self, text: str) -> list[tuple[str, str]]:
        """`type:id` → the (type, stored id) pairs a hold must record; one per id form.

        Raises:
            HoldError: an unknown type, or an id that no table of the type can hold.
        """
        entity_type, entity_id = parse_entity(text)
        forms = self.forms.get(entity_type)
        if forms is None:
            raise HoldError(
                f"{_shown(text)}: unknown entity type {_shown(entity_type)} "
                f"(known types: {self.known()})"
            )
        stored = sorted({n for f in forms if (n := f.normalise(entity_id)) is not None})
        if not stored:
            wanted = " or ".join(f.describe() for f in forms)
            raise HoldError(
                f"{_shown(text)}: the id of {entity_type} is a {wanted}; "
                f"{_shown(entity_id)} is not one (known types: {self.known()})"
            )
        return [(entity_type, entity_id) for entity_id in stored]

    def lookup(self, entity_type: str, entity_id: str) -> list[str]:
        """The stored forms to look `entity_type`/`entity_id` up by (status, certificates):
        normalised as a hold would be (`order`/`042` → `42`) for a known type; as written
        for any other type, so events of a policy since removed stay reachable.

        Raises:
            HoldError: a known type, and an id that no table of it can hold.
        """
        if entity_type not in self.forms:
            return [entity_id]
        return [stored for _, stored in self.resolve(f"{entity_type}:{entity_id}")]


async def entity_types(conn: AsyncConnection, policy_set: PolicySet) -> EntityTypes:
    """Every policy's entity type and every subject type, with the id forms of the
    columns that hold their ids (id columns; subject columns).

    A policy whose table or id column does not exist (yet) purges nothing; if no table of
    a type exists, its ids are taken as text, exactly.
    """

    def reflect(sync: Connection) -> dict[str, tuple[IdForm, ...]]:
        inspector = inspect(sync)
        forms: dict[str, set[IdForm]] = {}
        for policy in policy_set.policies:
            found = forms.setdefault(policy.entity_type, set())
            # A subject type is known too (SPEC §11), in the form of its subject columns.
            subject = policy_set.subject_of(policy)
            of_subject = forms.setdefault(subject.entity_type, set()) if subject else None
            if not inspector.has_table(policy.table):
                continue
            for column in inspector.get_columns(policy.table):
                if column["name"] == policy.id_column:
                    found.add(IdForm.of(column["type"]))
                if of_subject is not None and subject and column["name"] == subject.column:
                    of_subject.add(IdForm.of(column["type"]))
        return {t: tuple(sorted(f)) or (IdForm(IdKind.TEXT),) for t, f in forms.items()}

    return EntityTypes(await conn.run_sync(reflect))


# Built once: a purge batch takes its lock every time, and building the statement and
# its cache key cost more Python than executing it (measured).
_FOR_PURGE = select(func.pg_advisory_xact_lock_shared(HOLD_LOCK))
_FOR_CREATION = select(func.pg_advisory_xact_lock(HOLD_LOCK))


async def lock_for_purge(conn: AsyncConnection) -> None:
    """Take at the start of every purge batch transaction, before selecting rows."""
    await conn.execute(_FOR_PURGE)


async def lock_for_creation(conn: AsyncConnection) -> None:
    await conn.execute(_FOR_CREATION)


def active_hold_exists(
    entity_type: str | ColumnElement[str],
    entity_id: ColumnElement[Any],
    now: datetime,
    *,
    within: tuple[ColumnElement[str], ColumnElement[str]] | None = None,
) -> ColumnElement[bool]:
    """SQL: an unreleased, unexpired hold covers (entity_type, entity_id::text) at `now`.

    `within`: text bounds that every `entity_id::text` the caller asks about lies
    between (both included), so that only the holds in that range of the hold index
    are read (coordinator.purge.planner.batch_window); bounds that left out a text the
    caller asks about would miss its holds.
    """
    bounds: list[ColumnElement[bool]] = []
    if within is not None:
        low, high = within
        bounds = [legal_hold_entities.c.entity_id >= low, legal_hold_entities.c.entity_id <= high]
    return exists(
        select(1)
        .select_from(
            legal_hold_entities.join(legal_holds, legal_holds.c.id == legal_hold_entities.c.hold_id)
        )
        .where(
            legal_hold_entities.c.entity_type == entity_type,
            legal_hold_entities.c.entity_id == cast(entity_id, Text),
            *bounds,
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
    subject_type = func.split_part(subject, ":", 1)
    subject_id = func.substr(subject, func.strpos(subject, ":") + 1)
    return or_(
        active_hold_exists(entity_type, entity_id, now),
        and_(subject.is_not(None), active_hold_exists(subject_type, subject_id, now)),
    )


async def create_hold(
    conn: AsyncConnection,
    *,
    entities: Iterable[str],
    types: EntityTypes,
    reason: str,
    created_by: str,
    now: datetime,
    expires_at: datetime | None = None,
    hold_id: str | None = None,
) -> Hold:
    """Create one hold over many entities (`type:id`, resolved by `types`), in the
    caller's transaction.

    Raises:
        HoldError: an entity `types` refuses, or an invalid reason, actor or expiry.
    """
    parsed = sorted({pair for entity in entities for pair in types.resolve(entity)})
    if not parsed:
        raise HoldError("a hold needs at least one entity (TYPE:ID)")
    if not reason.strip():
        raise HoldError("a hold needs a reason")
    if not created_by.strip():
        raise HoldError("a hold needs --by (who asked for it)")
    if "\x00" in reason + created_by + (hold_id or ""):
        raise HoldError("a hold's reason, author and id cannot contain NUL characters")
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
    # Services learn of it from the holds topic, published from this queue (hold_topic.py).
    await hold_topic.queue(conn, parsed, now=now)
    await append(
        conn,
        [
            AuditEntry(
                AuditAction.HOLD_CREATE,
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
    await append(conn, [AuditEntry(AuditAction.HOLD_RELEASE, by, {"hold_id": hold_id})], at=now)
    hold = await get_hold(conn, hold_id)
    await hold_topic.queue(conn, hold.entities, now=now)
    return hold


async def hold_audit(conn: AsyncConnection, hold_id: str) -> list[dict[str, Any]]:
    """The audit chain's entries about one hold (created, released), oldest first."""
    a = audit_log.c
    rows = await conn.execute(
        select(a.seq, a.at, a.action, a.actor, a.hash)
        .where(
            a.action.in_((AuditAction.HOLD_CREATE, AuditAction.HOLD_RELEASE)),
            a.data["hold_id"].astext == hold_id,
        )
        .order_by(a.seq)
    )
    return [dict(row._mapping) for row in rows]
