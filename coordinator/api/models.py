"""The HTTP API's response and request bodies; FastAPI builds the OpenAPI schema from them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from coordinator.policy.model import Policy
from coordinator.purge.holds import parse_entity

__all__ = [
    "ErasureCreate",
    "ErasureReason",
    "ErasureRequestView",
    "EventView",
    "HealthCheck",
    "HealthView",
    "HoldCreate",
    "HoldView",
    "PolicyResultView",
    "PolicyView",
    "RunAccepted",
    "RunRequest",
    "RunView",
    "ServiceAnswer",
    "VerificationView",
    "VerifyAnswer",
]


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


class HealthCheck(_View):
    ok: bool
    detail: str = Field(description="Empty when ok; what failed otherwise.")
    seconds: float = Field(description="How long the check took.")


class HealthView(_View):
    status: Literal["ok", "unavailable"]
    checks: dict[str, HealthCheck] = Field(
        description="`database`, `kafka`, and `tracker` (the database has the types the "
        "tracker records acks with)."
    )
    signatures: str = Field(
        description="RETENTION_SIGNATURES: required | permissive | off (off verifies nothing)."
    )


class ServiceAnswer(_View):
    service: str
    status: str = Field(
        description="pending | completed | not_found | failed | held | waived | still_present "
        "(a verify found data after its ack; the event is `resurrected`)"
    )
    acknowledged_at: datetime | None
    first_ack_at: datetime | None
    records_affected: int | None
    attempt: int | None
    acks_received: int
    detail: str = Field(description="The ack's detail, or why it was waived.")
    joined_late: bool
    waived_by: str | None = Field(default=None, description="Who waived it (retire, waive).")
    deadline: datetime | None = Field(
        default=None,
        description="When this service's answer is due: its declared completion_deadline "
        "from publication, else the event's deadline.",
    )


class RejectedAck(_View):
    """An ack the tracker refused (SPEC §15): it changed no state."""

    service: str | None
    status: str | None
    reason: str = Field(
        description="bad_signature | unknown_service | unexpected_service | unknown_event "
        "| entity_mismatch | evidence_expired | unexpected_status | verification_expired "
        "| malformed"
    )
    received_at: datetime


class EventView(_View):
    """One retention event and each expected service's answer."""

    event_id: uuid.UUID
    policy: str
    action: str
    entity_type: str
    entity_id: str
    state: str = Field(
        description="unpublished | published | pending | completed | failed | overdue | "
        "resurrected (a service still held data when asked to verify) | "
        "held (not completed, and its entity is under an active legal hold now)"
    )
    legal_basis: str | None
    purged_at: datetime | None
    initiated_at: datetime | None
    published_at: datetime | None
    deadline: datetime | None
    completed_at: datetime | None
    overdue_at: datetime | None
    reminders_sent: int
    services: list[ServiceAnswer]
    rejected_acks: int
    rejected: list[RejectedAck] = Field(description="Each refused ack and why.")


class VerifyAnswer(_View):
    service: str
    status: str = Field(
        description="pending | verified (0 records left) | still_present (some left) | "
        "unsupported (no verify handler: no proof either way) | failed (its count raised)"
    )
    records_affected: int | None = Field(description="Records the service still holds.")
    acknowledged_at: datetime | None
    detail: str


class VerificationView(_View):
    """One verify event (SPEC §12) and each asked service's answer."""

    event_id: uuid.UUID
    entity_type: str
    entity_id: str
    policy: str = Field(description="The sampled policy, or `on_demand`.")
    trigger: str = Field(description="sample | on_demand")
    requested_by: str
    requested_at: datetime
    published_at: datetime | None
    outcome: str = Field(description="verified (every service said 0) | still_present | incomplete")
    services: list[VerifyAnswer]


class OverdueView(_View):
    """One overdue event and one service it still waits for."""

    event_id: uuid.UUID
    entity_type: str
    entity_id: str
    policy: str
    service: str
    status: str = Field(description="the service's answer so far: pending | failed")
    deadline: datetime
    overdue_at: datetime | None
    last_ack_at: datetime | None = Field(description="the service's latest valid ack, if any")
    attempt: int | None
    reminders_sent: int


class OverduePageView(_View):
    items: list[OverdueView]
    next: str | None = Field(description="pass as `after` for the next page; null on the last page")


class NotificationView(_View):
    """One webhook delivery (its payload is not shown)."""

    id: int
    webhook: str
    kind: str = Field(
        description="request_completed | request_overdue | request_on_hold | service_overdue"
    )
    key: str = Field(description="what is notified; one delivery per webhook and key")
    status: str = Field(description="pending | delivered | dropped (webhook removed)")
    attempts: int
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None = Field(description="the next try, while pending")
    last_error: str | None = Field(description="HTTP status or error class of a failed try")
    delivered_at: datetime | None


class RunRequest(BaseModel):
    """Start a run now, outside the schedule."""

    model_config = ConfigDict(extra="forbid")

    policies: list[str] | None = Field(
        default=None, min_length=1, description="Policies to run (default: all of them)."
    )
    force: bool = Field(
        default=False, description="Run even where the guard refuses (needs an admin token)."
    )


