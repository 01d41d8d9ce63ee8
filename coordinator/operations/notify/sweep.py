"""What to notify: derived from the database's state, each notification under a key.

A sweep reads the erasure requests and the overdue acks, and inserts one outbox row per
interested webhook and notification key, `ON CONFLICT DO NOTHING`: a notification already
queued is never queued twice, whoever sweeps and however often. The keys:

- `request_completed:<id>`, `request_on_hold:<id>`, `request_overdue:<id>`: once per request;
- `service_overdue:<service>:<UTC day>`: once per service and day while the service has acks
  open on overdue events, not once per event;
- `verification_found_data:<event id>`: once per event a verification found `resurrected`
  (a service still held data after acknowledging its deletion; SPEC §12, §15);
- `signature_failures:<UTC hour>`: at most once an hour, when the tracker rejected at least
  `signature_failures.threshold` acks for a bad signature within the window.

Requests are looked at within `lookback` of the moment that matters (completion, due date),
so a first sweep does not announce years of history; a coordinator down for longer than
`lookback` does not announce what happened meanwhile either (docs/operations.md).
Payloads name requests, services, counts and times, never the subject's identifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.operations.notify.webhooks import Kind, Webhook
from coordinator.store.tables import (
    ack_ledger,
    erasure_requests,
    event_status,
    expected_acks,
    notifications,
)
from coordinator.tracking.deadlines import ack_deadline, ack_late
from coordinator.tracking.ledger import RejectReason

__all__ = ["SignatureAlarm", "sweep"]

RESURRECTED = "resurrected"
"""The event state a verification that found data sets (SPEC §15). The query is plain text
comparison, so it finds nothing until the verification code writes that state."""
STILL_PRESENT = "still_present"


@dataclass(frozen=True, slots=True)
class SignatureAlarm:
    threshold: int
    window: timedelta


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
    conn: AsyncConnection, *, now: datetime, lookback: timedelta, alarm: SignatureAlarm
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
    found += await _resurrected(conn, since=now - lookback)
    found += await _signature_failures(conn, now=now, alarm=alarm)
    return found


async def _resurrected(
    conn: AsyncConnection, *, since: datetime
) -> list[tuple[Kind, str, dict[str, Any]]]:
    s, e = event_status.c, expected_acks.c
    holding = (
        select(func.array_agg(e.service.distinct()))
        .where(e.event_id == s.event_id, e.status == STILL_PRESENT)
        .scalar_subquery()
    )
    rows = await conn.execute(
        select(s.event_id, s.entity_type, s.policy, s.updated_at, holding.label("services"))
        # PostgreSQL proves `state = 'resurrected'` implies the open-events partial index's
        # `state <> 'completed'`, so this reads open events only (EXPLAIN over 200k events:
        # a bitmap scan of ix_retention_event_status_open).
        .where(s.state == RESURRECTED, s.updated_at >= since)
        .order_by(s.event_id)
    )
    kind = Kind.VERIFICATION_FOUND_DATA
    return [
        (
            kind,
            f"{kind.value}:{row.event_id}",
            {
                "event_id": str(row.event_id),
                "entity_type": row.entity_type,
                "policy": row.policy,
                "services": sorted(row.services or []),
                "found_at": _ts(row.updated_at),
            },
        )
        for row in rows
    ]


async def _signature_failures(
    conn: AsyncConnection, *, now: datetime, alarm: SignatureAlarm
) -> list[tuple[Kind, str, dict[str, Any]]]:
    a = ack_ledger.c
    since = now - alarm.window
    rows = (
        await conn.execute(
            select(a.service, func.count())
            .where(
                ~a.accepted,
                a.reject_reason == RejectReason.BAD_SIGNATURE.value,
                a.received_at >= since,
            )
            .group_by(a.service)
            .order_by(func.count().desc(), a.service)
        )
    ).all()
    total = sum(n for _, n in rows)
    if total < alarm.threshold:
        return []
    kind = Kind.SIGNATURE_FAILURES
    hour = now.astimezone(UTC).strftime("%Y-%m-%dT%H")
    return [
        (
            kind,
            f"{kind.value}:{hour}",
            {
                "rejected_acks": total,
                "threshold": alarm.threshold,
                "since": _ts(since),
                # Claimed by the records, not proven: a forger names whom it likes.
                "claimed_services": {str(service): n for service, n in rows[:10]},
            },
        )
    ]


async def sweep(
    conn: AsyncConnection,
    webhooks: Sequence[Webhook],
    *,
    now: datetime,
    lookback: timedelta,
    alarm: SignatureAlarm = SignatureAlarm(10, timedelta(hours=1)),
) -> int:
    """Queue what is new for each interested webhook; returns how many rows were queued."""
    if not webhooks:
        return 0
    found = await _found(conn, now=now, lookback=lookback, alarm=alarm)
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
