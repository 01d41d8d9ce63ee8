"""Outbox rows as `RetentionEvent`s, and as Kafka records at the relay's rate.

`event_from_row` builds (and validates) one event. The relay uses `RecordEncoder`
instead: the rows of one purge batch differ only in `event_id`, `entity_id` and `subject`, so it
validates and encodes each distinct combination of the other columns once, with the
model itself, and per row validates just those three fields with the model's own field
types and splices them into the JSON. A row is accepted exactly when `RetentionEvent`
would accept it (its validation is per field: the model has no model validators, which
tests/test_event_json.py checks) and the bytes equal `schemas.encode` of that event.
Per row this costs ~1.5 µs where building and dumping the model costs ~8 µs.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable, Sequence
from typing import Annotated, Any

from pydantic import ConfigDict, TypeAdapter
from sqlalchemy import Row, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import Uuid

from coordinator.outbox.event_json import EventWriter, Parts, splice
from coordinator.store.tables import outbox
from schemas import EventReason, EventType, RetentionEvent

__all__ = [
    "EVENT_COLUMNS",
    "RecordEncoder",
    "event_from_columns",
    "event_from_row",
    "load_events",
]

EVENT_COLUMNS = (
    "event_id",
    "event_type",
    "entity_type",
    "entity_id",
    "policy",
    "legal_basis",
    "initiated_at",
    "deadline",
    "fields",
    "run_id",
    "reason",
    "request_id",
    "subject",
)
"""The outbox columns an event is made of, in `event_from_columns`' order."""

_EVENT_TYPES = {kind.value: kind for kind in EventType}
_REASONS = {reason.value: reason for reason in EventReason}


def event_from_columns(
    event_id: Any,
    event_type: Any,
    entity_type: Any,
    entity_id: Any,
    policy: Any,
    legal_basis: Any,
    initiated_at: Any,
    deadline: Any,
    fields: Any,
    run_id: Any,
    reason: Any,
    request_id: Any,
    subject: Any,
) -> RetentionEvent:
    """The event from `EVENT_COLUMNS`' values, positionally.

    Raises:
        ValueError: they cannot be a `RetentionEvent` (pydantic's ValidationError is one).
    """
    kind = _EVENT_TYPES.get(event_type)
    if kind is None:
        raise ValueError(f"unknown event_type {event_type!r}")
    why = _REASONS.get(reason)
    if why is None:
        raise ValueError(f"unknown reason {reason!r}")
    return RetentionEvent(
        event_id=event_id,
        type=kind,
        entity_type=entity_type,
        entity_id=entity_id,
        policy=policy,
        legal_basis=legal_basis,
        initiated_at=initiated_at,
        deadline=deadline,
        # Strict validation refuses anything but a JSON array of strings.
        fields=fields,
        run_id=run_id,
        reason=why,
        request_id=request_id,
        subject=subject,
    )


def event_from_row(row: Row[Any]) -> RetentionEvent:
    """The wire event for an outbox row (any row with `EVENT_COLUMNS` among its columns).

    Raises:
        ValueError: the row cannot be a `RetentionEvent`.
    """
    columns = row._mapping
    return event_from_columns(*(columns[name] for name in EVENT_COLUMNS))


async def load_events(
    conn: AsyncConnection, event_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, RetentionEvent]:
    """The published events with these ids, as the wire events they were: the one lookup
    of existing events by id (re-publication after a hold's release reads through it)."""
    if not event_ids:
        return {}
    ids = bindparam("load_event_ids", list(event_ids), type_=ARRAY(Uuid()))
    rows = await conn.execute(
        select(*(outbox.c[name] for name in EVENT_COLUMNS)).where(outbox.c.event_id == any_(ids))
    )
    return {row.event_id: event_from_row(row) for row in rows}


def _field_type(name: str) -> Any:
    field = RetentionEvent.model_fields[name]
    return Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation


# The per-row fields, validated as the (strict) model validates them.
_PER_ROW_TYPE: Any = tuple[  # type: ignore[misc]
    _field_type("event_id"), _field_type("entity_id"), _field_type("subject")
]
_PER_ROW: TypeAdapter[tuple[Any, Any]] = TypeAdapter(_PER_ROW_TYPE, config=ConfigDict(strict=True))


class RecordEncoder:
    """Record key and value for outbox rows; one per claim (it caches what rows share)."""

    def __init__(self) -> None:
        self._write = EventWriter()
        self._shapes: dict[Hashable, Parts] = {}

    def __call__(self, row: Sequence[Any]) -> tuple[bytes, bytes]:
        """Key and value of the row's event (`EVENT_COLUMNS`, in order).

        Raises:
            ValueError: the row cannot be a `RetentionEvent`.
        """
        (
            event_id,
            event_type,
            entity_type,
            entity_id,
            policy,
            legal_basis,
            initiated_at,
            deadline,
            fields,
            run_id,
            reason,
            request_id,
            subject,
        ) = row
        parts: Parts | None = None
        # A cached combination was a valid event, so only a list of strings can match
        # it; a string or an object must not pass for the tuple of its characters or keys.
        shared = None
        if type(fields) is list:
            shared = (
                event_type,
                entity_type,
                policy,
                legal_basis,
                initiated_at,
                deadline,
                tuple(fields),
                run_id,
                reason,
                request_id,
            )
            try:
                parts = self._shapes.get(shared)
            except TypeError:  # unhashable items: not a valid event anyway
                shared = None
        if parts is None:
            event = event_from_columns(*row)
            parts = self._write.parts(event)
            if shared is not None:
                self._shapes[shared] = parts
        else:
            _PER_ROW.validate_python((event_id, entity_id, subject))
        # RetentionEvent.key; the SPEC's record key.
        key = f"{entity_type}:{entity_id}".encode()
        return key, splice(parts, event_id, entity_id, subject)
