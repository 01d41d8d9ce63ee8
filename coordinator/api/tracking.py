"""Where erasures stand: per entity and per event, with each service's answer."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status

from coordinator.api._context import Connection, Context
from coordinator.api.auth import Writer
from coordinator.api.models import (
    EventView,
    OverduePageView,
    OverdueView,
    ServiceCompletionView,
    ServiceEventView,
    VerificationView,
)
from coordinator.copies.verification import queries as verification_queries
from coordinator.copies.verification import request
from coordinator.purge.holds import HoldError
from coordinator.tracking import queries
from coordinator.tracking.entity import entity_events
from coordinator.tracking.overdue import BadCursor, Cursor, overdue_page

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["completion"])

_NAME = r"^[A-Za-z0-9_.-]+$"


@router.get(
    "/entities/{entity_type}/{entity_id}",
    response_model=list[EventView],
    responses={
        404: {"description": "no retention event for this entity"},
        422: {"description": "an id no table of this (known) entity type can hold"},
    },
)
async def entity(
    ctx: Context,
    conn: Connection,
    entity_type: Annotated[str, Path(pattern=_NAME, max_length=100)],
    entity_id: Annotated[str, Path(min_length=1, max_length=500)],
) -> list[EventView]:
    """Every retention event of one entity, oldest first, with each service's completion.

    The id is normalised as a hold's is (`order/042` finds `order:42`, an upper-case UUID
    its canonical form); an entity type no policy has is looked up as written.
    """
    try:
        events = await entity_events(
            conn, ctx.policy_set, entity_type, entity_id, now=ctx.clock.now(), pepper=ctx.pepper
        )
    except HoldError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if not events:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no retention event for {entity_type}:{entity_id}"
        )
    return [EventView.model_validate(e) for e in events]


@router.get(
    "/entities/{entity_type}/{entity_id}/verifications", response_model=list[VerificationView]
)
async def entity_verifications(
    ctx: Context,
    conn: Connection,
    entity_type: Annotated[str, Path(pattern=_NAME, max_length=100)],
    entity_id: Annotated[str, Path(min_length=1, max_length=500)],
) -> list[VerificationView]:
    """Every verify event of one entity, oldest first, with each asked service's answer."""
    found = await verification_queries.entity_verifications(
        conn, entity_type, entity_id, pepper=ctx.pepper
    )
    return [VerificationView.model_validate(v) for v in found]


@router.post(
    "/entities/{entity_type}/{entity_id}/verify",
    response_model=VerificationView,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "no service acked a deletion of this entity"}},
)
async def verify_entity(
    ctx: Context,
    actor: Writer,
    entity_type: Annotated[str, Path(pattern=_NAME, max_length=100)],
    entity_id: Annotated[str, Path(min_length=1, max_length=500)],
) -> VerificationView:
    """Ask every service that acked one of the entity's deletions how many records it
    still holds (a `verify` event, signed and sent by the relay). Needs a `write` token;
    the requester recorded is the token's name."""
    async with ctx.engine.begin() as conn:
        asked = await request.request_verify(
            conn,
            entity_type,
            entity_id,
            policy=request.ON_DEMAND,
            trigger="on_demand",
            by=actor.name,
            now=ctx.clock.now(),
        )
        if asked is None:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"no service acked a deletion of {entity_type}:{entity_id}: nothing to verify",
            )
        found = await verification_queries.entity_verifications(conn, entity_type, entity_id)
    [view] = [v for v in found if v["event_id"] == str(asked.event_id)]
    return VerificationView.model_validate(view)


@router.get(
    "/events/{event_id}",
    response_model=EventView,
    responses={404: {"description": "unknown event id"}},
)
async def event(ctx: Context, conn: Connection, event_id: uuid.UUID) -> EventView:
    """One event, by its `event_id`."""
    found = await queries.event_status_of(conn, event_id, now=ctx.clock.now())
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no event {event_id}")
    return EventView.model_validate(found)


@router.get("/completion/services", response_model=list[ServiceCompletionView])
async def services_completion(ctx: Context, conn: Connection) -> list[ServiceCompletionView]:
    """Every registered or expected service, with its pending, overdue, failed and completed
    acknowledgements (an open one past its own deadline counts as overdue: the service's
    declared `completion_deadline`, else the event's)."""
    found = await queries.services_completion(conn, now=ctx.clock.now())
    return [ServiceCompletionView.model_validate(s) for s in found]


@router.get("/completion/services/{service}/events", response_model=list[ServiceEventView])
async def service_events(
    ctx: Context,
    conn: Connection,
    service: Annotated[str, Path(pattern=_NAME, max_length=255)],
    state: Annotated[queries.ServiceState, Query(description="Which answers.")] = ("overdue"),
    limit: Annotated[int, Query(ge=1, le=1000, description="Most events returned.")] = 200,
) -> list[ServiceEventView]:
    """One service's expected acknowledgements in `state`: open ones earliest deadline
    first, completed ones most recently published first."""
    found = await queries.service_events(
        conn, service, state=state, now=ctx.clock.now(), limit=limit
    )
    return [ServiceEventView.model_validate(e) for e in found]


@router.get(
    "/services/{name}/overdue",
    response_model=OverduePageView,
    responses={422: {"description": "a cursor this list did not hand out"}},
)
async def service_overdue(
    ctx: Context,
    conn: Connection,
    name: Annotated[str, Path(pattern=_NAME, max_length=100)],
    limit: Annotated[int, Query(ge=1, le=1000, description="Most rows per page.")] = 100,
    after: Annotated[
        str | None, Query(max_length=2000, description="`next` of the previous page.")
    ] = None,
) -> OverduePageView:
    """The overdue events still waiting for this service, by deadline, one page at a time."""
    try:
        cursor = Cursor.decode(after) if after is not None else None
    except BadCursor:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "after: not a cursor of this list"
        ) from None
    page = await overdue_page(conn, service=name, after=cursor, limit=limit, now=ctx.clock.now())
    return OverduePageView(
        items=[OverdueView.model_validate(item) for item in page.items],
        next=page.next.encode() if page.next is not None else None,
    )
