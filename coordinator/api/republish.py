"""Re-publishing stored events (admin): one event, one entity's or one run's.

Each route sends the events again with their own `event_id`, signed, from the
coordinator's evidence; `service` narrows them to those that service is expected to
acknowledge. The actor audited is the token's name.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, ConfigDict, Field

from coordinator.api._context import ApiContext, Context
from coordinator.api.auth import Admin
from coordinator.operations.republish import Selection, UnknownSelection

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["operations"])

_NAME = r"^[A-Za-z0-9_.-]+$"
_RESPONSES: dict[int | str, dict[str, str]] = {
    404: {"description": "no published event matches (or its evidence was pruned)"},
    503: {"description": "re-publishing is not configured in this process"},
}


class RepublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str | None = Field(
        default=None,
        pattern=_NAME,
        max_length=255,
        description="Only events this service is an expected acknowledger of.",
    )


class RepublishResult(BaseModel):
    sent: list[uuid.UUID] = Field(description="Re-sent, same event ids.")
    held: list[uuid.UUID] = Field(description="Under an active legal hold now: not sent.")


async def _republish(ctx: ApiContext, selection: Selection, actor: str) -> RepublishResult:
    if ctx.republish is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "re-publishing is not configured")
    try:
        async with ctx.republish.open(ctx.engine, ctx.clock) as republisher:
            done = await republisher.republish(selection, actor=actor)
    except UnknownSelection as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    return RepublishResult(sent=done.sent, held=done.held)


@router.post("/events/{event_id}/republish", response_model=RepublishResult, responses=_RESPONSES)
async def republish_event(
    ctx: Context, actor: Admin, event_id: uuid.UUID, body: RepublishRequest
) -> RepublishResult:
    """Send one event again (audited; needs `admin`)."""
    return await _republish(ctx, Selection(event_id=event_id, service=body.service), actor.name)


@router.post(
    "/entities/{entity_type}/{entity_id}/republish",
    response_model=RepublishResult,
    responses=_RESPONSES,
)
async def republish_entity(
    ctx: Context,
    actor: Admin,
    entity_type: Annotated[str, Path(pattern=_NAME, max_length=100)],
    entity_id: Annotated[str, Path(min_length=1, max_length=500)],
    body: RepublishRequest,
) -> RepublishResult:
    """Send every event of one entity again (audited; needs `admin`)."""
    selection = Selection(entity=(entity_type, entity_id), service=body.service)
    return await _republish(ctx, selection, actor.name)


@router.post("/runs/{run_id}/republish", response_model=RepublishResult, responses=_RESPONSES)
async def republish_run(
    ctx: Context, actor: Admin, run_id: uuid.UUID, body: RepublishRequest
) -> RepublishResult:
    """Send every event of one run again (audited; needs `admin`)."""
    return await _republish(ctx, Selection(run_id=run_id, service=body.service), actor.name)
