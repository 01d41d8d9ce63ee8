"""The overdue list: each overdue event with each service it still waits for.

One row per (event, service) whose ack is still open (`pending` or `failed`) past its own
deadline (`deadlines.ack_deadline`: the service's declared `completion_deadline`, else the
event's) on an event in state `overdue`, ordered by (that deadline, event id, service).
Pages are cut by keyset, not offset: a cursor names the last row returned, so a page costs
the same however deep it is, and rows completing between two pages never make the next one
skip or repeat a row.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator import CoordinatorError
from coordinator.store.tables import event_status, expected_acks
from coordinator.tracking.deadlines import ack_deadline, ack_late

__all__ = ["BadCursor", "Cursor", "OverduePage", "overdue_page"]


class BadCursor(CoordinatorError, ValueError):
    """A cursor this module did not make (or one from a changed format)."""


@dataclass(frozen=True, slots=True)
class Cursor:
    deadline: datetime
    event_id: uuid.UUID
    service: str

    def encode(self) -> str:
        raw = json.dumps([self.deadline.isoformat(), str(self.event_id), self.service])
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            deadline, event_id, service = json.loads(raw)
            when = datetime.fromisoformat(deadline)
            if when.tzinfo is None or not isinstance(service, str):
                raise BadCursor("not a cursor of this list")
            return cls(when, uuid.UUID(event_id), service)
        except (binascii.Error, UnicodeDecodeError, TypeError, ValueError) as exc:
            raise BadCursor("not a cursor of this list") from exc


@dataclass(frozen=True, slots=True)
class OverduePage:
    items: list[dict[str, Any]]
    next: Cursor | None


def _ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def overdue_page(
    conn: AsyncConnection,
    *,
    service: str | None,
    after: Cursor | None,
    limit: int,
    now: datetime,
) -> OverduePage:
    """Up to `limit` overdue (event, service) rows after `after`; `next` is None at the end."""
    s, e = event_status.c, expected_acks.c
    due = ack_deadline()
    query = (
        select(
            s.event_id,
            s.entity_type,
            s.entity_id,
            s.policy,
            e.service,
            e.status,
            due.label("deadline"),
            s.overdue_at,
            e.acknowledged_at,
            e.attempt,
            s.reminders_sent,
        )
        .join_from(event_status, expected_acks, e.event_id == s.event_id)
        .where(s.state == "overdue", ack_late(now))
        .order_by(due, s.event_id, e.service)
        .limit(limit + 1)
    )
    if service is not None:
        query = query.where(e.service == service)
    if after is not None:
        query = query.where(
            tuple_(due, s.event_id, e.service)
            > tuple_(after.deadline, after.event_id, after.service)
        )
    rows = (await conn.execute(query)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "event_id": str(row.event_id),
            "entity_type": row.entity_type,
            "entity_id": row.entity_id,
            "policy": row.policy,
            "service": row.service,
            "status": row.status,
            "deadline": _ts(row.deadline),
            "overdue_at": _ts(row.overdue_at),
            "last_ack_at": _ts(row.acknowledged_at),
            "attempt": row.attempt,
            "reminders_sent": row.reminders_sent,
        }
        for row in rows
    ]
    last = rows[-1] if more else None
    return OverduePage(
        items, Cursor(last.deadline, last.event_id, last.service) if last is not None else None
    )
