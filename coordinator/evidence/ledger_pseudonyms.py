"""The ack ledger's entity ids of a batch of events, rewritten as HMACs (SPEC §13): the
event status's pseudonymisation and the verifications' (coordinator/evidence/prune.py,
coordinator/copies/verification/prune.py) both leave no clear id beside their HMAC in
the ledger rows of the events they rewrite."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ARRAY,
    Uuid,
    any_,
    bindparam,
    column,
    not_,
    or_,
    select,
    table,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.evidence.partitions import EPOCH, LEDGER, event_time, ledger_event_at, lock_copies
from coordinator.evidence.pseudonyms import Pepper
from coordinator.store.tables import ack_ledger

__all__ = ["batch_acks", "pseudonymise_acks", "pseudonymise_copies"]


async def pseudonymise_acks(
    conn: AsyncConnection, pepper: Pepper, events: Sequence[uuid.UUID]
) -> None:
    """Rewrite the entity ids of the ledger rows of `events` (and of a conversion's
    copies of them) as their HMACs, in the caller's transaction."""
    acks = (await conn.execute(batch_acks(sorted(events)))).all()
    if not acks:
        return
    a = ack_ledger.c
    pseudonyms = [pepper.pseudonym(r.entity_type or "", r.entity_id) for r in acks]
    # The partition key with the id: one partition's index, not every month's
    # (NULL: a row from before migration 0025, its ledger not converted yet).
    at: Any = bindparam("b_event_at")
    await conn.execute(
        update(ack_ledger)
        .where(a.id == bindparam("b_id"), or_(a.event_at == at, a.event_at.is_(None)))
        .values(entity_id=bindparam("b_pseudonym")),
        [
            {"b_id": r.id, "b_event_at": r.event_at, "b_pseudonym": p}
            for r, p in zip(acks, pseudonyms, strict=True)
        ],
    )
    await pseudonymise_copies(conn, acks, pseudonyms)


def batch_acks(events: Sequence[uuid.UUID]) -> Any:
    """The ledger rows with an entity id of `events` (in id order), read through the two
    partial indexes on `event_id`: with no `accepted` condition, neither applies and each
    batch read the whole ledger.

    The same bounds as `repair_pseudonyms`' read, plus the rows of a ledger not converted
    yet, whose `event_at` is NULL."""
    a = ack_ledger.c
    first, last = events[0], events[-1]
    # One array parameter for both arms, not two IN lists of len(events).
    ids = bindparam("b_events", list(events), type_=ARRAY(Uuid()))
    found = [
        select(a.id, a.event_at, a.event_id, a.received_at, a.entity_type, a.entity_id).where(
            accepted,
            a.event_id == any_(ids),
            a.event_id.between(first, last),
            or_(
                a.event_at.between(event_time(first), event_time(last)),
                a.event_at == EPOCH,
                a.event_at.is_(None),
            ),
            a.entity_id.is_not(None),
        )
        for accepted in (a.accepted, not_(a.accepted))
    ]
    return union_all(*found).order_by("id")


async def pseudonymise_copies(
    conn: AsyncConnection, acks: Sequence[Any], pseudonyms: Sequence[str]
) -> None:
    """Write `pseudonyms` into the copies a ledger conversion has already made of `acks`
    (rewritten in the old ledger just before): the swap keeps those copies, and the marked
    status means no later run redoes them. A row not copied yet is copied later, from the
    old ledger's HMAC (`lock_copies`)."""
    if not await lock_copies(conn, LEDGER):
        return
    shadow = table(LEDGER.shadow, column("id"), column("event_at"), column("entity_id"))
    await conn.execute(
        update(shadow)
        .where(shadow.c.id == bindparam("b_id"), shadow.c.event_at == bindparam("b_event_at"))
        .values(entity_id=bindparam("b_pseudonym")),
        [
            {
                "b_id": r.id,
                # What the copy stored: the SQL twin of `ledger_event_at` for older rows.
                "b_event_at": r.event_at or ledger_event_at(r.event_id, r.received_at),
                "b_pseudonym": p,
            }
            for r, p in zip(acks, pseudonyms, strict=True)
        ],
    )
