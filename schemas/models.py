"""Wire models shared by the coordinator, the consumer SDK and the tracker (SPEC §3)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
)

__all__ = [
    "EARLIEST",
    "HANDLED_ACTIONS",
    "LATEST",
    "MAX_BIGINT",
    "MAX_DETAIL_CHARS",
    "MAX_INTEGER",
    "MAX_LIST_ITEMS",
    "MAX_NAME_CHARS",
    "MAX_TEXT_CHARS",
    "SCHEMA_VERSION",
    "STORABLE_TEXT",
    "VERIFY_STATUSES",
    "AckStatus",
    "EventReason",
    "EventType",
    "HandledEntity",
    "HoldRecord",
    "RetentionAck",
    "RetentionEvent",
    "ServiceRegistration",
    "StrictModel",
    "UtcDatetime",
    "WireModel",
    "rfc3339",
    "utc_now",
]

SCHEMA_VERSION = 1
"""Major version this code writes and the highest it reads."""

# Bounds (SPEC §3): whatever passes decoding must also fit PostgreSQL and Python's datetime,
# or a reader would accept a record and then fail on it forever.
STORABLE_TEXT = r"^[^\x00]*$"
"""PostgreSQL text can't hold NUL; the pattern also refuses lone surrogates (not UTF-8)."""
MAX_NAME_CHARS = 255
MAX_TEXT_CHARS = 1024
MAX_DETAIL_CHARS = 2048
MAX_LIST_ITEMS = 256
MAX_BIGINT = 2**63 - 1
"""PostgreSQL bigint (records_affected)."""
MAX_INTEGER = 2**31 - 1
"""PostgreSQL integer (attempt)."""
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
"""Timestamps lie in [EARLIEST, LATEST): far from datetime's year 1..9999, so adding a
deadline or a reminder interval to one can't overflow."""

NonEmpty = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS, pattern=STORABLE_TEXT)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS, pattern=STORABLE_TEXT)]
SubjectRef = Annotated[
    str, Field(min_length=3, max_length=2 * MAX_NAME_CHARS + 1, pattern=r"^[^:\x00]+:[^\x00]+$")
]
"""`"type:id"` of a data subject: a type and an id, each within the names' bounds."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(value: datetime) -> str:
    """A timestamp as every wire record writes it: UTC, microseconds, `Z`."""
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


UtcDatetime = Annotated[
    AwareDatetime,
    # Compared before conversion: `0001-01-01T00:00:00+14:00` is refused here rather
    # than overflowing in astimezone.
    Field(ge=EARLIEST, lt=LATEST),
    # Every timestamp on the wire is UTC, whatever offset the writer used.
    AfterValidator(lambda value: value.astimezone(UTC)),
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "formatMinimum": rfc3339(EARLIEST),
            "formatExclusiveMaximum": rfc3339(LATEST),
        }
    ),
]


class EventType(StrEnum):
    DELETE = "delete"
    ANONYMIZE = "anonymize"
    VERIFY = "verify"
    """Ask how many records a service still holds for an entity it reported done (SPEC §12);
    never a reason to change data."""


HANDLED_ACTIONS = (EventType.DELETE, EventType.ANONYMIZE)
"""The actions a service handles and is declared for; `verify` is asked of every service
that handles the entity type (it answers `unsupported` without a verify handler)."""


class EventReason(StrEnum):
    """Why an event exists (SPEC §11)."""

    RETENTION_POLICY = "retention_policy"
    ERASURE_REQUEST = "erasure_request"


class AckStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    NOT_FOUND = "not_found"
    HELD = "held"
    """Not executed: a hold on the entity or its `subject` was on the holds topic (SPEC §11)."""
    # Answers to a `verify` event (SPEC §12), never to a delete or anonymize event.
    VERIFIED = "verified"
    STILL_PRESENT = "still_present"
    UNSUPPORTED = "unsupported"


VERIFY_STATUSES = frozenset({AckStatus.VERIFIED, AckStatus.STILL_PRESENT, AckStatus.UNSUPPORTED})
"""The statuses a verify event is answered with, and only it."""


class StrictModel(BaseModel):
    """Strict on types, lenient on unknown fields so newer producers stay readable."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class WireModel(StrictModel):
    """A top-level record on a topic: it carries the schema's major version."""

    schema_version: Annotated[int, Field(ge=1)] = SCHEMA_VERSION

    @field_validator("schema_version")
    @classmethod
    def _known_major(cls, value: int) -> int:
        if value > SCHEMA_VERSION:
            # The value is not quoted: a poison reason never repeats the record's input.
            raise ValueError(
                f"schema_version is newer than the highest this reader knows ({SCHEMA_VERSION})"
            )
        return value


class RetentionEvent(WireModel):
    """One entity to delete or anonymize, published on `data.retention`."""

    event_id: uuid.UUID
    type: EventType
    entity_type: NonEmpty
    entity_id: NonEmpty
    policy: NonEmpty
    legal_basis: Text
    initiated_at: UtcDatetime
    deadline: UtcDatetime
    fields: Annotated[list[NonEmpty], Field(max_length=MAX_LIST_ITEMS)] = Field(
        default_factory=list
    )
    run_id: uuid.UUID | None = None
    reason: EventReason = EventReason.RETENTION_POLICY
    request_id: uuid.UUID | None = None
    subject: SubjectRef | None = None
    """`"type:id"` of the data subject whose row this is; null when the policy names none."""

    @property
    def key(self) -> str:
        """The Kafka record key: ordering is per entity."""
        return f"{self.entity_type}:{self.entity_id}"


class RetentionAck(WireModel):
    """A service's answer to one event, published on `data.retention.acks`."""

    event_id: uuid.UUID
    service: NonEmpty
    entity_type: NonEmpty
    entity_id: NonEmpty
    status: AckStatus
    records_affected: Annotated[int, Field(ge=0, le=MAX_BIGINT)]
    detail: Annotated[str, Field(max_length=MAX_DETAIL_CHARS, pattern=STORABLE_TEXT)] = ""
    attempt: Annotated[int, Field(ge=1, le=MAX_INTEGER)] = 1
    acknowledged_at: UtcDatetime

    @property
    def key(self) -> str:
        return str(self.event_id)


class HandledEntity(StrictModel):
    """One entity type and the actions a service handles for it."""

    entity_type: NonEmpty
    actions: Annotated[list[EventType], Field(max_length=len(EventType))]


class ServiceRegistration(WireModel):
    """What a service handles, on the compacted `data.retention.services` topic."""

    service: NonEmpty
    handles: Annotated[list[HandledEntity], Field(max_length=MAX_LIST_ITEMS)]
    sdk_version: Annotated[str, Field(max_length=MAX_NAME_CHARS, pattern=STORABLE_TEXT)]
    registered_at: UtcDatetime

    @property
    def key(self) -> str:
        return self.service


class HoldRecord(WireModel):
    """An entity's current set of active holds, on the compacted `data.retention.holds`.

    Keyed `"type:id"`; a tombstone (no value) when the set becomes empty (SPEC §11).
    """

    entity_type: NonEmpty
    entity_id: NonEmpty
    holds: Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_LIST_ITEMS)]
    updated_at: UtcDatetime

    @property
    def key(self) -> str:
        return f"{self.entity_type}:{self.entity_id}"
