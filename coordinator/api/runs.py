"""The run log, and starting a run outside the schedule."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from coordinator.api._context import Connection, Context, RunInProgress
from coordinator.api.auth import Writer
from coordinator.api.models import RunAccepted, RunRequest, RunView
from coordinator.api.tokens import Scope
from coordinator.purge import run_log

__all__ = ["router"]

router = APIRouter(prefix="/v1/runs", tags=["runs"])


@router.get("", response_model=list[RunView])
async def list_runs(
    conn: Connection,
    limit: Annotated[int, Query(ge=1, le=500, description="Most runs returned.")] = 20,
    policy: Annotated[
        str | None, Query(max_length=100, description="Only runs of this policy.")
    ] = None,
) -> list[RunView]:
    """Recent runs, newest first."""
    found = await run_log.recent_runs(conn, limit=limit, policy=policy)
    return [RunView.model_validate(r) for r in found]


@router.get("/{run_id}", response_model=RunView, responses={404: {"description": "no run"}})
async def get_run(conn: Connection, run_id: uuid.UUID) -> RunView:
    """One run; `finished_at` stays null while it is going."""
    found = await run_log.get_run(conn, run_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id}")
    return RunView.model_validate(found)


@router.post(
    "",
    response_model=RunAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        403: {"description": "`force` needs a token of scope admin"},
        409: {"description": "the previously triggered run is still going"},
        503: {"description": "no tokens file, or not served by `retention serve`"},
    },
)
async def start_run(ctx: Context, actor: Writer, body: RunRequest | None = None) -> RunAccepted:
    """Start a run of the given policies now; poll `status_url` for its results.

    Needs `write`, and `admin` with `force`; the run's audit entries name the token.
    """
    request = body or RunRequest()
    if request.force and not actor.allows(Scope.ADMIN):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"token {actor.name!r} has scope {actor.scope.value}; force needs admin",
        )
    if ctx.trigger_run is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this server cannot start runs")
    try:
        run_id = await ctx.trigger_run(request.policies, request.force, actor.name)
    except RunInProgress as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body", "policies"], "msg": str(exc), "type": "value_error"}],
        ) from None
    return RunAccepted(run_id=run_id, policies=request.policies, status_url=f"/v1/runs/{run_id}")
