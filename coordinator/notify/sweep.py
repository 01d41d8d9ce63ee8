"""What to notify: derived from the database's state, each notification under a key.

A sweep reads the erasure requests and the overdue acks, and inserts one outbox row per
interested webhook and notification key, `ON CONFLICT DO NOTHING`: a notification already
queued is never queued twice, whoever sweeps and however often. The keys:

- `request_completed:<id>`, `request_on_hold:<id>`, `request_overdue:<id>`: once per request;
- `service_overdue:<service>:<UTC day>`: once per service and day while the service has acks
  open on overdue events, not once per event.

Requests are looked at within `lookback` of the moment that matters (completion, due date),
so a first sweep does not announce years of history; a coordinator down for longer than
`lookback` does not announce what happened meanwhile either (docs/operations.md).
Payloads name requests, services, counts and times, never the subject's identifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.notify.webhooks import Kind, Webhook
from coordinator.store.tables import erasure_requests, event_status, expected_acks, notifications
from coordinator.tracking.deadlines import ack_deadline, ack_late

__all__ = ["sweep"]

_UNFINISHED = ("received", "in_progress", "on_hold")
_OPEN = ("pending", "failed")


def _ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _request(row: Any) -> dict[str, Any]:
    return {
        "request_id": str(row.id),
        "regulation": row.regulation,
        "status": row.status,
        "received_at": _ts(row.received_at),
        "due_at": _ts(row.due_at),
        "completed_at": _ts(row.completed_at),
        "holds": list(row.holds),
    }


async def _found(
    conn: AsyncConnection, *, now: datetime, lookback: timedelta
) -> list[tuple[Kind, str, dict[str, Any]]]:
    r = erasure_requests.c
    since = now - lookback
    found: list[tuple[Kind, str, dict[str, Any]]] = []
    columns = (r.id, r.regulation, r.status, r.received_at, r.due_at, r.completed_at, r.holds)
    for kind, where in (
        (Kind.REQUEST_COMPLETED, (r.status == "completed") & (r.completed_at >= since)),
        (Kind.REQUEST_ON_HOLD, r.status == "on_hold"),
        (
            Kind.REQUEST_OVERDUE,
            r.status.in_(_UNFINISHED) & (r.due_at <= now) & (r.due_at >= since),
        ),
    ):
        for row in await conn.execute(select(*columns).where(where).order_by(r.id)):
            found.append((kind, f"{kind.value}:{row.id}", _request(row)))
    s, e = event_status.c, expected_acks.c
    day = now.astimezone(UTC).date().isoformat()
    rows = await conn.execute(
        select(e.service, func.count(), func.min(ack_deadline()))
        .join_from(expected_acks, event_status, s.event_id == e.event_id)
        .where(s.state == "overdue", ack_late(now))
        .group_by(e.service)
        .order_by(e.service)
    )
    for service, count, oldest in rows:
        found.append(
            (
                Kind.SERVICE_OVERDUE,
                f"{Kind.SERVICE_OVERDUE.value}:{service}:{day}",
                {
                    "service": service,
                    "day": day,
                    "overdue_events": count,
                    "oldest_deadline": _ts(oldest),
                },
            )
        )
    return found


async def sweep(
    conn: AsyncConnection, webhooks: Sequence[Webhook], *, now: datetime, lookback: timedelta
) -> int:
    """Queue what is new for each interested webhook; returns how many rows were queued."""
    if not webhooks:
        return 0
    found = await _found(conn, now=now, lookback=lookback)
    rows = [
        {
            "webhook": hook.name,
            "kind": kind.value,
            "key": key,
            "payload": {"kind": kind.value, **payload},
            "created_at": now,
            "next_attempt_at": now,
        }
        for kind, key, payload in found
        for hook in webhooks
        if kind in hook.events
    ]
    if not rows:
        return 0
    result = await conn.execute(
        insert(notifications)
        .on_conflict_do_nothing(index_elements=["webhook", "key"])
        .returning(notifications.c.id),
        rows,
    )
    return len(result.all())
