"""Read-only answers about verification, shared by the CLI, the API, reports and the console."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.evidence.pseudonyms import Pepper
from coordinator.outbox.lookup import EVENTS, joined_on
from coordinator.store.tables import verifications, verify_answers

__all__ = ["answers_by_service", "entity_verifications"]


def _ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def entity_verifications(
    conn: AsyncConnection, entity_type: str, entity_id: str, *, pepper: Pepper | None = None
) -> list[dict[str, Any]]:
    """Every verify event of one entity, oldest first, with each asked service's answer.
    `unsupported` (no verify handler) is listed as such: it never counts as verified.
    With `pepper`, verifications whose stored id is already an HMAC (past the outbox
    retention, SPEC §13) are found too."""
    v, a = verifications.c, verify_answers.c
    named = and_(v.entity_id == entity_id, v.pseudonymised_at.is_(None))
    if pepper is not None:
        # Each form only where it is meant: a clear id equal to another entity's HMAC
        # string is not that entity. Both arms read the (entity_type, entity_id) index.
        named = or_(
            named,
            and_(
                v.entity_id == pepper.pseudonym(entity_type, entity_id),
                v.pseudonymised_at.is_not(None),
            ),
        )
    asked = list(
        await conn.execute(
            select(v.event_id, v.policy, v.trigger, v.requested_by, v.requested_at)
            # Kept in the record when `db prune` removes the outbox batch.
            .add_columns(func.coalesce(v.published_at, EVENTS.c.published_at).label("published_at"))
            .outerjoin_from(verifications, EVENTS, joined_on(v.event_id))
            .where(v.entity_type == entity_type, named)
            .order_by(v.requested_at, v.event_id)
        )
    )
    if not asked:
        return []
    answers: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in await conn.execute(
        select(verify_answers)
        .where(a.event_id.in_([r.event_id for r in asked]))
        .order_by(a.event_id, a.service)
    ):
        answers[row.event_id].append(
            {
                "service": row.service,
                "status": row.status,
                "records_affected": row.records_affected,
                "acknowledged_at": _ts(row.acknowledged_at),
                "detail": row.detail or "",
            }
        )
    return [
        {
            "event_id": str(r.event_id),
            "entity_type": entity_type,
            "entity_id": entity_id,
            "policy": r.policy,
            "trigger": r.trigger,
            "requested_by": r.requested_by,
            "requested_at": _ts(r.requested_at),
            "published_at": _ts(r.published_at),
            "outcome": _outcome(answers[r.event_id]),
            "services": answers[r.event_id],
        }
        for r in asked
    ]


def _outcome(answers: list[dict[str, Any]]) -> str:
    """One word for a verify event: `still_present` if any service holds data, `verified`
    only when every asked service said 0, else `incomplete` (pending, unsupported, failed)."""
    statuses = {a["status"] for a in answers}
    if "still_present" in statuses:
        return "still_present"
    if statuses == {"verified"}:
        return "verified"
    return "incomplete"


async def answers_by_service(conn: AsyncConnection, *, since: datetime) -> list[dict[str, Any]]:
    """Per service, its answers to verify events asked since `since`, by status."""
    v, a = verifications.c, verify_answers.c
    statuses = ("verified", "still_present", "unsupported", "failed", "pending")
    rows = await conn.execute(
        select(a.service, *(func.count().filter(a.status == s) for s in statuses))
        .join_from(verify_answers, verifications, v.event_id == a.event_id)
        .where(v.requested_at >= since)
        .group_by(a.service)
        .order_by(a.service)
    )
    return [{"service": row[0], **dict(zip(statuses, row[1:], strict=True))} for row in rows]
