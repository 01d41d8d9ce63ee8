"""Runs: the run log and one run's per-policy results."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import HTMLResponse, Response

from coordinator.api._context import Connection
from coordinator.console._render import ReadPage
from coordinator.purge import run_log

__all__ = ["router"]

router = APIRouter(prefix="/ui/runs")


@router.get("", response_class=HTMLResponse)
async def list_runs(
    page: ReadPage,
    conn: Connection,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Response:
    return page.render(
        "runs.html",
        title="Runs",
        nav="runs",
        runs=await run_log.recent_runs(conn, limit=limit),
        limit=limit,
    )


@router.get("/{run_id}", response_class=HTMLResponse)
async def run_detail(page: ReadPage, conn: Connection, run_id: uuid.UUID) -> Response:
    found = await run_log.get_run(conn, run_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id}")
    return page.render("run.html", title=f"Run {run_id}", nav="runs", run=found)
