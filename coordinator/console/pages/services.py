"""Services: declared and registered, with drift, pending, overdue, failed, completed and
waived answers, a drill-down to one service's events, and the admin's retire and waive."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, get_args
from urllib.parse import quote

from fastapi import APIRouter, Form, Path, Query, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from coordinator.api._context import Connection, Context
from coordinator.console._render import AdminPage, Page, ReadPage
from coordinator.tracking import drift, queries, waivers

__all__ = ["router"]

router = APIRouter(prefix="/ui/services")

EVENTS_SHOWN = 200
ServiceName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]+$", max_length=255)]
Reason = Annotated[str, Form(max_length=2000)]


def _handles(pairs: drift.Pairs | None) -> list[str]:
    return [f"{action} {entity_type}" for entity_type, action in sorted(pairs or ())]


@router.get("", response_class=HTMLResponse)
async def list_services(page: ReadPage, ctx: Context, conn: Connection) -> Response:
    completion = await queries.services_completion(conn, now=ctx.clock.now())
    drifts = await drift.service_drift(conn, ctx.policy_set.services)
    # One row per service either list knows: a declared service that never registered
    # and was never sent an event still shows, as drift.
    rows: dict[str, dict[str, Any]] = {s["service"]: dict(s) for s in completion}
    for name, found in drifts.items():
        row = rows.setdefault(
            name,
            {
                "service": name,
                "registered": False,
                "sdk_version": found.sdk_version,
                "last_seen": found.last_seen,
                **dict.fromkeys(("pending", "overdue", "failed", "held", "completed", "waived"), 0),
                "next_deadline": None,
            },
        )
        row["declared"] = None if found.declared is None else _handles(found.declared)
        row["drift"] = found.problem
    for row in rows.values():
        row.setdefault("declared", None)
        row.setdefault("drift", None)
    return page.render(
        "services.html",
        title="Services",
        nav="services",
        services=[rows[name] for name in sorted(rows)],
    )


async def _detail(
    page: Page,
    ctx: Context,
    service: str,
    state: queries.ServiceState,
    *,
    error: str | None = None,
    form: dict[str, str] | None = None,
    status_code: int = status.HTTP_200_OK,
) -> Response:
    async with ctx.engine.connect() as conn:
        events = await queries.service_events(
            conn, service, state=state, now=ctx.clock.now(), limit=EVENTS_SHOWN
        )
    # htmx swaps only the table when another state is picked.
    template = "_service_events.html" if page.partial else "service.html"
    return page.render(
        template,
        status_code=status_code,
        title=f"Service {service}",
        nav="services",
        service=service,
        state=state,
        states=get_args(queries.ServiceState),
        events=events,
        shown=EVENTS_SHOWN,
        error=error,
        form=form or {},
    )


@router.get("/{service}", response_class=HTMLResponse)
async def service_detail(
    page: ReadPage,
    ctx: Context,
    service: ServiceName,
    state: Annotated[queries.ServiceState, Query()] = "overdue",
) -> Response:
    return await _detail(page, ctx, service, state)


def _to_waived(service: str) -> RedirectResponse:
    return RedirectResponse(
        f"/ui/services/{quote(service, safe='')}?state=waived", status.HTTP_303_SEE_OTHER
    )


@router.post("/{service}/retire", response_class=HTMLResponse)
async def retire_service(
    page: AdminPage, ctx: Context, service: ServiceName, reason: Reason = ""
) -> Response:
    if not reason.strip():
        return await _detail(
            page,
            ctx,
            service,
            "overdue",
            error="Retiring a service needs a reason.",
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    async with ctx.engine.begin() as conn:
        await waivers.retire_service(
            conn,
            service=service,
            reason=reason.strip(),
            actor=page.principal.name,
            now=ctx.clock.now(),
        )
    return _to_waived(service)


@router.post("/{service}/events/{event_id}/waive", response_class=HTMLResponse)
async def waive_ack(
    page: AdminPage,
    ctx: Context,
    service: ServiceName,
    event_id: uuid.UUID,
    reason: Reason = "",
    state: Annotated[queries.ServiceState, Form()] = "overdue",
) -> Response:
    if not reason.strip():
        return await _detail(
            page,
            ctx,
            service,
            state,
            error="Waiving an acknowledgement needs a reason.",
            form={"event_id": str(event_id)},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    async with ctx.engine.begin() as conn:
        done = await waivers.waive_ack(
            conn,
            event_id=event_id,
            service=service,
            reason=reason.strip(),
            actor=page.principal.name,
            now=ctx.clock.now(),
        )
    if not done.events:
        return await _detail(
            page,
            ctx,
            service,
            state,
            error=f"No open acknowledgement of {event_id} by {service} to waive.",
            status_code=status.HTTP_404_NOT_FOUND,
        )
    return _to_waived(service)
