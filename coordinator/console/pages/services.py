"""Services: registered and expected, with pending, overdue and failed answers, and a
drill-down to one service's events."""

from __future__ import annotations

from typing import Annotated, get_args

from fastapi import APIRouter, Path, Query
from fastapi.responses import HTMLResponse, Response

from coordinator.api._context import Connection, Context
from coordinator.console._render import ReadPage
from coordinator.tracking import queries

__all__ = ["router"]

router = APIRouter(prefix="/ui/services")

EVENTS_SHOWN = 200


@router.get("", response_class=HTMLResponse)
async def list_services(page: ReadPage, ctx: Context, conn: Connection) -> Response:
    return page.render(
        "services.html",
        title="Services",
        nav="services",
        services=await queries.services_completion(conn, now=ctx.clock.now()),
    )


@router.get("/{service}", response_class=HTMLResponse)
async def service_detail(
    page: ReadPage,
    ctx: Context,
    conn: Connection,
    service: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]+$", max_length=255)],
    state: Annotated[queries.ServiceState, Query()] = "overdue",
) -> Response:
    events = await queries.service_events(
        conn, service, state=state, now=ctx.clock.now(), limit=EVENTS_SHOWN
    )
    # htmx swaps only the table when another state is picked.
    template = "_service_events.html" if page.partial else "service.html"
    return page.render(
        template,
        title=f"Service {service}",
        nav="services",
        service=service,
        state=state,
        states=get_args(queries.ServiceState),
        events=events,
        shown=EVENTS_SHOWN,
    )
