"""Erasure requests (SPEC §11): list filtered by status and overdue, file one, a request's
progress per policy and per service, extend it; its certificate is the `/v1` one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from coordinator.api._context import Connection, Context
from coordinator.console._render import Page, ReadPage, WritePage
from coordinator.erasure import certificate, requests
from coordinator.erasure.due import Regulation
from coordinator.erasure.service import Erasure

__all__ = ["router"]

router = APIRouter(prefix="/ui/erasure-requests")

SHOWN = 500


def _erasure(ctx: Context) -> Erasure:
    if ctx.erasure is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "erasure requests not enabled")
    return ctx.erasure


def _received(text: str) -> datetime | None:
    """The form's `datetime-local` value, which the page labels as UTC."""
    if not text.strip():
        return None
    try:
        return datetime.fromisoformat(text.strip()).replace(tzinfo=UTC)
    except ValueError:
        raise requests.ErasureError(f"received {text[:40]!r} is not a date and time") from None


async def _list_page(
    page: Page,
    ctx: Context,
    conn: Connection,
    *,
    state: requests.Status | None,
    overdue: bool,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    now = ctx.clock.now()
    found = await requests.list_requests(conn, now=now, status=state, overdue=overdue, limit=SHOWN)
    query = "&".join(
        part
        for part in (f"status={state.value}" if state else "", "overdue=true" if overdue else "")
        if part
    )
    return page.render(
        "_erasure_table.html" if page.partial else "erasure_requests.html",
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT if error else status.HTTP_200_OK,
        title="Erasure requests",
        nav="erasure",
        requests=[r.as_dict(now) for r in found],
        statuses=[s.value for s in requests.Status],
        regulations=[r.value for r in Regulation],
        state=state.value if state else "",
        overdue=overdue,
        json_href="/v1/erasure-requests" + (f"?{query}" if query else ""),
        shown=SHOWN,
        error=error,
        form=form or {},
    )


@router.get("", response_class=HTMLResponse)
async def list_requests(
    page: ReadPage,
    ctx: Context,
    conn: Connection,
    state: Annotated[requests.Status | None, Query(alias="status")] = None,
    overdue: bool = False,
) -> Response:
    return await _list_page(page, ctx, conn, state=state, overdue=overdue)


@router.post("", response_class=HTMLResponse)
async def create_request(
    page: WritePage,
    ctx: Context,
    subject: Annotated[str, Form(max_length=511)],
    regulation: Annotated[Regulation, Form()],
    reference: Annotated[str, Form(max_length=200)] = "",
    received_at: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    try:
        request, _ = await _erasure(ctx).create(
            subject=subject.strip(),
            regulation=regulation,
            received_at=_received(received_at),
            reference=reference.strip() or None,
            by=page.principal.name,
        )
    except requests.ErasureError as exc:
        form = {"subject": subject, "reference": reference, "received_at": received_at}
        async with ctx.engine.connect() as conn:
            return await _list_page(
                page, ctx, conn, state=None, overdue=False, error=str(exc), form=form
            )
    return RedirectResponse(f"/ui/erasure-requests/{request.id}", status.HTTP_303_SEE_OTHER)


@router.get("/{request_id}", response_class=HTMLResponse)
async def request_detail(
    page: ReadPage, ctx: Context, conn: Connection, request_id: uuid.UUID
) -> Response:
    try:
        found = await certificate.detail(conn, request_id, now=ctx.clock.now())
    except requests.RequestNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    return page.render(
        "erasure_request.html",
        title=f"Erasure request {found['subject']}",
        nav="erasure",
        request=found,
    )


@router.post("/{request_id}/extend")
async def extend_request(
    page: WritePage,
    ctx: Context,
    request_id: uuid.UUID,
    reason: Annotated[str, Form(min_length=1, max_length=2000)],
) -> Response:
    erasure = _erasure(ctx)
    try:
        async with ctx.engine.begin() as conn:
            await requests.extend_request(
                conn,
                request_id,
                reason=reason,
                by=page.principal.name,
                now=ctx.clock.now(),
                default_days=erasure.settings.erasure_default_days,
            )
    except requests.RequestNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except requests.RequestConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except requests.ErasureError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return RedirectResponse(f"/ui/erasure-requests/{request_id}", status.HTTP_303_SEE_OTHER)
