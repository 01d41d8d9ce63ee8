"""Where erasures stand: per entity and per event, with each service's answer."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status

from coordinator.api._context import Connection, Context
from coordinator.api.models import EventView
from coordinator.tracking import queries

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["completion"])

_NAME = r"^[A-Za-z0-9_.-]+$"


@router.get(
    "/entities/{entity_type}/{entity_id}",
    response_model=list[EventView],
    responses={404: {"description": "no retention event for this entity"}},
)
async def entity(
    ctx: Context,
    conn: Connection,
    entity_type: Annotated[str, Path(pattern=_NAME, max_length=100)],
    entity_id: Annotated[str, Path(min_length=1, max_length=500)],
) -> list[EventView]:
    """Every retention event of one entity, oldest first, with each service's completion."""
    events = await queries.entity_status(conn, entity_type, entity_id, now=ctx.clock.now())
    if not events:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no retention event for {entity_type}:{entity_id}"
        )
    return [EventView.model_validate(e) for e in events]


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
