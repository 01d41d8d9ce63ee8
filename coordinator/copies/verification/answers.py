"""Record services' answers to verify events, inside the tracker's ack transaction.

Every answer lands in the ack ledger, accepted or rejected with a reason, like any ack.
An accepted `still_present` turns that service's done acknowledgements of the entity's
delete events into `still_present` and those events into `resurrected` (SPEC §15); a
done ack from the same service of a delete event published after that answer completes
them again, or, recorded first, leaves the answer nothing to reopen. Nothing here ever
runs or re-sends a deletion.

Both change delete events the ack path locks, reads and rewrites, and only events the
batch locked before the audit chain's lock: `events_to_lock`'s, in the ack path's sorted
pass, and `reopened_to_lock`'s, right after it with NOWAIT (docs/verification.md, "Lock
order")."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, any_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.evidence import audit
from coordinator.store.tables import (
    event_status,
    expected_acks,
    verifications,
    verify_answers,
)
from coordinator.tracking.columns import event_ids_param, event_ids_slot, unnest
from coordinator.tracking.ledger import (
    ConsumedAck,
    Contended,
    LedgerRow,
    RejectReason,
    audited_rejects,
    insert_ledger,
    ledger_row,
    sorted_ids,
)
from schemas import VERIFY_STATUSES, AckStatus, EventType, RetentionAck

__all__ = [
    "ANSWERS",
    "VerifyOutcome",
    "apply_answers",
    "delete_again",
    "events_to_lock",
    "reopened_to_lock",
    "resurrected_events",
    "verify_event_ids",
]

ACTOR = "tracker"
ANSWERS = frozenset({*(s.value for s in VERIFY_STATUSES), AckStatus.FAILED.value})
"""What a verify event may be answered with; `failed`: the service's count raised."""
_DONE = ("completed", "not_found")
_STILL_PRESENT = AckStatus.STILL_PRESENT.value
_DONE_ACKS = (AckStatus.COMPLETED, AckStatus.NOT_FOUND)


@dataclass(slots=True)
class VerifyOutcome:
    accepted: list[RetentionAck] = field(default_factory=list)
    rejected: list[tuple[ConsumedAck, RejectReason]] = field(default_factory=list)
    resurrected: list[tuple[str, str, str]] = field(default_factory=list)
    """(entity type, entity id, service) found still holding data by this batch."""


