"""The event's shape, once: which outbox column each `RetentionEvent` field comes from.

An outbox row is a purge batch (coordinator/store/tables.py `outbox_batches`): the fields
its events share are columns (`SHARED`), and the per-event ones (`schemas.event_json.
PER_EVENT`) come from its arrays and id range. `SHARED` drives the relay's select list,
the SQL expansion into one row per event (coordinator/outbox/lookup.py), `event_from_row`
and the relay's `BatchEncoder`. Adding a field to `RetentionEvent` means: the model, a
migration adding the column, one line here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row

from schemas import EventReason, EventType, RetentionEvent, encode
from schemas.event_json import PER_EVENT, EventTemplate, validate_per_event

__all__ = [
    "ADDRESS",
    "BATCH_COLUMNS",
    "SHARED",
    "BatchEncoder",
    "Encoded",
    "event_from_row",
    "event_id",
    "expand",
    "shared_fields",
]

SHARED: Mapping[str, str] = {
    "type": "event_type",
    "entity_type": "entity_type",
    "policy": "policy",
    "legal_basis": "legal_basis",
    "initiated_at": "initiated_at",
    "deadline": "deadline",
    "fields": "fields",
    "run_id": "run_id",
    "reason": "reason",
    "request_id": "request_id",
}
"""`RetentionEvent` field -> outbox column, for every field the events of a batch share."""

ADDRESS = ("seq", "id_base", "id_first", "entity_ids", "subjects")
"""The columns that make one batch into its events: order, ids, entities, subjects."""

BATCH_COLUMNS = (*ADDRESS, *SHARED.values())
"""What the relay reads of an outbox row."""

# Stored as text; the strict model wants the enum members.
_ENUMS: dict[str, dict[Any, Any]] = {
    "type": {kind.value: kind for kind in EventType},
    "reason": {reason.value: reason for reason in EventReason},
}


def event_id(id_base: uuid.UUID, n: int) -> uuid.UUID:
    """retention_uuidv7_nth(id_base, n) (migration 0005): the base with its last 32 bits n."""
    return uuid.UUID(bytes=id_base.bytes[:12] + n.to_bytes(4, "big", signed=True))


def shared_fields(columns: Mapping[Any, Any]) -> dict[str, Any]:
    """The shared event fields from a row's columns (`SHARED`' column names).

    Raises:
        ValueError: an enum column holds a value the model does not know.
    """
    shared = {}
    for name, column in SHARED.items():
        value = columns[column]
        if name in _ENUMS:
            known = _ENUMS[name].get(value)
            if known is None:
                raise ValueError(f"unknown {column} {value!r}")
            value = known
        shared[name] = value
    return shared


def expand(columns: Mapping[Any, Any]) -> Iterator[tuple[uuid.UUID, Any, Any]]:
    """(event_id, entity_id, subject) of each event of a batch row, in order."""
    base, first = columns["id_base"], columns["id_first"]
    subjects = columns["subjects"] or ()
    for n, entity in enumerate(columns["entity_ids"]):
        yield event_id(base, first + n), entity, subjects[n] if n < len(subjects) else None


def event_from_row(row: Row[Any]) -> RetentionEvent:
    """The wire event of one expanded outbox row (lookup.py's columns).

    Raises:
        ValueError: the row cannot be a `RetentionEvent`.
    """
    columns = row._mapping
    return RetentionEvent(**shared_fields(columns), **{name: columns[name] for name in PER_EVENT})


@dataclass(frozen=True, slots=True)
class Encoded:
    """One event of a batch: its record key and value, or why it cannot be published."""

    event_id: uuid.UUID
    key: bytes = b""
    value: bytes = b""
    error: ValueError | None = None


class BatchEncoder:
    """Record keys and values for the events of outbox batch rows.

    The shared fields are validated and encoded once per batch, by the model itself
    (`schemas.event_json.EventTemplate`); per event only its three own values are
    validated with the model's field types. An event is published exactly when
    `RetentionEvent` accepts it, and its bytes equal `schemas.encode` of it.
    """

    def __call__(self, columns: Mapping[Any, Any]) -> Iterator[Encoded]:
        """The events of one batch row (`BATCH_COLUMNS` by name), in order."""
        ids = expand(columns)
        try:
            shared = shared_fields(columns)
            template = EventTemplate.of(shared)
        except ValueError as exc:  # pydantic's ValidationError included
            for event, _, _ in ids:
                yield Encoded(event, error=exc)
            return
        prefix = f"{columns['entity_type']}:"
        for event, entity, subject in ids:
            try:
                validate_per_event(event, entity, subject)
            except ValueError as exc:
                yield Encoded(event, error=exc)
                continue
            if template is None:  # a placeholder collided: encode this one in full
                value = encode(
                    RetentionEvent(**shared, event_id=event, entity_id=entity, subject=subject)
                )
            else:
                value = template.render(event, entity, subject)
            # RetentionEvent.key; the SPEC's record key.
            yield Encoded(event, f"{prefix}{entity}".encode(), value)
