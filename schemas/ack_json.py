"""`RetentionAck` JSON at a service's rate: byte for byte what `schemas.encode` writes.

A service acks every event it handles, and the acks of one batch mostly differ only in
`event_id`, `entity_id`, `records_affected` and `acknowledged_at` (`PER_ACK`). Like
`EventTemplate` (schemas/event_json.py), `AckTemplate` encodes one ack with the model
itself and placeholders in those fields, and cuts the JSON there; each ack is then the
pieces with its own values in between. Building and dumping the model per ack cost
about 6 % of a service's CPU under the end-to-end bench. tests/test_ack_json.py proves
the bytes identical.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from json.encoder import encode_basestring

import msgspec

from schemas.codec import encode
from schemas.event_json import cut
from schemas.models import (
    EARLIEST,
    LATEST,
    MAX_BIGINT,
    AckStatus,
    RetentionAck,
    RetentionEvent,
    rfc3339,
)

__all__ = ["PER_ACK", "AckEncoder", "AckTemplate"]

PER_ACK = ("event_id", "entity_id", "records_affected", "acknowledged_at")
"""The fields that differ between the acks of one batch of one template."""

# Values no real ack carries in these places; a template whose shared fields happen to
# contain one is refused (`AckTemplate.of` returns None) and the caller encodes slowly.
_ID = uuid.UUID("00000000-0000-7000-8000-0000000ac4ac")
_ENTITY = "\ue000entity\ue000"
_COUNT = 7_346_519_028_364_519_027
_AT = datetime(8999, 12, 31, 23, 59, 58, 123457, tzinfo=UTC)

_json_text = msgspec.json.encode


class AckTemplate:
    """The JSON of the acks of one service, entity type, status, detail and attempt."""

    __slots__ = ("_end", "_head", "_id_end", "_middle", "_tail")

    def __init__(self, head: str, id_end: str, middle: str, tail: str, end: str) -> None:
        self._head, self._id_end, self._middle, self._tail = head, id_end, middle, tail
        self._end = end

    @classmethod
    def of(
        cls, *, service: str, entity_type: str, status: AckStatus, detail: str, attempt: int
    ) -> AckTemplate | None:
        """The template for acks with these shared fields.

        Raises:
            ValueError: the shared fields cannot make a `RetentionAck`.
        """
        ack = RetentionAck(
            event_id=_ID,
            service=service,
            entity_type=entity_type,
            entity_id=_ENTITY,
            status=status,
            records_affected=_COUNT,
            detail=detail,
            attempt=attempt,
            acknowledged_at=_AT,
        )
        pieces = cut(
            encode(ack).decode(),
            (f'"{_ID}"', encode_basestring(_ENTITY), str(_COUNT), f'"{rfc3339(_AT)}"'),
        )
        if pieces is None:
            return None
        return cls(*pieces)

    def render(
        self, event_id: str, entity_id: str, records_affected: int, acknowledged_at: str
    ) -> bytes:
        """The ack's JSON with these per-ack values (`entity_id` a valid `NonEmpty`, as
        any decoded event's; `records_affected` an int in the model's bounds; the event
        id as a JSON string of its canonical text form, quotes included; the time as
        `rfc3339` writes it)."""
        return (
            f"{self._head}{event_id}{self._id_end}{encode_basestring(entity_id)}"
            f'{self._middle}{records_affected}{self._tail}"{acknowledged_at}"{self._end}'
        ).encode()


class AckEncoder:
    """Encodes one service's acks, through a template per shared fields where it can."""

    __slots__ = ("_seen_once", "_service", "_templates", "_time")

    MAX_TEMPLATES = 256
    """Past this many templates (or shared-field keys seen once), the cache starts again
    (a steady service uses a handful: one per entity type and status)."""

    def __init__(self, service: str) -> None:
        self._service = service
        self._templates: dict[tuple[str, AckStatus, str, int], AckTemplate | None] = {}
        self._seen_once: set[tuple[str, AckStatus, str, int]] = set()
        self._time: tuple[datetime, str] = (_AT, rfc3339(_AT))
        """The last `acknowledged_at` rendered, and its text: the acks of one batch
        share one (about 1 µs to format)."""

    def encode(
        self,
        event: RetentionEvent,
        status: AckStatus,
        records_affected: int,
        detail: str,
        attempt: int,
        acknowledged_at: datetime,
    ) -> tuple[bytes, bytes]:
        """The ack's record key and value: exactly `RetentionAck(...)`'s, or its
        validation error."""
        shared = (event.entity_type, status, detail, attempt)
        # True == 1 and "completed" == AckStatus.COMPLETED, with equal hashes: either
        # would share the template of a value the model (strict) accepts, and pass
        # where the model refuses it, or spoil that template for the value it equals.
        template = (
            self._templates.get(shared, _MISSING)
            if type(attempt) is int and type(status) is AckStatus
            else None
        )
        if template is _MISSING and shared not in self._seen_once:
            # A detail of its own (a redelivery's processing time, a failure's message)
            # would cost a template per ack and push the steady ones out: a template is
            # made only for shared fields seen before, the model's path serves the first.
            if len(self._seen_once) >= self.MAX_TEMPLATES:
                self._seen_once.clear()
            self._seen_once.add(shared)
            template = None
        elif template is _MISSING:
            try:
                template = AckTemplate.of(
                    service=self._service,
                    entity_type=event.entity_type,
                    status=status,
                    detail=detail,
                    attempt=attempt,
                )
            except ValueError:
                template = None  # the model's path below raises the same error
            if len(self._templates) >= self.MAX_TEMPLATES:
                self._templates.clear()
            self._templates[shared] = template
        if (
            template is not None
            and type(records_affected) is int
            and 0 <= records_affected <= MAX_BIGINT
            and acknowledged_at.tzinfo is UTC
            and EARLIEST <= acknowledged_at < LATEST
        ):
            if self._time[0] is not acknowledged_at:
                self._time = (acknowledged_at, rfc3339(acknowledged_at))
            # msgspec writes a UUID's canonical text in C (`str()` takes ~0.4 µs).
            quoted = _json_text(event.event_id)
            value = template.render(
                quoted.decode(), event.entity_id, records_affected, self._time[1]
            )
            return quoted[1:-1], value
        ack = RetentionAck(
            event_id=event.event_id,
            service=self._service,
            entity_type=event.entity_type,
            entity_id=event.entity_id,
            status=status,
            records_affected=records_affected,
            detail=detail,
            attempt=attempt,
            acknowledged_at=acknowledged_at,
        )
        return ack.key.encode(), encode(ack)


_MISSING = AckTemplate("", "", "", "", "")
"""Marks a shared-fields key not seen yet (None marks one the model refuses)."""
