"""The HTTP API's response and request bodies; FastAPI builds the OpenAPI schema from them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "EventView",
    "HealthCheck",
    "HealthView",
    "PolicyResultView",
    "RunView",
    "ServiceAnswer",
]


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


class HealthCheck(_View):
    ok: bool
    detail: str = Field(description="Empty when ok; what failed otherwise.")
    seconds: float = Field(description="How long the check took.")


class HealthView(_View):
    status: Literal["ok", "unavailable"]
    checks: dict[str, HealthCheck] = Field(description="`database` and `kafka`.")


class ServiceAnswer(_View):
    service: str
    status: str = Field(description="pending | completed | not_found | failed")
    acknowledged_at: datetime | None
    first_ack_at: datetime | None
    records_affected: int | None
    attempt: int | None
    acks_received: int
    detail: str
    joined_late: bool


class EventView(_View):
    """One retention event and each expected service's answer."""

    event_id: uuid.UUID
    policy: str
    action: str
    entity_type: str
    entity_id: str
    state: str = Field(
        description="unpublished | published | pending | completed | failed | overdue"
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
