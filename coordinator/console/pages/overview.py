"""Overview: each policy's backlog age against its retention, last runs, overdue and
drifting services."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from coordinator.api._context import Connection, Context
from coordinator.console._render import ReadPage
from coordinator.erasure import requests
from coordinator.purge import run_log
from coordinator.tracking import drift, queries

__all__ = ["router"]

router = APIRouter(prefix="/ui")

DAY_S = 86400.0
OPEN_SHOWN = 10


async def backlog(ctx: Context, conn: Connection) -> list[dict[str, Any]]:
    """Per policy: retention and the age of its oldest row not yet processed, in days."""
    results = await run_log.last_results(conn)
    rows = []
    for policy in ctx.policy_set.policies:
        last = results.get(policy.name) or {}
        rows.append(
            {
                "policy": policy.name,
                "action": policy.action,
                "retention_days": policy.retention.total_seconds() / DAY_S,
                "backlog_days": last.get("oldest_unprocessed_days"),
                "status": last.get("status"),
                "finished_at": last.get("finished_at"),
            }
        )
    return rows


@router.get("/", response_class=HTMLResponse)
async def overview(page: ReadPage, ctx: Context, conn: Connection) -> Response:
    policies = await backlog(ctx, conn)
    # As a share of retention, so a 30-day and a 7-year policy compare on one axis.
    chart = {
        "labels": [p["policy"] for p in policies],
        "percent": [
            round(100 * (p["backlog_days"] or 0) / p["retention_days"], 1) for p in policies
        ],
    }
    return page.render(
        "overview.html",
        title="Overview",
        nav="overview",
        policies=policies,
        chart=chart,
        runs=await run_log.recent_runs(conn, limit=5),
        services=await _late_services(ctx, conn),
        drifting=[
            d
            for d in (await drift.service_drift(conn, ctx.policy_set.services)).values()
            if d.drifting
        ],
        erasures=await _open_erasures(ctx, conn),
    )


async def _open_erasures(ctx: Context, conn: Connection) -> list[dict[str, Any]]:
    """The open erasure requests due soonest (at most `OPEN_SHOWN`)."""
    now = ctx.clock.now()
    found = [
        r
        for state in requests.Status
        if state.value not in requests.CLOSED
        for r in await requests.list_requests(conn, now=now, status=state, limit=OPEN_SHOWN)
    ]
    found.sort(key=lambda r: (r.due_at, str(r.id)))
    return [r.as_dict(now) for r in found[:OPEN_SHOWN]]


async def _late_services(ctx: Context, conn: Connection) -> list[dict[str, Any]]:
    found = await queries.services_completion(conn, now=ctx.clock.now())
    return [s for s in found if s["overdue"] or s["failed"] or s["pending"]]


@router.get("/overview/services", response_class=HTMLResponse)
async def late_services(page: ReadPage, ctx: Context, conn: Connection) -> Response:
    """The overdue-per-service panel alone, for htmx's periodic refresh."""
    return page.render("_late_services.html", services=await _late_services(ctx, conn))