async def verify_event_ids(conn: AsyncConnection, event_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these are verify events (their acks are answers, recorded here)."""
    if not event_ids:
        return set()
    # Deduplicated and sorted by their ints, in C: a UUID's hash and order are Python code.
    by_int = {event_id.int: event_id for event_id in event_ids}
    rows = await conn.execute(_VERIFY_EVENTS, {"event_ids": [by_int[n] for n in sorted(by_int)]})
    return set(rows.scalars())


# Built once, the ids bound when it runs (`columns.unnest_slot`): run for every ack batch.
_VERIFY_EVENTS = select(verifications.c.event_id).where(
    verifications.c.event_id == any_(event_ids_slot())
)


async def events_to_lock(
    conn: AsyncConnection, records: Sequence[ConsumedAck], asked: Collection[uuid.UUID]
) -> list[uuid.UUID]:
    """The delete events this batch's answers (acks of the `asked` verify events) may
    reopen, sorted: every delete event of an entity answered `still_present`. The caller
    locks them with the events its acks name, in one sorted pass, before anything takes
    the audit chain's lock, then hands them, with `reopened_to_lock`'s, to
    `apply_answers` and `delete_again`, which change no other event.

    Read before they are locked: `apply_answers` reads the entity's delete events again
    under the chain's lock, and has the batch retried should one be missing here."""
    if not asked:
        return []
    s, v = event_status.c, verifications.c
    found = {
        ack.event_id
        for r in records
        if (ack := r.ack) is not None
        and r.refused is None
        and ack.status is AckStatus.STILL_PRESENT
        and ack.event_id in asked
    }
    if not found:
        return []
    return sorted_ids(
        await conn.scalars(
            select(s.event_id)
            .join_from(
                verifications,
                event_status,
                (s.entity_type == v.entity_type) & (s.entity_id == v.entity_id),
            )
            .where(
                v.event_id == any_(event_ids_param(sorted_ids(found))),
                s.event_type == EventType.DELETE.value,
            )
        )
    )


async def reopened_to_lock(
    conn: AsyncConnection, records: Sequence[ConsumedAck], asked: Collection[uuid.UUID]
) -> list[uuid.UUID]:
    """The reopened delete events this batch's delete acks may complete again: for each
    `completed`/`not_found` ack (of a delete event or not: a few too many are only
    locked), the entity's delete events whose acknowledgement by that service is
    `still_present`.

    Read once the batch holds its acks' events (`ledger.apply_acks`' `then_lock`, inside
    its `by_key`): an answer reopening one of them holds every delete event of the
    entity, so it committed before this read or waits for this batch's commit."""
    e = expected_acks.c
    # Nearly always nothing is reopened: one probe of the partial index, no pass over the
    # batch, no join.
    if not await conn.scalar(select(e.event_id).where(e.status == _STILL_PRESENT).limit(1)):
        return []
    # The status first: a UUID's hash (the membership test) is Python code.
    done = [
        ack
        for r in records
        if (ack := r.ack) is not None
        and r.refused is None
        and ack.status in _DONE_ACKS
        and not (asked and ack.event_id in asked)
    ]
    return sorted_ids(set(await conn.scalars(_reopened(done)))) if done else []


def _reopened(done: Sequence[RetentionAck]) -> Select[tuple[uuid.UUID]]:
    """The delete events of the entities `done` name whose acknowledgement by the
    service that sent the ack is reopened.

    By the entity the ack names, not its event's: the ledger accepts an ack only when
    the two are the same, and an ack it rejects completes nothing (one naming another
    entity only has that entity's events locked). No probe of each ack's event: with
    few reopened rows the plan starts from the `still_present` partial index, with many
    it probes the entity index per ack (docs/verification.md, "Lock order")."""
    s, e = event_status.c, expected_acks.c
    acked = unnest(
        "acked",
        {
            "entity_type": s.entity_type.type,
            "entity_id": s.entity_id.type,
            "service": e.service.type,
        },
        [
            {"entity_type": a.entity_type, "entity_id": a.entity_id, "service": a.service}
            for a in done
        ],
    )
    return (
        select(e.event_id)
        .join_from(
            acked,
            event_status,
            (s.entity_type == acked.c.entity_type) & (s.entity_id == acked.c.entity_id),
        )
        .join(expected_acks, (e.event_id == s.event_id) & (e.service == acked.c.service))
        .where(s.event_type == EventType.DELETE.value, e.status == _STILL_PRESENT)
    )


async def apply_answers(
    conn: AsyncConnection,
    records: Sequence[ConsumedAck],
    *,
    now: datetime,
    locked: Collection[uuid.UUID],
) -> VerifyOutcome:
    """Ledger, answers, resurrections and one audit entry for acks of verify events.

    `locked`: the events this transaction locked for its answers and later deletes
    (`events_to_lock`, `reopened_to_lock`); one of an answered entity's delete events
    not among them raises `ledger.Contended` (roll back, retry with it locked)."""
    outcome = VerifyOutcome()
    acks = [r.ack for r in records if r.ack is not None]
    if not acks:
        return outcome
    ids = sorted({a.event_id for a in acks})
    # The chain's lock before the answer rows, after the delete events (`locked`): answer
    # rows are locked only while holding it, so two trackers never wait on each other in
    # opposite orders.
    last_seq, _ = await audit.lock_head(conn)
    asked = {
        row.event_id: row
        for row in await conn.execute(
            select(verifications).where(verifications.c.event_id == any_(event_ids_param(ids)))
        )
    }
    answers: dict[tuple[uuid.UUID, str], dict[str, Any]] = {
        (row.event_id, row.service): row._asdict()
        for row in await conn.execute(
            select(verify_answers)
            .where(verify_answers.c.event_id == any_(event_ids_param(ids)))
            .order_by(verify_answers.c.event_id, verify_answers.c.service)
            .with_for_update()
        )
    }
    rows: list[LedgerRow] = []
    verdicts: list[tuple[ConsumedAck, RejectReason | None]] = []
    for record in records:
        reason = _reject_reason(record, asked, answers)
        verdicts.append((record, reason))
        rows.append(ledger_row(record, now, reason))
    inserted = await insert_ledger(conn, rows, audit_seq=last_seq + 1, received_at=now)
    changed: dict[tuple[uuid.UUID, str], dict[str, Any]] = {}
    for record, reason in verdicts:
        if (record.topic, record.partition, record.offset) not in inserted:
            continue  # a redelivered record, recorded the first time
        if reason is not None:
            outcome.rejected.append((record, reason))
            continue
        ack = record.ack
        assert ack is not None
        outcome.accepted.append(ack)
        row = answers[(ack.event_id, ack.service)]
        if row["acknowledged_at"] is not None and row["acknowledged_at"] > ack.acknowledged_at:
            continue
        row.update(
            status=ack.status.value,
            records_affected=ack.records_affected,
            detail=ack.detail[:2000],
            acknowledged_at=ack.acknowledged_at,
        )
        changed[(ack.event_id, ack.service)] = row
    for r in changed.values():
        # Few per batch: services answer verify events one per sampled entity.
        await conn.execute(
            update(verify_answers)
            .where(
                verify_answers.c.event_id == r["event_id"],
                verify_answers.c.service == r["service"],
            )
            .values(
                status=r["status"],
                records_affected=r["records_affected"],
                detail=r["detail"],
                acknowledged_at=r["acknowledged_at"],
            )
        )
    # (entity type, entity id, service): when it was last found still holding data.
    found: dict[tuple[str, str, str], datetime] = {}
    for r in changed.values():
        if r["status"] == AckStatus.STILL_PRESENT.value:
            key = (asked[r["event_id"]].entity_type, asked[r["event_id"]].entity_id, r["service"])
            found[key] = max(found.get(key, r["acknowledged_at"]), r["acknowledged_at"])
    resurrected = await _resurrect(conn, found, locked, now=now)
    outcome.resurrected = [key for key in sorted(found) if key in resurrected]
    entries = []
    if outcome.accepted or outcome.rejected:
        entries.append(
            audit.AuditEntry(
                audit.AuditAction.VERIFY_ANSWERS,
                ACTOR,
                {
                    "accepted": [
                        {
                            "event_id": a.event_id,
                            "service": a.service,
                            "status": a.status.value,
                            "records": a.records_affected,
                        }
                        for a in outcome.accepted
                    ],
                    "rejected": audited_rejects(outcome.rejected),
                },
            )
        )
    for (entity_type, entity_id, service), events in sorted(resurrected.items()):
        entries.append(
            audit.AuditEntry(
                audit.AuditAction.ENTITY_RESURRECTED,
                ACTOR,
                {
                    "entity_type": entity_type,
                    "entity_id": entity_id,
                    "service": service,
                    "events": events,
                },
            )
        )
    refs = await audit.append_refs(conn, entries, at=now)
    if inserted and refs and refs[0].seq != last_seq + 1:
        raise RuntimeError(f"verify.answers landed at seq {refs[0].seq}, not {last_seq + 1}")
    return outcome


def _reject_reason(
    record: ConsumedAck,
    asked: dict[uuid.UUID, Any],
    answers: dict[tuple[uuid.UUID, str], dict[str, Any]],
) -> RejectReason | None:
    ack = record.ack
    assert ack is not None
    if record.refused is not None:
        return record.refused
    verification = asked.get(ack.event_id)
    if verification is None:
        return RejectReason.UNKNOWN_EVENT
    if verification.pseudonymised_at is not None:
        return RejectReason.VERIFICATION_EXPIRED
    if (ack.entity_type, ack.entity_id) != (verification.entity_type, verification.entity_id):
        return RejectReason.ENTITY_MISMATCH
    if (ack.event_id, ack.service) not in answers:
        return RejectReason.UNEXPECTED_SERVICE
    if ack.status.value not in ANSWERS:
        return RejectReason.UNEXPECTED_STATUS
    return None


async def _resurrect(
    conn: AsyncConnection,
    found: Mapping[tuple[str, str, str], datetime],
    locked: Collection[uuid.UUID],
    *,
    now: datetime,
) -> dict[tuple[str, str, str], list[uuid.UUID]]:
    """Reopen the delete events each service said were done but, at the answer's time,
    still held data for; unless a delete published after that answer is done at that
    service already: that later delete ended what the answer found (SPEC §15), whichever
    of the two the trackers recorded first.

    Judged under the chain's lock, which every tracking and every ack batch commits
    holding: what it reads is what the chain recorded before this answer. Every delete
    event of the entity must be `locked` (`events_to_lock`): one tracked since is not,
    and the batch is retried with it (`ledger.Contended`), never locked after the
    chain's lock."""
    if not found:
        return {}
    s, e = event_status.c, expected_acks.c
    answered = unnest(
        "answered",
        {
            "entity_type": s.entity_type.type,
            "entity_id": s.entity_id.type,
            "service": e.service.type,
            "at": s.published_at.type,
        },
        [
            {"entity_type": t, "entity_id": i, "service": service, "at": at}
            for (t, i, service), at in found.items()
        ],
    )
    a = answered.c
    rows = list(
        await conn.execute(
            select(
                a.entity_type,
                a.entity_id,
                a.service,
                s.event_id,
                (s.published_at > a.at).label("later"),
                e.status,
            )
            .join_from(
                answered,
                event_status,
                (s.entity_type == a.entity_type) & (s.entity_id == a.entity_id),
            )
            .outerjoin(expected_acks, (e.event_id == s.event_id) & (e.service == a.service))
            .where(s.event_type == EventType.DELETE.value)
        )
    )
    held = set(locked)
    if missed := {row.event_id for row in rows if row.event_id not in held}:
        raise Contended(sorted_ids(missed))
    ended = {
        (row.entity_type, row.entity_id, row.service)
        for row in rows
        if row.later and row.status in _DONE
    }
    reopen = [
        {"event_id": row.event_id, "service": row.service}
        for row in rows
        if row.status in _DONE and (row.entity_type, row.entity_id, row.service) not in ended
    ]
    if not reopen:
        return {}
    acks = unnest("reopen", {"event_id": e.event_id.type, "service": e.service.type}, reopen)
    reopened = await conn.execute(
        update(expected_acks)
        .where(
            e.event_id == acks.c.event_id,
            e.service == acks.c.service,
            e.event_id == s.event_id,
            e.status.in_(_DONE),
        )
        .values(status=AckStatus.STILL_PRESENT.value)
        .returning(s.entity_type, s.entity_id, e.service, e.event_id)
    )
    events: dict[tuple[str, str, str], list[uuid.UUID]] = defaultdict(list)
    for row in reopened:
        events[(row.entity_type, row.entity_id, row.service)].append(row.event_id)
    ids = sorted({i for found_ids in events.values() for i in found_ids})
    if ids:
        # No reminders: a redelivery of the same event would be answered from the
        # service's idempotency record, not by deleting again.
        # Only completed events become `resurrected`: one still open elsewhere keeps its
        # state, and becomes `resurrected` when its other services are done (the ledger).
        await conn.execute(
            update(event_status)
            .where(s.event_id == any_(event_ids_param(ids)), s.state == "completed")
            .values(state="resurrected", next_reminder_at=None, updated_at=now)
        )
    return {key: sorted(value) for key, value in events.items()}


async def delete_again(
    conn: AsyncConnection,
    accepted: Sequence[RetentionAck],
    *,
    now: datetime,
    locked: Collection[uuid.UUID],
) -> list[uuid.UUID]:
    """A later delete ack completes a resurrected entity at that service again: for each
    accepted `completed`/`not_found` ack of a delete event published after the service's
    `still_present` answer, its `still_present` acknowledgements of the entity become
    `completed`, and events with nothing left open are `completed` again.

    `locked`: the events this transaction locked for its answers and later deletes
    (`events_to_lock`, `reopened_to_lock`); only those complete again, and they are all
    there are: an answer reopening another one commits after this batch (it holds
    every delete event of the entity, the acked one too)."""
    if not locked:
        return []
    done = [a for a in accepted if a.status in _DONE_ACKS]
    if not done:
        return []
    s, e = event_status.c, expected_acks.c
    v, va = verifications.c, verify_answers.c
    acked = unnest(
        "acked",
        {"event_id": s.event_id.type, "service": e.service.type},
        [{"event_id": a.event_id, "service": a.service} for a in done],
    )
    later = (
        select(s.entity_type, s.entity_id, acked.c.service)
        .join_from(acked, event_status, s.event_id == acked.c.event_id)
        .where(
            s.event_type == EventType.DELETE.value,
            s.published_at
            > select(func.max(va.acknowledged_at))
            .join_from(verify_answers, verifications, v.event_id == va.event_id)
            .where(
                v.entity_type == s.entity_type,
                v.entity_id == s.entity_id,
                va.service == acked.c.service,
                va.status == AckStatus.STILL_PRESENT.value,
            )
            .scalar_subquery(),
        )
    ).subquery("later")
    cleared = list(
        await conn.execute(
            update(expected_acks)
            .where(
                e.event_id == any_(event_ids_param(sorted_ids(locked))),
                e.event_id == s.event_id,
                s.entity_type == later.c.entity_type,
                s.entity_id == later.c.entity_id,
                e.service == later.c.service,
                e.status == AckStatus.STILL_PRESENT.value,
            )
            .values(status=AckStatus.COMPLETED.value)
            .returning(e.event_id, e.service, s.entity_type, s.entity_id)
        )
    )
    if not cleared:
        return []
    ids = sorted({row.event_id for row in cleared})
    still = select(expected_acks.c.event_id).where(
        expected_acks.c.event_id == s.event_id,
        expected_acks.c.status == AckStatus.STILL_PRESENT.value,
    )
    completed = list(
        (
            await conn.execute(
                update(event_status)
                .where(
                    s.event_id == any_(event_ids_param(ids)),
                    s.state == "resurrected",
                    ~still.exists(),
                )
                .values(state="completed", updated_at=now)
                .returning(s.event_id)
            )
        ).scalars()
    )
    await audit.append(
        conn,
        [
            audit.AuditEntry(
                audit.AuditAction.ENTITY_DELETED_AGAIN,
                ACTOR,
                {
                    "acks": [
                        {
                            "event_id": row.event_id,
                            "service": row.service,
                            "entity_type": row.entity_type,
                            "entity_id": row.entity_id,
                        }
                        for row in cleared
                    ],
                    "events_completed": completed,
                },
            )
        ],
        at=now,
    )
    return completed


async def resurrected_events(conn: AsyncConnection) -> dict[str, int]:
    """Per service, the delete events it was found still holding data for and that no later
    delete completed yet (the gauge `retention_resurrected_events{service}`)."""
    e = expected_acks.c
    rows = await conn.execute(
        select(e.service, func.count())
        .where(e.status == AckStatus.STILL_PRESENT.value)
        .group_by(e.service)
    )
    return {service: count for service, count in rows}
