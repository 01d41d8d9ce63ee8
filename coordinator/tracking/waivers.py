"""The only ways an expectation ends without an ack: `acks waive` and `services retire`.

Both turn open (`pending` or `failed`) acknowledgements into `waived`, a final state
(SPEC §15), record who did it and why, and append one audit entry. An event whose every
expected service is then settled (done or waived) completes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.evidence import audit
from coordinator.store.tables import expected_acks
from coordinator.tracking import ledger

__all__ = ["Waived", "retire_service", "waive_ack"]

_OPEN = ("pending", "failed")


@dataclass(frozen=True, slots=True)
class Waived:
    events: list[uuid.UUID]
    """Events whose acknowledgement from the service was waived now."""
    completed: list[uuid.UUID]
    """Of those, the ones that completed because of it."""


async def waive_ack(
    conn: AsyncConnection,
    *,
    event_id: uuid.UUID,
    service: str,
    reason: str,
    actor: str,
    now: datetime,
) -> Waived:
    """Waive one service's open acknowledgement of one event (none open: nothing waived)."""
    return await _waive(
        conn,
        and_(expected_acks.c.event_id == event_id, expected_acks.c.service == service),
        action=audit.AuditAction.ACK_WAIVED,
        data={"event_id": event_id, "service": service, "reason": reason},
        reason=reason,
        actor=actor,
        now=now,
    )


async def retire_service(
    conn: AsyncConnection, *, service: str, reason: str, actor: str, now: datetime
) -> Waived:
    """Waive every open acknowledgement of `service`, of every event."""
    return await _waive(
        conn,
        expected_acks.c.service == service,
        action=audit.AuditAction.SERVICE_RETIRED,
        data={"service": service, "reason": reason},
        reason=reason,
        actor=actor,
        now=now,
    )


async def _waive(
    conn: AsyncConnection,
    which: Any,
    *,
    action: audit.AuditAction,
    data: dict[str, Any],
    reason: str,
    actor: str,
    now: datetime,
) -> Waived:
    e = expected_acks.c
    # Lock the events first, in the ledger's order, so a concurrent ack batch waits for us.
    candidates = sorted(
        (await conn.execute(select(e.event_id).where(which, e.status.in_(_OPEN)))).scalars()
    )
    if not candidates:
        return Waived([], [])
    events = await ledger.lock_events(conn, candidates)
    waived = sorted(
        (
            await conn.execute(
                update(expected_acks)
                .where(which, e.status.in_(_OPEN), e.event_id.in_(candidates))
                .values(status=ledger.WAIVED, detail=reason, waived_by=actor, acknowledged_at=now)
                .returning(e.event_id)
            )
        ).scalars()
    )
    expected = await ledger.expected_rows(conn, waived)
    transitions = ledger.compute_transitions(events, expected, set(waived))
    completed = [t.event_id for t in transitions if t.state == "completed"]
    entries = [audit.AuditEntry(action, actor, {**data, "events": waived})]
    if completed:
        entries.append(
            audit.AuditEntry(audit.AuditAction.EVENTS_COMPLETED, actor, {"events": completed})
        )
    refs = await audit.append_refs(conn, entries, at=now)
    await ledger.write_transitions(
        conn, transitions, completed_seq=refs[-1].seq if completed else None, now=now
    )
    return Waived(waived, completed)
