"""Writing the outbox: one row per batch of events, in the writer's transaction.

`enqueue` takes the audit chain's lock (held until the transaction ends) before it gives
the row the next seq, so seq order is commit order: when the relay sees seq N committed,
every smaller seq committed before it, and its watermark never skips a row that commits
later. Writers append their audit entry in the same transaction anyway, so the lock is
held for no longer than it was. Given the audit entry, `enqueue` writes it in the
same statement as the row: under the lock then go three round trips (the lock, the
chain's head, the inserts) and the commit, so call it last before the commit.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Text, Uuid, bindparam, cast, func, insert, literal, select
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from coordinator.evidence import audit
from coordinator.evidence.audit import AuditEntry
from coordinator.outbox.events import SHARED
from coordinator.outbox.wakeup import CHANNEL
from coordinator.store.tables import audit_log, outbox_batches, outbox_marks
from schemas import EventReason

__all__ = ["EventBatch", "enqueue", "wake_column"]


@dataclass(frozen=True, slots=True)
class EventBatch:
    """The events of one purge batch: what they share, and each one's entity and subject."""

    policy: str
    event_type: str
    entity_type: str
    legal_basis: str
    initiated_at: datetime
    deadline: datetime
    entity_ids: Sequence[str]
    subjects: Sequence[str | None] | None = None
    """Alongside entity_ids; None when no event names a subject."""
    fields: Sequence[str] = field(default_factory=tuple)
    run_id: uuid.UUID | None = None
    reason: EventReason = EventReason.RETENTION_POLICY
    request_id: uuid.UUID | None = None


def notify_statement(below: float = 0.5) -> Any:
    """The relay's wake-up, sent only while the server's notification queue is less than
    `below` full. The queue is one per server and anyone who can connect can fill it (a
    listener idle in a transaction holds it); a full queue fails every transaction that
    notified, at commit. Skipping the wake-up leaves the batch to the relay's polling."""
    return select(func.pg_notify(CHANNEL, "")).where(func.pg_notification_queue_usage() < below)


_NOTIFY = notify_statement()


def wake_column(*, when: ColumnElement[bool]) -> Any:
    """The wake-up as a column of a writer's own statement, sent only `when` holds (it
    wrote events): one round trip fewer than `enqueue`'s own; then call `enqueue` with
    `woken=True`."""
    return _NOTIFY.where(when).scalar_subquery()


def _text_array(name: str) -> Any:
    """A text[] parameter sent as its PostgreSQL literal (`{"a","b",NULL}`, from
    `_array_literal`), one text.

    asyncpg encodes a list parameter element by element in Python: for a batch's 5,000
    ids about 1.0 ms of Python and 0.2 ms of PostgreSQL CPU, against 0.5 and 0.2 for the
    literal (measured), and a batch sends its ids inside the audit chain's lock.
    """
    return cast(bindparam(name, type_=Text), ARRAY(Text))


def _array_literal(values: Sequence[str | None]) -> str:
    if not values:
        return "{}"
    if None not in values:
        joined = '","'.join(values)  # type: ignore[arg-type]
        # No quote or backslash inside any value (each separator holds two quotes):
        # nothing to escape.
        if "\\" not in joined and joined.count('"') == 2 * (len(values) - 1):
            return '{"' + joined + '"}'
    return (
        "{"
        + ",".join(
            "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for v in values
        )
        + "}"
    )


