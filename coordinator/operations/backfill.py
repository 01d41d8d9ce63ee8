"""Backfill a newly declared service: make it an expected acknowledger of past events.

Expected acknowledgers are fixed when an event is published (SPEC §9), so a service added
to the policy file later is not asked about older events, and its acks for them would be
rejected as `unexpected_service`. Backfill is the audited exception: for the tracked
events since a date whose `(entity_type, type)` the service's declaration covers, it adds
the service to their expected acknowledgers (`service_backfilled`, with the admin actor),
then re-sends those events (same ids, signed; audited `events_republished`), in batches.

An event that had completed is open again until the service acknowledges it: completion,
reports and certificates now include the service. Its deadline becomes at least now plus
the given window, so a backfill does not make years of events overdue at once. Only
events still in the coordinator's evidence (`coordinator.outbox.lookup`) can be reached.
Running it again adds nothing twice and re-sends what the service has not acknowledged.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.clock import Clock
from coordinator.evidence import audit
from coordinator.operations.republish import BATCH, SAMPLE, Outcome, Republisher
from coordinator.outbox.lookup import StoredEvent, events_by
from coordinator.policy.model import DeclaredService
from coordinator.store.tables import event_status, expected_acks

__all__ = ["Backfilled", "backfill"]

_OPEN = ("pending", "failed")


@dataclass(slots=True)
class Backfilled:
    """What a backfill did: whole counts, and the first `SAMPLE` ids of each kind. A
    backfill over years of events can touch millions, which neither the process nor its
    `--json` should hold; its audit entries name every one."""

    covered: int = 0
    """Events since the date, still in the evidence, that the declaration covers."""
    added: list[uuid.UUID] = field(default_factory=list)
    """Events the service became an expected acknowledger of now (the first)."""
    reopened: list[uuid.UUID] = field(default_factory=list)
    """Of those, events that had completed and are open again (the first)."""
    sent: list[uuid.UUID] = field(default_factory=list)
    held: list[uuid.UUID] = field(default_factory=list)
    added_total: int = 0
    reopened_total: int = 0
    sent_total: int = 0
    held_total: int = 0

    def add(
        self,
        added: Sequence[uuid.UUID],
        reopened: Sequence[uuid.UUID],
        sent: Sequence[uuid.UUID],
        held: Sequence[uuid.UUID],
    ) -> None:
        """Count one page's ids, keeping the first `SAMPLE` of each kind."""
        self.added_total += len(added)
        self.reopened_total += len(reopened)
        self.sent_total += len(sent)
        self.held_total += len(held)
        for kept, ids in (
            (self.added, added),
            (self.reopened, reopened),
            (self.sent, sent),
            (self.held, held),
        ):
            kept.extend(ids[: max(SAMPLE - len(kept), 0)])

    @property
    def truncated(self) -> bool:
        """`as_dict`'s held ids are fewer than `held_total` (the other kinds it counts)."""
        return self.held_total > len(self.held)

    def as_dict(self) -> dict[str, Any]:
        return {
            "covered": self.covered,
            "added": self.added_total,
            "reopened": self.reopened_total,
            "sent": self.sent_total,
            "held": [str(i) for i in self.held],
            "held_total": self.held_total,
            "truncated": self.truncated,
        }


async def _expect(
    conn: AsyncConnection,
    service: str,
    events: Sequence[uuid.UUID],
    *,
    now: datetime,
    window: timedelta,
    reminder_interval: timedelta,
) -> tuple[list[uuid.UUID], list[uuid.UUID], set[uuid.UUID]]:
    """Add `service` to the tracked ones among `events`: (added, reopened, to send)."""
    s, e = event_status.c, expected_acks.c
    # Lock in the ledger's order, so a concurrent ack batch waits for us (as waivers do).
    tracked = list(
        (
            await conn.execute(
                select(s.event_id, s.state)
                .where(s.event_id.in_(list(events)))
                .order_by(s.event_id)
                .with_for_update()
            )
        ).all()
    )
    if not tracked:
        return [], [], set()
    added = sorted(
        (
            await conn.execute(
                insert(expected_acks)
                .values([{"event_id": row.event_id, "service": service} for row in tracked])
                .on_conflict_do_nothing()
                .returning(e.event_id)
            )
        ).scalars()
    )
    reopened = sorted(row.event_id for row in tracked if row.state == "completed")
    reopened = [i for i in reopened if i in set(added)]
    if added:
        await conn.execute(
            update(event_status)
            .where(s.event_id.in_(added))
            .values(
                expected=s.expected + 1,
                state=case((s.state == "completed", "pending"), else_=s.state),
                completed_at=None,
                completed_audit_seq=None,
                completed_audit_link=None,
                deadline=func.greatest(s.deadline, now + window),
                next_reminder_at=func.coalesce(s.next_reminder_at, now + reminder_interval),
                updated_at=now,
            )
        )
    still_open = set(
        (
            await conn.execute(
                select(e.event_id).where(
                    e.service == service,
                    e.status.in_(_OPEN),
                    e.event_id.in_([row.event_id for row in tracked]),
                )
            )
        ).scalars()
    )
    return added, reopened, still_open


async def backfill(
    engine: AsyncEngine,
    republisher: Republisher,
    service: DeclaredService,
    *,
    since: datetime,
    entity_type: str | None,
    actor: str,
    clock: Clock,
    window: timedelta,
    reminder_interval: timedelta,
    progress: Callable[[Backfilled], None] | None = None,
) -> Backfilled:
    """Add `service` to the past events its declaration covers and send them to it."""
    pairs = service.pairs()
    types = sorted({t for t, _ in pairs if entity_type is None or t == entity_type})
    done = Backfilled()
    if not types:
        return done
    after: tuple[int, uuid.UUID] | None = None
    while True:
        now = clock.now()
        async with engine.connect() as conn:
            page = await events_by(
                conn, now=now, initiated_since=since, entity_types=types, after=after, limit=BATCH
            )
        if not page:
            return done
        after = page[-1].position
        covered = [s for s in page if (s.event.entity_type, s.event.type.value) in pairs]
        async with engine.begin() as conn:
            added, reopened, to_send = await _expect(
                conn,
                service.name,
                [s.event.event_id for s in covered],
                now=now,
                window=window,
                reminder_interval=reminder_interval,
            )
            if added:
                await audit.append(
                    conn,
                    [
                        audit.AuditEntry(
                            audit.AuditAction.SERVICE_BACKFILLED,
                            actor,
                            {
                                "service": service.name,
                                "since": since.isoformat(),
                                "entity_type": entity_type,
                                "events": [str(i) for i in added],
                                "reopened": [str(i) for i in reopened],
                            },
                        )
                    ],
                    at=now,
                )
        sending: list[StoredEvent] = [s for s in covered if s.event.event_id in to_send]
        outcome = Outcome(keep=None)
        await republisher.send(
            sending,
            outcome,
            actor=actor,
            reason="backfill",
            audit_data={"service": service.name, "backfill": True},
        )
        done.covered += len(covered)
        done.add(added, reopened, outcome.sent, outcome.held)
        if progress is not None:
            progress(done)