class RunAccepted(_View):
    run_id: uuid.UUID
    policies: list[str] | None
    status_url: str = Field(description="Where the run's progress and results appear.")


class PolicyResultView(_View):
    """What one policy did in one run."""

    policy: str
    action: str
    status: str = Field(description="ok | error")
    processed: int
    held: int
    events: int
    duration_s: float
    oldest_unprocessed_days: float | None
    errors: list[str]
    finished_at: datetime | None


class RunView(_View):
    id: uuid.UUID
    started_at: datetime
    finished_at: datetime | None
    status: str = Field(description="running | ok | errors")
    trigger: str
    forced: bool
    policies: list[PolicyResultView]


class HoldView(_View):
    id: str
    reason: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    released_at: datetime | None
    released_by: str | None
    status: str = Field(description="active | expired | released")
    entity_count: int
    entities: list[str] | None = Field(
        default=None, description="`type:id` of each entity (single-hold answers only)."
    )


class HoldCreate(BaseModel):
    """A legal hold over one or more entities."""

    model_config = ConfigDict(extra="forbid")

    entities: list[str] = Field(
        min_length=1, max_length=10_000, description="Entities as `type:id`, e.g. `order:42`."
    )
    reason: str = Field(min_length=1, max_length=2000, description="Why (case number, ...).")
    created_by: str | None = Field(
        default=None,
        max_length=200,
        deprecated=True,
        description="Ignored over HTTP: the hold's creator is the token's name.",
    )
    expires_at: AwareDatetime | None = Field(
        default=None, description="When the hold ends by itself (RFC 3339 with a timezone)."
    )
    id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.:-]{1,200}$",
        description="Your own id for the hold (default: generated).",
    )

    @field_validator("entities")
    @classmethod
    def _entities(cls, value: list[str]) -> list[str]:
        for entity in value:
            parse_entity(entity)  # HoldError is a ValueError: pydantic reports it
        return value


class PolicyView(_View):
    """A loaded policy, the schedule it runs on, and its latest results."""

    name: str
    definition: Policy
    schedule: str = Field(description="The cron expression it runs on (its own or the global).")
    last_result: PolicyResultView | None
    last_success_at: datetime | None
    backup_retention: str | None = Field(
        description="RETENTION_BACKUP_RETENTION: how long backups of the data's database "
        "are kept (null: not set)."
    )
    backups_expire_by: datetime | None = Field(
        description="Rows this policy deletes now stay in backups until this date (SPEC §12)."
    )


class ServiceCompletionView(_View):
    """One service: what it handles now and where its expected acknowledgements stand."""

    service: str
    registered: bool = Field(description="Has a current (not retired) registration.")
    handles: list[str] = Field(description="`action entity_type` of its registration.")
    sdk_version: str | None
    last_seen: datetime | None
    pending: int = Field(description="Open, deadline not yet passed.")
    overdue: int = Field(
        description="Open past its own deadline (the service's, else the event's)."
    )
    failed: int = Field(description="Its last answer was `failed` (also counted as open).")
    held: int = Field(
        default=0,
        description="Answered `held`: not executed under a hold; neither late nor done.",
    )
    completed: int = Field(description="Answered `completed` or `not_found`.")
    waived: int = Field(description="Ended without an answer by `waive` or `retire` (audited).")
    next_deadline: datetime | None = Field(description="Earliest deadline of its open ones.")


class ServiceEventView(_View):
    """One event a service is expected to acknowledge, and its answer so far."""

    event_id: uuid.UUID
    policy: str
    action: str
    entity_type: str
    entity_id: str
    published_at: datetime
    deadline: datetime
    event_state: str = Field(description="The event's state over all its services.")
    status: str = Field(
        description="This service's: pending | completed | not_found | failed | held | waived"
    )
    acknowledged_at: datetime | None
    attempt: int | None
    detail: str = Field(description="The ack's detail, or why it was waived.")
    waived_by: str | None = Field(description="Who waived it (retire, waive).")


class ErasureCreate(BaseModel):
    """An erasure request (SPEC §11); the actor recorded is the token's, never a body field."""

    model_config = ConfigDict(extra="forbid")

    subject: str = Field(
        min_length=3, max_length=511, description="The data subject as `type:id`, e.g. user:42."
    )
    regulation: Literal["gdpr", "ccpa", "other"]
    received_at: AwareDatetime | None = Field(
        default=None, description="When the request arrived (default: now), with a timezone."
    )
    reference: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Your ticket id: the same reference again returns the first request (200).",
    )


class ErasureReason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000)


class ErasureRequestView(_View):
    id: uuid.UUID
    subject: str
    regulation: str
    reference: str | None
    status: str = Field(description="received | in_progress | on_hold | completed | rejected")
    received_at: datetime
    due_at: datetime
    overdue: bool = Field(description="A flag: past due and neither completed nor rejected.")
    extended: bool
    extension_reason: str | None
    holds: list[str] = Field(description="Holds that keep some of the subject's rows.")
    completed_at: datetime | None
    rejection_reason: str | None