async def enqueue(
    conn: AsyncConnection,
    batch: EventBatch,
    *,
    recorded: AuditEntry | None = None,
    json_native: bool = False,
    woken: bool = False,
) -> int:
    """Write the batch's outbox row and the audit entry `recorded` that records it,
    stamped with the batch's `initiated_at`; return its seq (0: the batch has no events,
    and only the entry is written). `json_native`: as `audit.prepare`'s, for `recorded`.
    `woken`: the transaction already sent the relays' wake-up (`wake_column`).
    """
    prepared = (
        audit.prepare([recorded], at=batch.initiated_at, json_native=json_native)
        if recorded is not None
        else []
    )
    if not batch.entity_ids:
        await audit.append_prepared(conn, prepared)
        return 0
    # Everything but the chain's head is serialized before the chain lock is taken, and
    # the statements are built once (`_batch_row`): holding the lock costs only the
    # hash and the insert.
    subjects = batch.subjects
    if subjects is not None and all(s is None for s in subjects):
        subjects = None
    params: dict[str, Any] = {
        "b_events": len(batch.entity_ids),
        "b_run_id": batch.run_id,
        "b_policy": batch.policy,
        "b_event_type": batch.event_type,
        "b_entity_type": batch.entity_type,
        "b_legal_basis": batch.legal_basis,
        "b_fields": list(batch.fields),
        "b_initiated_at": batch.initiated_at,
        "b_deadline": batch.deadline,
        "b_reason": batch.reason.value,
        "b_request_id": batch.request_id,
        "b_entity_ids": _array_literal(batch.entity_ids),
        "b_subjects": None if subjects is None else _array_literal(subjects),
    }
    # Wakes the relays when this transaction commits (coordinator/outbox/wakeup.py);
    # sent before the chain's lock, as it costs a round trip and is queued until commit.
    if not woken:
        await conn.execute(_NOTIFY)
    head = await audit.lock_head(conn)
    if recorded is None:
        return int(await conn.scalar(_batch_row(), params) or 0)
    (entry,) = audit.chained(head, prepared)
    columns = tuple(name for name in entry if name != "data_json")
    params.update({f"a_{name}": entry[name] for name in columns})
    params["a_data"] = entry["data_json"]
    seq = await conn.scalar(_batch_row_and_entry(columns), params)
    return int(seq or 0)


@functools.cache
def _batch_row() -> Any:
    """The outbox row's insert, every value of a batch bound when it runs: built (and
    its cache key computed) once, not for every batch (~0.5 ms of Python each)."""
    b = outbox_batches.c
    # Past the watermark too: after a prune took every batch, seq must not start over
    # below marks that already say "published".
    next_seq = (
        select(
            func.greatest(
                select(func.coalesce(func.max(b.seq), 0)).scalar_subquery(),
                select(func.coalesce(func.max(outbox_marks.c.up_to), 0)).scalar_subquery(),
            )
            + 1
        )
    ).scalar_subquery()
    # Ids count up from 1 under one fresh UUIDv7 (migration 0005), like the per-event
    # outbox's: event n of the batch is retention_uuidv7_nth(id_base, 1 + n).
    base = func.retention_uuidv7_nth(func.retention_uuidv7(), 0, type_=Uuid)
    # A bound name may not be a column's: "b_" + the column. The shared event fields'
    # columns come from the event's one mapping (coordinator/outbox/events.py).
    bound: dict[str, Any] = {name: bindparam(f"b_{name}") for name in ("events", *SHARED.values())}
    return (
        insert(outbox_batches)
        .values(
            seq=next_seq,
            id_base=base,
            id_first=literal(1, BigInteger()),
            entity_ids=_text_array("b_entity_ids"),
            subjects=_text_array("b_subjects"),
            **bound,
        )
        .returning(b.seq)
    )


@functools.cache
def _batch_row_and_entry(columns: tuple[str, ...]) -> Any:
    """The outbox row and its audit entry in one statement (the entry's `columns` as
    `audit.chained` names them, bound as "a_" + the name, its data as "a_data")."""
    written = _batch_row().cte("batch")
    values: dict[str, Any] = {name: bindparam(f"a_{name}") for name in columns}
    values["data"] = cast(bindparam("a_data", type_=Text), JSONB)
    return (
        insert(audit_log)
        .values(values)
        .add_cte(written)
        .returning(select(written.c.seq).scalar_subquery())
    )
