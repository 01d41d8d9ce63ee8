"""Send existing events again: same `event_id`, same bytes, signed like the relay's.

An operator re-publishes after a service was fixed (its reminders may be slow by then),
for one event, one entity or one run, optionally only those one service is expected to
acknowledge. The events come from the coordinator's evidence (`coordinator.outbox.lookup`),
never from the caller, so this can resend only what the coordinator itself published.
Every service reads the events topic, so every service sees the repeat; their idempotency
store makes it harmless for those that already acted. Events whose entity or subject is
under an active legal hold now are never sent again, and are reported as held.

Records go out in batches; each batch is audited (`events_republished`, with the actor)
once the broker has acknowledged all of it, so the audit never claims a send that did not
happen. Holds are checked again for each batch under the purge's share of the hold lock,
held through the send, so a hold created while a batch is read is never overtaken. A
crash between the send and the audit leaves a repeat unaudited, which the services
absorb; the caller sees the error and runs it again.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator import CoordinatorError
from coordinator.clock import Clock
from coordinator.evidence import audit
from coordinator.kafka.clients import KafkaPublisher
from coordinator.kafka.ports import OutgoingRecord, Publisher
from coordinator.outbox.lookup import StoredEvent, events_by
from coordinator.purge.holds import lock_for_purge
from coordinator.store.db import unbounded_lock_waits
from coordinator.store.tables import expected_acks
from schemas import KafkaSettings, RetentionEvent, encode
from schemas.signing import Signer

__all__ = [
    "REPUBLISH_HEADER",
    "SAMPLE",
    "Outcome",
    "RepublishSetup",
    "Republisher",
    "Selection",
    "UnknownSelection",
]

log = structlog.get_logger(__name__)

REPUBLISH_HEADER = "retention-republish"
"""On every re-sent record, why it was sent again: `republish`, `redrive` or `backfill`.
The signature covers key and value only; readers need not look at it."""

BATCH = 500


class UnknownSelection(CoordinatorError, LookupError):
    """Nothing the coordinator published matches (or its evidence was pruned)."""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which events: exactly one of event, entity or run; optionally one service's."""

    event_id: uuid.UUID | None = None
    entity: tuple[str, str] | None = None
    run_id: uuid.UUID | None = None
    service: str | None = None

    def __post_init__(self) -> None:
        chosen = [x for x in (self.event_id, self.entity, self.run_id) if x is not None]
        if len(chosen) != 1:
            raise ValueError("choose exactly one of an event, an entity or a run")

    def kind(self) -> str:
        """What was selected, without the entity's id: error texts never name a person."""
        chosen = "event" if self.event_id else "entity" if self.entity else "run"
        return chosen if self.service is None else f"{chosen} for service {self.service}"

    def described(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.event_id is not None:
            out["event_id"] = str(self.event_id)
        if self.entity is not None:
            out["entity"] = f"{self.entity[0]}:{self.entity[1]}"
        if self.run_id is not None:
            out["run_id"] = str(self.run_id)
        if self.service is not None:
            out["service"] = self.service
        return out


SAMPLE = 100
"""How many sent and held ids an `Outcome` lists by default: a run's re-send can send
millions, which neither a response nor the process should hold."""


@dataclass(slots=True)
class Outcome:
    """What a re-send did: whole counts, and the first `keep` sent and held ids (every id
    with `keep=None`, for a caller whose selection is bounded already: one DLQ chunk, one
    backfill page)."""

    keep: int | None = SAMPLE
    sent: list[uuid.UUID] = field(default_factory=list)
    held: list[uuid.UUID] = field(default_factory=list)
    """Found but under an active hold now: not sent."""
    sent_total: int = 0
    held_total: int = 0

    def add(self, sent: Sequence[uuid.UUID], held: Sequence[uuid.UUID]) -> None:
        self.sent_total += len(sent)
        self.held_total += len(held)
        room = None if self.keep is None else max(self.keep - len(self.sent), 0)
        self.sent.extend(sent[:room])
        room = None if self.keep is None else max(self.keep - len(self.held), 0)
        self.held.extend(held[:room])

    @property
    def truncated(self) -> bool:
        return self.sent_total > len(self.sent) or self.held_total > len(self.held)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": [str(i) for i in self.sent],
            "sent_total": self.sent_total,
            "held": [str(i) for i in self.held],
            "held_total": self.held_total,
            "truncated": self.truncated,
        }


