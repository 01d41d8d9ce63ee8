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
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any, Literal

from sqlalchemy import Row

from schemas import EventReason, EventType, RetentionEvent, encode
from schemas.event_json import PER_EVENT, EventTemplate, invalid_per_event, valid_per_event

try:
    from coordinator.outbox import _expand
except ImportError:  # not built (setup.py, optional): the same bytes in Python
    _expand = None  # type: ignore[assignment]

__all__ = [
    "ADDRESS",
    "BATCH_COLUMNS",
    "EXPANSION",
    "SHARED",
    "BatchEncoder",
    "Encoded",
    "event_from_row",
    "event_id",
    "event_id_texts",
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

EXPANSION: Literal["native", "python"] = "python" if _expand is None else "native"
"""Who makes a valid batch's ids, keys and values: `coordinator.outbox._expand` (C) or
the Python below (the same bytes); the relay's `relay_started` line says which."""

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


def event_from_row(row: Row[Any]) -> RetentionEvent:
    """The wire event of one expanded outbox row (lookup.py's columns).

    Raises:
        ValueError: the row cannot be a `RetentionEvent`.
    """
    columns = row._mapping
    return RetentionEvent(**shared_fields(columns), **{name: columns[name] for name in PER_EVENT})


def event_id_texts(id_base: uuid.UUID, first: int, count: int) -> list[str]:
    """The text form of `event_id(id_base, first + n)` for n in range(count): the base's
    text with its last 8 hex digits replaced (the relay's rate cannot afford a UUID object
    per event)."""
    prefix = str(id_base)[:28]
    return [f"{prefix}{(first + n) & 0xFFFFFFFF:08x}" for n in range(count)]


@dataclass(eq=False, slots=True)
class Encoded:
    """The events of one batch row, in order: ids (text), record keys and values.

    `errors` maps the position of each event that cannot be published to why; its key and
    value are empty. Every other event is exactly what `RetentionEvent` accepts, and its
    value equals `schemas.encode` of it.
    """

    event_ids: list[str]
    keys: list[bytes]
    values: list[bytes]
    errors: dict[int, ValueError]


class BatchEncoder:
    """Record keys and values for the events of outbox batch rows.

    The shared fields are validated and encoded once per batch, by the model itself
    (`schemas.event_json.EventTemplate`); the per-event values are validated with the
    model's field types, all of a batch in one call (one by one only to find which
    events a failing batch holds that the model refuses).
    """

    def __call__(self, columns: Mapping[Any, Any]) -> Encoded:
        """The events of one batch row (`BATCH_COLUMNS` by name)."""
        entities = columns["entity_ids"]
        count = len(entities)
        subjects = list(columns["subjects"] or ())[:count]
        subjects += [None] * (count - len(subjects))
        try:
            shared = shared_fields(columns)
            template = EventTemplate.of(shared)
        except ValueError as exc:  # pydantic's ValidationError included
            ids = event_id_texts(columns["id_base"], columns["id_first"], count)
            return Encoded(ids, [b""] * count, [b""] * count, dict.fromkeys(range(count), exc))
        prefix = f"{columns['entity_type']}:"
        if template is not None and _expand is not None and valid_per_event(entities, subjects):
            # The rule, in one C call: the same ids, keys and values as below. The C call
            # takes exact `str` only; a subclass (never from the driver) takes the rule below.
            try:
                expanded = _expand.expand(
                    str(columns["id_base"])[:28],
                    columns["id_first"],
                    prefix.encode(),
                    entities,
                    subjects,
                    *template.utf8_pieces(),
                    encode_basestring,
                )
            except TypeError:
                pass
            else:
                return Encoded(*expanded, {})
        ids = event_id_texts(columns["id_base"], columns["id_first"], count)
        errors = invalid_per_event(ids, entities, subjects)
        if template is not None and not errors:  # the rule; below, one event at a time
            render = template.render
            return Encoded(
                ids,
                # RetentionEvent.key; the SPEC's record key.
                [f"{prefix}{entity}".encode() for entity in entities],
                [render(*event) for event in zip(ids, entities, subjects, strict=True)],
                errors,
            )
        keys: list[bytes] = []
        values: list[bytes] = []
        for n, (event, entity, subject) in enumerate(zip(ids, entities, subjects, strict=True)):
            if n in errors:
                keys.append(b"")
                values.append(b"")
                continue
            if template is None:  # a placeholder collided: encode this one in full
                values.append(
                    encode(
                        RetentionEvent(
                            **shared, event_id=uuid.UUID(event), entity_id=entity, subject=subject
                        )
                    )
                )
            else:
                values.append(template.render(event, entity, subject))
            # RetentionEvent.key; the SPEC's record key.
            keys.append(f"{prefix}{entity}".encode())
        return Encoded(ids, keys, values, errors)
