"""Holds: list, detail, create (entities pasted or uploaded, one per line) and release."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, UploadFile, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from coordinator.api._context import Connection, Context
from coordinator.console._render import Page, ReadPage, WritePage
from coordinator.purge import holds

__all__ = ["router"]

router = APIRouter(prefix="/ui/holds")

HoldId = Annotated[str, Path(min_length=1, max_length=200)]
MAX_ENTITIES = 10_000
"""As many as `POST /v1/holds` takes in one hold."""


async def _list(page: Page, ctx: Context, conn: Connection, *, show_all: bool) -> list[holds.Hold]:
    return await holds.list_holds(conn, now=ctx.clock.now(), include_inactive=show_all)


@router.get("", response_class=HTMLResponse)
async def list_holds(
    page: ReadPage,
    ctx: Context,
    conn: Connection,
    show_all: Annotated[bool, Query(alias="all")] = False,
) -> Response:
    return _list_page(page, ctx, await _list(page, ctx, conn, show_all=show_all), show_all)


def _list_page(
    page: Page,
    ctx: Context,
    found: list[holds.Hold],
    show_all: bool,
    *,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    now = ctx.clock.now()
    return page.render(
        "_holds_table.html" if page.partial else "holds.html",
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT if error else status.HTTP_200_OK,
        title="Legal holds",
        nav="holds",
        holds=[h.as_dict(now) for h in found],
        show_all=show_all,
        error=error,
        form=form or {},
        max_entities=MAX_ENTITIES,
    )


def _expiry(text: str) -> datetime | None:
    """The form's `datetime-local` value, which the page labels as UTC."""
    if not text.strip():
        return None
    try:
        return datetime.fromisoformat(text.strip()).replace(tzinfo=UTC)
    except ValueError:
        raise holds.HoldError(f"expiry {text[:40]!r} is not a date and time") from None


@router.post("", response_class=HTMLResponse)
async def create_hold(
    page: WritePage,
    ctx: Context,
    reason: Annotated[str, Form(max_length=2000)],
    entities: Annotated[str, Form(max_length=1_000_000)] = "",
    entities_file: Annotated[UploadFile | None, File()] = None,
    hold_id: Annotated[str, Form(max_length=200)] = "",
    expires_at: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    lines = entities.splitlines()
    try:
        if entities_file is not None and entities_file.filename:
            try:
                lines += (await entities_file.read()).decode("utf-8").splitlines()
            except UnicodeDecodeError:
                raise holds.HoldError("the uploaded file is not UTF-8 text") from None
        wanted = [line.strip() for line in lines if line.strip()]
        if len(wanted) > MAX_ENTITIES:
            raise holds.HoldError(f"at most {MAX_ENTITIES} entities in one hold")
        async with ctx.engine.begin() as conn:
            hold = await holds.create_hold(
                conn,
                entities=wanted,
                types=await holds.entity_types(conn, ctx.policy_set),
                reason=reason,
                created_by=page.principal.name,
                now=ctx.clock.now(),
                expires_at=_expiry(expires_at),
                hold_id=hold_id.strip() or None,
            )
    except holds.HoldError as exc:
        async with ctx.engine.connect() as conn:
            found = await _list(page, ctx, conn, show_all=False)
        form = {
            "reason": reason,
            "entities": entities,
            "hold_id": hold_id,
            "expires_at": expires_at,
        }
        return _list_page(page, ctx, found, False, error=str(exc), form=form)
    return RedirectResponse(f"/ui/holds/{quote(hold.id, safe='')}", status.HTTP_303_SEE_OTHER)


@router.get("/{hold_id}", response_class=HTMLResponse)
async def hold_detail(page: ReadPage, ctx: Context, conn: Connection, hold_id: HoldId) -> Response:
    try:
        hold = await holds.get_hold(conn, hold_id)
    except holds.HoldNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    return page.render(
        "hold.html",
        title=f"Hold {hold_id}",
        nav="holds",
        hold=hold.as_dict(ctx.clock.now()),
        audit=await holds.hold_audit(conn, hold_id),
    )


@router.post("/{hold_id}/release")
async def release_hold(page: WritePage, ctx: Context, hold_id: HoldId) -> Response:
    try:
        async with ctx.engine.begin() as conn:
            await holds.release_hold(conn, hold_id, by=page.principal.name, now=ctx.clock.now())
    except holds.HoldNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except holds.HoldError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return RedirectResponse(f"/ui/holds/{quote(hold_id, safe='')}", status.HTTP_303_SEE_OTHER)
