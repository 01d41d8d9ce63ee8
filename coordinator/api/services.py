"""Declared services and drift (read), and the two admin writes: retire and waive."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, ConfigDict, Field

from coordinator.api._context import Connection, Context
from coordinator.api.auth import Admin
from coordinator.tracking import drift, waivers

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["services"])

ServiceName = Path(pattern=r"^[A-Za-z0-9_.-]+$", max_length=255)


class ServiceView(BaseModel):
    service: str
    declared: dict[str, list[str]] | None = Field(
        description="entity type → actions from the policy file; null: not declared."
    )
    registered: dict[str, list[str]] = Field(
        description="What its current registration lists (empty: none or tombstoned)."
    )
    drift: str | None = Field(
        description="undeclared | not_registered | handles_differ; null when they agree."
    )
    last_seen: Any = None
    sdk_version: str | None = None


class Waiver(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000)
    by: str | None = Field(
        default=None,
        max_length=200,
        deprecated=True,
        description="Ignored: the actor recorded is the token's name (SPEC §10).",
    )


class WaiverResult(BaseModel):
    waived: list[uuid.UUID]
    completed: list[uuid.UUID]


@router.get("/services", response_model=list[ServiceView])
async def list_services(ctx: Context, conn: Connection) -> list[ServiceView]:
    """Every declared or registered service: declared vs registered handles, and drift."""
    found = await drift.service_drift(conn, ctx.policy_set.services)
    return [ServiceView.model_validate(d.as_dict()) for d in found.values()]


@router.post("/services/{name}/retire", response_model=WaiverResult)
async def retire(ctx: Context, actor: Admin, body: Waiver, name: str = ServiceName) -> WaiverResult:
    """Waive every open acknowledgement of this service (audited; needs `admin`)."""
    async with ctx.engine.begin() as conn:
        done = await waivers.retire_service(
            conn, service=name, reason=body.reason, actor=actor.name, now=ctx.clock.now()
        )
    return WaiverResult(waived=done.events, completed=done.completed)


class EventWaiver(Waiver):
    service: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=255)


@router.post(
    "/events/{event_id}/waive",
    response_model=WaiverResult,
    responses={404: {"description": "no open acknowledgement to waive"}},
)
async def waive(ctx: Context, actor: Admin, event_id: uuid.UUID, body: EventWaiver) -> WaiverResult:
    """Waive one service's open acknowledgement of one event (audited; needs `admin`)."""
    async with ctx.engine.begin() as conn:
        done = await waivers.waive_ack(
            conn,
            event_id=event_id,
            service=body.service,
            reason=body.reason,
            actor=actor.name,
            now=ctx.clock.now(),
        )
    if not done.events:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no open acknowledgement of {event_id} by {body.service}"
        )
    return WaiverResult(waived=done.events, completed=done.completed)
