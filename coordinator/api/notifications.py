"""Webhook deliveries and where each stands (coordinator/operations/notify/)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from coordinator.api._context import Connection
from coordinator.api.models import NotificationView
from coordinator.operations.notify.delivery import list_notifications

__all__ = ["router"]

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])


@router.get("", response_model=list[NotificationView])
async def notifications(
    conn: Connection,
    status: Annotated[Literal["pending", "delivered", "dropped"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most rows, newest first.")] = 50,
) -> list[NotificationView]:
    """Each delivery's state: attempts, last error (a status code or an error class), next try."""
    rows = await list_notifications(conn, status=status, limit=limit)
    return [NotificationView.model_validate(row) for row in rows]