async def _expecting(
    conn: AsyncConnection, service: str, event_ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    """Of `event_ids`, those `service` is an expected acknowledger of."""
    e = expected_acks.c
    rows = await conn.execute(
        select(e.event_id).where(e.service == service, e.event_id.in_(list(event_ids)))
    )
    return set(rows.scalars())


@dataclass(frozen=True, slots=True)
class RepublishSetup:
    """What a `Republisher` needs beyond the database: a producer is opened per use (an
    operator's command), so `serve` holds no idle connection for it."""

    kafka: KafkaSettings
    signer: Signer | None

    @asynccontextmanager
    async def open(self, engine: AsyncEngine, clock: Clock) -> AsyncIterator[Republisher]:
        publisher = KafkaPublisher(self.kafka)
        await publisher.start()
        try:
            yield Republisher(
                engine,
                publisher,
                topic=self.kafka.topics.events,
                signer=self.signer,
                clock=clock,
            )
        finally:
            await publisher.stop()


class Republisher:
    """Sends stored events to the events topic again, signed, and audits each batch."""

    def __init__(
        self,
        engine: AsyncEngine,
        publisher: Publisher,
        *,
        topic: str,
        signer: Signer | None,
        clock: Clock,
    ) -> None:
        self._engine = engine
        self._publisher = publisher
        self._topic = topic
        self._signer = signer
        self._clock = clock

    async def republish(self, selection: Selection, *, actor: str) -> Outcome:
        """Send the selected events again.

        Raises:
            UnknownSelection: no published event matches (for `service`: none it is
                expected to acknowledge).
        """
        outcome = Outcome()
        after: tuple[int, uuid.UUID] | None = None
        while True:
            async with self._engine.connect() as conn:
                page = await events_by(
                    conn,
                    now=self._clock.now(),
                    event_ids=None if selection.event_id is None else [selection.event_id],
                    entity=selection.entity,
                    run_id=selection.run_id,
                    after=after,
                    limit=BATCH,
                )
                if not page:
                    break
                after = page[-1].position
                if selection.service is not None:
                    mine = await _expecting(
                        conn, selection.service, [s.event.event_id for s in page]
                    )
                    page = [s for s in page if s.event.event_id in mine]
            await self.send(
                page,
                outcome,
                actor=actor,
                reason="republish",
                audit_data=selection.described(),
            )
        if not outcome.sent_total and not outcome.held_total:
            raise UnknownSelection(f"no published event matches the {selection.kind()}")
        return outcome

    async def send(
        self,
        stored: Sequence[StoredEvent],
        outcome: Outcome,
        *,
        actor: str,
        reason: str,
        audit_data: dict[str, Any],
        action: audit.AuditAction = audit.AuditAction.EVENTS_REPUBLISHED,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Send `stored` (held ones skipped), then audit what the broker acknowledged."""
        if not stored:
            return
        async with self._engine.begin() as conn:
            # The purge's side of the hold lock (coordinator.purge.holds): a hold created
            # from here on waits for this transaction, so "held" is decided now, under the
            # lock, and not when the caller read these events.
            await lock_for_purge(conn)
            current = await events_by(
                conn, now=self._clock.now(), event_ids=[s.event.event_id for s in stored]
            )
            held = [s.event.event_id for s in current if s.held]
            events = [s.event for s in current if not s.held]
            if not events:
                outcome.add([], held)
                return
            await self._publisher.publish(self._topic, self.records(events, reason=reason))
            # Sent: the audit entry must follow, however long the chain's lock takes (a
            # bounded one-shot command giving up here would leave a send unaudited).
            async with unbounded_lock_waits(conn):
                await audit.append(
                    conn,
                    [
                        audit.AuditEntry(
                            action,
                            actor,
                            {
                                **audit_data,
                                "count": len(events),
                                "event_ids": [str(e.event_id) for e in events],
                            },
                        )
                    ],
                    at=self._clock.now(),
                )
        outcome.add([e.event_id for e in events], held)
        log.info("events_republished", count=len(events), reason=reason)
        if progress is not None:
            progress(len(events))

    def records(self, events: Sequence[RetentionEvent], *, reason: str) -> list[OutgoingRecord]:
        """Key, value and event id as the relay writes them, plus the reason, signed in
        proof format v1 whatever the relay's (every SDK version reads v1; re-published
        events are few, so their header bytes do not matter)."""
        pairs = [(e.key.encode(), encode(e)) for e in events]
        signed = self._signer.sign_batch(pairs) if self._signer is not None else [[] for _ in pairs]
        return [
            OutgoingRecord(
                key,
                value,
                [
                    ("event_id", str(e.event_id).encode()),
                    (REPUBLISH_HEADER, reason.encode()),
                    *headers,
                ],
            )
            for e, (key, value), headers in zip(events, pairs, signed, strict=True)
        ]
