"""Erasure requests (SPEC §11): read with a `read` token, create and extend with `write`,
reject with `admin`. The actor recorded is the token's name, never a body field."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import HTMLResponse

from coordinator.api._context import Connection, Context
from coordinator.api.auth import Admin, Writer
from coordinator.api.models import ErasureCreate, ErasureReason, ErasureRequestView
from coordinator.erasure import certificate as certificates
from coordinator.erasure import requests
from coordinator.erasure.due import Regulation
from coordinator.erasure.service import Erasure

__all__ = ["router"]

router = APIRouter(prefix="/v1/erasure-requests", tags=["erasure requests"])


def _error(exc: requests.ErasureError) -> HTTPException:
    if isinstance(exc, requests.RequestNotFound):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))
    if isinstance(exc, requests.RequestConflict):
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


def _erasure(ctx: Context) -> Erasure:
    if ctx.erasure is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "erasure requests not enabled")
    return ctx.erasure


def _view(request: requests.ErasureRequest, ctx: Context) -> ErasureRequestView:
    return ErasureRequestView.model_validate(request.as_dict(ctx.clock.now()))


@router.post(
    "",
    response_model=ErasureRequestView,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "a request with this reference exists: it is returned"},
        422: {"description": "unknown subject type (the known ones are listed), bad input"},
    },
)
async def create_request(
    ctx: Context, actor: Writer, body: ErasureCreate, response: Response
) -> ErasureRequestView:
    """File an erasure request and act on it: every mapped table, then the fan-out."""
    try:
        request, created = await _erasure(ctx).create(
            subject=body.subject,
            regulation=Regulation(body.regulation),
            received_at=body.received_at,
            reference=body.reference,
            by=actor.name,
        )
    except requests.ErasureError as exc:
        raise _error(exc) from None
    if not created:
        response.status_code = status.HTTP_200_OK
    return _view(request, ctx)


@router.get("", response_model=list[ErasureRequestView])
async def list_requests(
    ctx: Context,
    conn: Connection,
    status_: Annotated[requests.Status | None, Query(alias="status")] = None,
    overdue: Annotated[bool, Query(description="Only overdue requests.")] = False,
) -> list[ErasureRequestView]:
    """Requests by due date, soonest first."""
    found = await requests.list_requests(conn, now=ctx.clock.now(), status=status_, overdue=overdue)
    return [_view(r, ctx) for r in found]


@router.get("/{request_id}", responses={404: {"description": "no such request"}})
async def get_request(ctx: Context, conn: Connection, request_id: uuid.UUID) -> dict[str, Any]:
    """One request: per policy rows affected or exempt, per service acknowledgements."""
    try:
        return await certificates.detail(conn, request_id, now=ctx.clock.now())
    except requests.ErasureError as exc:
        raise _error(exc) from None


@router.post(
    "/{request_id}/extend",
    response_model=ErasureRequestView,
    responses={
        404: {"description": "no such request"},
        409: {"description": "already extended, completed or rejected"},
    },
)
async def extend_request(
    ctx: Context, actor: Writer, request_id: uuid.UUID, body: ErasureReason
) -> ErasureRequestView:
    """Extend the due date once, as the regulation allows."""
    erasure = _erasure(ctx)
    try:
        async with ctx.engine.begin() as conn:
            request = await requests.extend_request(
                conn,
                request_id,
                reason=body.reason,
                by=actor.name,
                now=ctx.clock.now(),
                default_days=erasure.settings.erasure_default_days,
            )
    except requests.ErasureError as exc:
        raise _error(exc) from None
    return _view(request, ctx)


@router.post(
    "/{request_id}/reject",
    response_model=ErasureRequestView,
    responses={
        404: {"description": "no such request"},
        409: {"description": "already completed or rejected"},
    },
)
async def reject_request(
    ctx: Context, actor: Admin, request_id: uuid.UUID, body: ErasureReason
) -> ErasureRequestView:
    """Reject a request that is not completed, with a reason (e.g. identity not verified)."""
    try:
        async with ctx.engine.begin() as conn:
            request = await requests.reject_request(
                conn, request_id, reason=body.reason, by=actor.name, now=ctx.clock.now()
            )
    except requests.ErasureError as exc:
        raise _error(exc) from None
    return _view(request, ctx)


@router.get(
    "/{request_id}/certificate",
    responses={
        404: {"description": "no such request"},
        200: {"content": {"application/json": {}, "text/html": {}}},
    },
)
async def get_certificate(
    ctx: Context,
    conn: Connection,
    request_id: uuid.UUID,
    format_: Annotated[str, Query(alias="format", pattern="^(json|html)$")] = "json",
) -> Any:
    """The request's certificate, as JSON or as a printable HTML page."""
    try:
        document = await certificates.certificate(
            conn, request_id, now=ctx.clock.now(), backups=ctx.backups
        )
    except requests.ErasureError as exc:
        raise _error(exc) from None
    if format_ == "html":
        return HTMLResponse(certificates.render_html(document))
    return document
