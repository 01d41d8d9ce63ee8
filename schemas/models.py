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
    "SCHEMA_VERSION",
    "AckStatus",
    "EventReason",
    "EventType",
    "HandledEntity",
    "RetentionAck",
    "RetentionEvent",
    "ServiceRegistration",
    "StrictModel",
    "UtcDatetime",
    "WireModel",
    "utc_now",
]

SCHEMA_VERSION = 1
"""Major version this code writes and the highest it reads."""

NonEmpty = Annotated[str, Field(min_length=1, max_length=255)]
SubjectRef = Annotated[str, Field(min_length=3, max_length=511, pattern=r"^[^:]+:[\s\S]+$")]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


UtcDatetime = Annotated[
    AwareDatetime,
    # Every timestamp on the wire is UTC, whatever offset the writer used.
    AfterValidator(lambda value: value.astimezone(UTC)),
    PlainSerializer(_rfc3339, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class EventType(StrEnum):
    DELETE = "delete"
    ANONYMIZE = "anonymize"


class EventReason(StrEnum):
    """Why an event exists (SPEC §11)."""

    RETENTION_POLICY = "retention_policy"
    ERASURE_REQUEST = "erasure_request"


class AckStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    NOT_FOUND = "not_found"


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
            raise ValueError(
                f"schema_version {value} is newer than the highest this reader knows "
                f"({SCHEMA_VERSION})"
            )
        return value


class RetentionEvent(WireModel):
    """One entity to delete or anonymize, published on `data.retention`."""

    event_id: uuid.UUID
    type: EventType
    entity_type: NonEmpty
    entity_id: NonEmpty
    policy: NonEmpty
    legal_basis: str
    initiated_at: UtcDatetime
    deadline: UtcDatetime
    fields: list[str] = Field(default_factory=list)
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
    records_affected: Annotated[int, Field(ge=0)]
    detail: str = ""
    attempt: Annotated[int, Field(ge=1)] = 1
    acknowledged_at: UtcDatetime

    @property
    def key(self) -> str:
        return str(self.event_id)


class HandledEntity(StrictModel):
    """One entity type and the actions a service handles for it."""

    entity_type: NonEmpty
    actions: list[EventType]


class ServiceRegistration(WireModel):
    """What a service handles, on the compacted `data.retention.services` topic."""

    service: NonEmpty
    handles: list[HandledEntity]
    sdk_version: str
    registered_at: UtcDatetime

    @property
    def key(self) -> str:
        return self.service
