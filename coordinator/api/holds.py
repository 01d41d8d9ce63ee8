"""Legal holds: list and read with a `read` token, create and release with `write`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status

from coordinator.api._context import Connection, Context
from coordinator.api.auth import Writer
from coordinator.api.models import HoldCreate, HoldView
from coordinator.purge import holds

__all__ = ["router"]

router = APIRouter(prefix="/v1/holds", tags=["legal holds"])

HoldId = Annotated[str, Path(min_length=1, max_length=200)]


def _view(hold: holds.Hold, ctx: Context) -> HoldView:
    return HoldView.model_validate(hold.as_dict(ctx.clock.now()))


def _error(exc: holds.HoldError) -> HTTPException:
    if isinstance(exc, holds.HoldNotFound):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))
    if isinstance(exc, holds.HoldConflict):
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


@router.get("", response_model=list[HoldView])
async def list_holds(
    ctx: Context,
    conn: Connection,
    include_inactive: Annotated[
        bool, Query(description="Also released and expired holds.")
    ] = False,
) -> list[HoldView]:
    """Holds, oldest first (active only unless `include_inactive`)."""
    found = await holds.list_holds(conn, now=ctx.clock.now(), include_inactive=include_inactive)
    return [_view(h, ctx) for h in found]


@router.get("/{hold_id}", response_model=HoldView, responses={404: {"description": "no hold"}})
async def get_hold(ctx: Context, conn: Connection, hold_id: HoldId) -> HoldView:
    """One hold with the entities it covers."""
    try:
        return _view(await holds.get_hold(conn, hold_id), ctx)
    except holds.HoldError as exc:
        raise _error(exc) from None


@router.post(
    "",
    response_model=HoldView,
    status_code=status.HTTP_201_CREATED,
    responses={
        409: {"description": "a hold with this id exists"},
        422: {"description": "an unknown entity type or an id its column cannot hold"},
    },
)
async def create_hold(ctx: Context, actor: Writer, body: HoldCreate) -> HoldView:
    """Put entities under a legal hold: no policy touches them until it is released.

    Each entity's type must be one the policies purge, and its id a value that type's id
    column can hold; ids are stored in the column's text form (`order:042` holds order
    42). The hold's `created_by` is the token's name; a `created_by` in the body is ignored.
    """
    try:
        async with ctx.engine.begin() as conn:
            hold = await holds.create_hold(
                conn,
                entities=body.entities,
                types=await holds.entity_types(conn, ctx.policy_set),
                reason=body.reason,
                created_by=actor.name,
                now=ctx.clock.now(),
                expires_at=body.expires_at,
                hold_id=body.id,
            )
    except holds.HoldError as exc:
        raise _error(exc) from None
    return _view(hold, ctx)


@router.delete(
    "/{hold_id}",
    response_model=HoldView,
    responses={
        404: {"description": "no hold"},
        409: {"description": "already released"},
    },
)
async def release_hold(
    ctx: Context,
    actor: Writer,
    hold_id: HoldId,
    by: Annotated[
        str | None,
        Query(
            max_length=200,
            deprecated=True,
            description="Ignored: the releaser recorded is the token's name.",
        ),
    ] = None,
) -> HoldView:
    """Release a hold; its entities become purgeable at the next run.

    `released_by` is the token's name; a `by` parameter is ignored.
    """
    try:
        async with ctx.engine.begin() as conn:
            hold = await holds.release_hold(conn, hold_id, by=actor.name, now=ctx.clock.now())
    except holds.HoldError as exc:
        raise _error(exc) from None
    return _view(hold, ctx)
