"""Posting queued notifications to their webhooks, at least once, with backoff.

Due rows are locked (`FOR UPDATE SKIP LOCKED`) while they are posted, so two replicas never
post the same row at once. A 2xx answer marks the row `delivered`; anything else (another
status, a timeout, a refused connection) counts an attempt, records what went wrong (the
status code or the exception's class, never a response body) and schedules the next try
`backoff_initial * 2^(attempts-1)` later, at most `backoff_max`. A row is never given up:
it stays `pending` until delivered, and its attempts and last error are visible in
`GET /v1/notifications` and `retention notifications list`. Rows of a webhook no longer
in the file become `dropped`.

Each delivery is `POST <url>` with the JSON body `{id, kind, key, created_at, data}` and
headers `X-Retention-Delivery` (the row id: receivers drop duplicates by it),
`X-Retention-Event` (the kind), `X-Retention-Timestamp` (Unix seconds) and
`X-Retention-Signature` (coordinator/operations/notify/webhooks.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.operations.notify.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, Webhook, sign
from coordinator.store.tables import notifications

__all__ = ["Backoff", "Outcome", "deliver_due", "list_notifications", "oldest_pending"]


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: timedelta
    maximum: timedelta

    def after(self, attempts: int) -> timedelta:
        delay: timedelta = self.initial * (2 ** max(attempts - 1, 0))
        return min(delay, self.maximum)


def _ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _body(row: Any) -> bytes:
    document = {
        "id": row.id,
        "kind": row.kind,
        "key": row.key,
        "created_at": _ts(row.created_at),
        "data": row.payload,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


async def _post(client: httpx.AsyncClient, hook: Webhook, row: Any, now: datetime) -> str | None:
    """None when the receiver took it; otherwise what went wrong, safe to store and show."""
    body = _body(row)
    timestamp = str(int(now.timestamp()))
    headers = {
        "Content-Type": "application/json",
        "X-Retention-Delivery": str(row.id),
        "X-Retention-Event": row.kind,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(hook.secret.get_secret_value(), timestamp, body),
    }
    try:
        response = await client.post(str(hook.url), content=body, headers=headers)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"


@dataclass(frozen=True, slots=True)
class Outcome:
    webhook: str
    delivered: bool


async def deliver_due(
    conn: AsyncConnection,
    client: httpx.AsyncClient,
    webhooks: Sequence[Webhook],
    *,
    now: datetime,
    limit: int,
    backoff: Backoff,
) -> list[Outcome]:
    """Post up to `limit` due rows; returns each attempt's webhook and outcome."""
    n = notifications.c
    rows = (
        await conn.execute(
            select(notifications)
            .where(n.status == "pending", n.next_attempt_at <= now)
            .order_by(n.next_attempt_at, n.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if not rows:
        return []
    hooks = {hook.name: hook for hook in webhooks}
    dropped = [row.id for row in rows if row.webhook not in hooks]
    if dropped:
        await conn.execute(
            update(notifications)
            .where(n.id.in_(dropped))
            .values(status="dropped", last_error="webhook no longer configured")
        )
    sending = [row for row in rows if row.webhook in hooks]
    errors = await asyncio.gather(*(_post(client, hooks[r.webhook], r, now) for r in sending))
    outcomes = [
        {
            "b_id": row.id,
            "b_status": "delivered" if error is None else "pending",
            "b_attempts": row.attempts + 1,
            # A delivered row keeps the error its earlier attempts met, for the record.
            "b_error": row.last_error if error is None else error,
            "b_next": now if error is None else now + backoff.after(row.attempts + 1),
            "b_delivered": now if error is None else None,
        }
        for row, error in zip(sending, errors, strict=True)
    ]
    if outcomes:
        await conn.execute(
            update(notifications)
            .where(n.id == bindparam("b_id"))
            .values(
                status=bindparam("b_status"),
                attempts=bindparam("b_attempts"),
                last_error=bindparam("b_error"),
                next_attempt_at=bindparam("b_next"),
                last_attempt_at=now,
                delivered_at=bindparam("b_delivered"),
            ),
            outcomes,
        )
    return [Outcome(row.webhook, error is None) for row, error in zip(sending, errors, strict=True)]


async def oldest_pending(conn: AsyncConnection) -> dict[str, datetime]:
    """Per webhook, when its oldest still-pending notification was queued."""
    n = notifications.c
    rows = await conn.execute(
        select(n.webhook, func.min(n.created_at)).where(n.status == "pending").group_by(n.webhook)
    )
    return {webhook: created for webhook, created in rows}


async def list_notifications(
    conn: AsyncConnection, *, status: str | None, limit: int
) -> list[dict[str, Any]]:
    """Newest first: each delivery's state, without its payload."""
    n = notifications.c
    query = select(
        n.id,
        n.webhook,
        n.kind,
        n.key,
        n.status,
        n.attempts,
        n.created_at,
        n.last_attempt_at,
        n.next_attempt_at,
        n.last_error,
        n.delivered_at,
    ).order_by(n.id.desc())
    if status is not None:
        query = query.where(n.status == status)
    rows = await conn.execute(query.limit(limit))
    return [
        {
            "id": row.id,
            "webhook": row.webhook,
            "kind": row.kind,
            "key": row.key,
            "status": row.status,
            "attempts": row.attempts,
            "created_at": _ts(row.created_at),
            "last_attempt_at": _ts(row.last_attempt_at),
            "next_attempt_at": _ts(row.next_attempt_at) if row.status == "pending" else None,
            "last_error": row.last_error,
            "delivered_at": _ts(row.delivered_at),
        }
        for row in rows
    ]
