"""Re-publishing stored events (admin): one event, one entity's or one run's.

Each route sends the events again with their own `event_id`, signed, from the
coordinator's evidence; `service` narrows them to those that service is expected to
acknowledge. The actor audited is the token's name. A run can hold millions of events, so
its route queues a job that `serve` works off (coordinator/operations/republish_jobs.py)
and answers 202 with where to follow it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field

from coordinator.api._context import ApiContext, Context
from coordinator.api.auth import Admin
from coordinator.operations import republish_jobs
from coordinator.operations.republish import SAMPLE, Selection, UnknownSelection
from coordinator.outbox.lookup import events_by

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
    sent: list[uuid.UUID] = Field(
        description=f"Re-sent, same event ids: the first {SAMPLE} (`sent_total` counts all)."
    )
    sent_total: int
    held: list[uuid.UUID] = Field(
        description=f"Under an active legal hold now, not sent: the first {SAMPLE}."
    )
    held_total: int
    truncated: bool = Field(description="A list holds fewer ids than its total.")


async def _republish(ctx: ApiContext, selection: Selection, actor: str) -> RepublishResult:
    if ctx.republish is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "re-publishing is not configured")
    try:
        async with ctx.republish.open(ctx.engine, ctx.clock) as republisher:
            done = await republisher.republish(selection, actor=actor)
    except UnknownSelection as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    return RepublishResult.model_validate(done.as_dict())


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


class RepublishJob(BaseModel):
    job_id: uuid.UUID
    run_id: uuid.UUID
    service: str | None
    actor: str = Field(description="The token that asked.")
    state: republish_jobs.JobState = Field(
        description="`queued`, `running` (a replica is sending), `done`, or `failed` after "
        f"{republish_jobs.MAX_ATTEMPTS} attempts."
    )
    attempts: int
    sent: int = Field(description="Events re-sent (once done).")
    held: int = Field(description="Events not sent: under an active legal hold (once done).")
    error: str | None = Field(description="The last attempt's error class, if it failed.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@router.post(
    "/runs/{run_id}/republish",
    response_model=RepublishJob,
    status_code=status.HTTP_202_ACCEPTED,
    responses=_RESPONSES,
)
async def republish_run(
    ctx: Context, actor: Admin, run_id: uuid.UUID, body: RepublishRequest, response: Response
) -> RepublishJob:
    """Queue a re-send of every event of one run (audited per batch as it is sent; needs
    `admin`). Follow it at the `Location` given."""
    if ctx.republish is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "re-publishing is not configured")
    now = ctx.clock.now()
    async with ctx.engine.begin() as conn:
        if not await events_by(conn, now=now, run_id=run_id, limit=1):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no published event matches the run")
        selection = Selection(run_id=run_id, service=body.service)
        job = await republish_jobs.queue(conn, selection, actor=actor.name, now=now)
    response.headers["Location"] = f"/v1/republish-jobs/{job.job_id}"
    return RepublishJob.model_validate(job.as_dict())


@router.get(
    "/republish-jobs/{job_id}",
    response_model=RepublishJob,
    responses={404: {"description": "no such job (finished jobs are kept 30 days)"}},
)
async def republish_job(ctx: Context, job_id: uuid.UUID) -> RepublishJob:
    """Where a queued run re-send stands."""
    async with ctx.engine.connect() as conn:
        job = await republish_jobs.get(conn, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such republish job")
    return RepublishJob.model_validate(job.as_dict())
