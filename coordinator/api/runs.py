"""The run log: each run and what each policy did in it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from coordinator import run_log
from coordinator.api._context import Connection
from coordinator.api.models import RunView

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["runs"])


@router.get("/runs", response_model=list[RunView])
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
