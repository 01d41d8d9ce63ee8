"""The ack ledger: apply one batch of consumed acks in one transaction.

Every consumed record lands in `retention_ack_ledger`, accepted or rejected with a reason.
Accepted acks move their service's row in `retention_expected_acks` and the event's
state; rejected ones are never applied. The caller commits offsets after the transaction.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

import asyncpg
import structlog
from sqlalchemy import (
    BigInteger,
    DateTime,
    Interval,
    any_,
    bindparam,
    case,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine.interfaces import AdaptedConnection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from coordinator import CoordinatorError
from coordinator.evidence import audit
from coordinator.evidence.partitions import EPOCH, LedgerEventMs
from coordinator.store.tables import ack_ledger, event_status, expected_acks
from coordinator.tracking.columns import (
    by_key,
    event_ids_param,
    event_ids_slot,
    unnest_rows,
    unnest_slot,
    unnest_values,
)
from coordinator.tracking.snapshot import ACTOR, Deadlines, Declared, track_events
from schemas import VERIFY_STATUSES, AckStatus, RetentionAck

__all__ = [
    "EXPECTED_COLUMNS",
    "LEDGER_COLUMNS",
    "STATUS_TEXT",
    "ConsumedAck",
    "Contended",
    "EventRow",
    "Expected",
    "ExpectedKey",
    "ExpectedRow",
    "LedgerOutcome",
    "LedgerRow",
    "Overtaken",
    "RejectReason",
    "Transition",
    "apply_acks",
    "audited_rejects",
    "compute_transitions",
    "expected_rows",
    "insert_ledger",
    "learn_bound_types",
    "ledger_row",
    "lock_events",
    "malformed",
    "migrations_for",
    "missing_types",
    "sorted_ids",
    "track_overtaken",
    "write_transitions",
]

log = structlog.get_logger("retention.tracker")

# The arrays the tracker binds: asyncpg knows their element types but looks each array
# type up too, the composites with every attribute's type.
_BOUND_TYPES = (
    "retention_ack_row_us",
    "retention_ack_change_us",
    "uuid",
    "text",
    "int4",
    "int8",
    "bool",
    "timestamptz",
    "interval",
)
_LEARN = "SELECT " + ", ".join(f"${n}::{t}[]" for n, t in enumerate(_BOUND_TYPES, 1))
_LEARNED = "retention_bound_types"
_WARNED = "retention_bound_types_missing"
_MADE_BY = {
    "retention_ack_change_us": "0034_ack_times_us",
    "retention_ack_row_us": "0034_ack_times_us",
}
"""The migration that creates each of the tracker's own types."""
_MISSING = (
    "SELECT coalesce(array_agg(t ORDER BY t), '{{}}') FROM unnest(CAST({} AS text[])) t"
    " WHERE to_regtype(t) IS NULL"
)
"""Which of a list of type names the database lacks; `{}`: the list's parameter, asyncpg's
in the checkout hook, SQLAlchemy's in `missing_types`."""


async def missing_types(conn: AsyncConnection) -> list[str]:
    """The tracker's own types this database lacks (sorted): while any is missing the
    tracker records no ack (`/healthz` reports it, coordinator/api/ops.py)."""
    found = await conn.scalar(text(_MISSING.format(":names")), {"names": list(_MADE_BY)})
    return list(found)


def migrations_for(types: Iterable[str]) -> list[str]:
    """The migrations that create `types` (from `missing_types`), sorted."""
    return sorted({_MADE_BY[name] for name in types})


def learn_bound_types(engine: AsyncEngine) -> None:
    """Have each of `engine`'s connections learn the array types the tracker binds when
    it is checked out the first time, before its transaction takes any lock.

    asyncpg looks a type it has no codec for up in the catalog (a recursive query, once
    per type and connection) the first time a connection uses it: left to the tracker's
    statements, that ran inside ack batches and tracking passes with the audit chain's
    lock held, and every other writer waited for it (docs/tracking.md)."""
    if not sa_event.contains(engine.sync_engine, "checkout", _learn):
        sa_event.listen(engine.sync_engine, "checkout", _learn)


def _learn(
    dbapi_conn: AdaptedConnection, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
) -> None:
    # `info` lives as long as the DBAPI connection: a reconnect learns again.
    if record.info.get(_LEARNED):
        return
    try:
        dbapi_conn.run_async(lambda conn: conn.prepare(_LEARN))
    except asyncpg.UndefinedObjectError:
        # A database not upgraded yet (the database goes first, docs/upgrading.md). The
        # engine is `serve`'s, shared with the API, relay and scheduler: failing the
        # checkout would fail all of them, so only the tracker's statements that bind a
        # missing type fail (and are retried); the next checkout learns again.
        if not record.info.get(_WARNED):
            record.info[_WARNED] = True
            missing = dbapi_conn.run_async(
                lambda conn: conn.fetchval(_MISSING.format("$1"), list(_MADE_BY))
            )
            log.warning(
                "tracker_types_missing",
                types=missing,
                migrations=migrations_for(missing),
                fix="retention db upgrade",
            )
        return
    record.info[_LEARNED] = True


DONE = frozenset({AckStatus.COMPLETED.value, AckStatus.NOT_FOUND.value})
WAIVED = "waived"
"""Set by `acks waive` / `services retire` only (coordinator/tracking/waivers.py); final."""
SETTLED = DONE | {WAIVED}
STILL_PRESENT = AckStatus.STILL_PRESENT.value
"""Set by a verify answer (coordinator/copies/verification/): only an ack of a later delete event
ends it, never another ack of this one (a redelivery is answered from the service's
idempotency record, without deleting)."""
HELD = AckStatus.HELD.value
"""An expected service found the entity or its subject held and did not execute the event."""
_DETAIL_CHARS = 2000
_KEY = ("event_id", "service")
EXPECTED_COLUMNS = (*_KEY, "status", "attempt", "acknowledged_at")
"""An expected row as the ack path holds it: a list of these columns' values, in this
order (read, folded, judged and written back by position: a dict per row cost ~1 µs).
Only what folding an ack and judging the event read: the columns an ack only writes or
adds to (records, detail, first ack, count) are written by the update from the batch's
change (`_Change`), never read (each column read is decoded for every expected row)."""
_E = {name: at for at, name in enumerate(EXPECTED_COLUMNS)}
_E_STATUS, _E_ATTEMPT, _E_ACKED = _E["status"], _E["attempt"], _E["acknowledged_at"]
_CHANGE_COLUMNS = (
    *_KEY,
    "status",
    "records_affected",
    "attempt",
    "detail",
    "acknowledged_us",
    "first_ack_us",
    "acks_received",
)
"""The attributes of `retention_ack_change_us` (migration 0034), as `_fold` fills them:
the row's status, attempt and acknowledged_at (as Unix microseconds) as folded; records
and detail of the ack that replaced the status, both NULL when none did (an ack's detail
is never NULL); the batch's earliest ack time in microseconds, NULL when it is the
acknowledged_at sent; how many new acks the batch holds for the row. The update adds
these to the stored row (`_change_set`)."""
_AS_INTEGERS = frozenset({"acknowledged_us", "first_ack_us", "event_ms"})
"""The attributes of both composite types sent as bigints, each for a timestamptz
column: an ack time as Unix microseconds (`_from_us`), a ledger row's `event_at` as Unix
milliseconds."""
LEDGER_COLUMNS = (
    "received_at",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "event_id",
    "service",
    "entity_type",
    "entity_id",
    "status",
    "records_affected",
    "attempt",
    "detail",
    "acknowledged_us",
    "accepted",
    "reject_reason",
    "key_id",
    "event_ms",
)
"""What the tracker writes of a ledger row, in the composite type's order after
`received_at`; `event_ms` is the `event_at` column as Unix milliseconds,
`acknowledged_us` the `acknowledged_at` column as Unix microseconds (`_from_us`)."""

_PER_ROW = tuple(name for name in LEDGER_COLUMNS if name != "received_at")
"""A ledger row as `ledger_row` makes it: a tuple of these values, in this order (the
composite type `retention_ack_row_us`'s, migration 0034); `received_at` is bound once
per insert."""
_STORED = tuple(name for name in _PER_ROW if name not in _AS_INTEGERS)
"""The columns `_PER_ROW` fills as they are; `event_ms` fills `event_at`,
`acknowledged_us` `acknowledged_at`."""
_L = {name: at for at, name in enumerate(_PER_ROW)}
_L_EVENT, _L_SERVICE, _L_ATTEMPT, _L_STATUS, _L_EVENT_MS = (
    _L["event_id"],
    _L["service"],
    _L["attempt"],
    _L["status"],
    _L["event_ms"],
)
LedgerRow = tuple[Any, ...]
ExpectedRow = list[Any]
ExpectedKey = tuple[int, str]
"""An expected row's key: (its event id as an int, service). Hashing a UUID is Python
code (`UUID.__hash__`), called for every lookup of a tuple holding one; an int's is not."""
Expected = dict[ExpectedKey, ExpectedRow]


class RejectReason(StrEnum):
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_SERVICE = "unknown_service"
    UNKNOWN_EVENT = "unknown_event"
    ENTITY_MISMATCH = "entity_mismatch"
    UNEXPECTED_SERVICE = "unexpected_service"
    UNEXPECTED_STATUS = "unexpected_status"
    """A verify answer to a deletion event, or a deletion status to a verify event."""
    VERIFICATION_EXPIRED = "verification_expired"
    """A verify answer to a record whose entity id is already its HMAC (docs/verification.md):
    too late to count, and its ledger row keeps no entity id."""
    EVIDENCE_EXPIRED = "evidence_expired"
    """An ack to an event whose status names the entity only by its HMAC (past the outbox
    retention, coordinator/evidence/prune.py): too late to count, and its ledger row keeps
    no entity id."""


_NO_ENTITY_ID = frozenset(
    {
        RejectReason.VERIFICATION_EXPIRED,
        RejectReason.EVIDENCE_EXPIRED,
        RejectReason.BAD_SIGNATURE,
        RejectReason.UNKNOWN_SERVICE,
    }
)
"""The reasons whose ledger rows keep no entity id: the event or record answered keeps
only its HMAC, or the sender is nobody the declaration names a key of (its entity id
is anyone's claim, refused before any event is read, so nothing tells whether that
event's id is an HMAC by now)."""


@dataclass(slots=True)
class ConsumedAck:
    """One record from the acks topic: the decoded ack, or why it could not be decoded.

    Not frozen: one is made per record, and a frozen dataclass sets each field through
    `object.__setattr__` (about a microsecond a record here). Nothing changes one."""

    topic: str
    partition: int
    offset: int
    ack: RetentionAck | None
    poison: str | None = None
    refused: RejectReason | None = None
    """Set by the consumer before the ledger sees it: an undeclared service, or a signature
    that does not verify against the service's declared keys."""
    key_id: str | None = None
    """The id of the declared key whose signature verified (None: unsigned, or not checked)."""


def malformed(
    topic: str, partition: int, offset: int, reason: str, raw: bytes | None
) -> ConsumedAck:
    """A record that did not decode, as its ledger row keeps it: the decoder's reason
    (it names fields and rules, never a value: tests/test_decode_properties.py) and the
    record's size, never its bytes: whoever can write to the acks topic chooses them,
    and the row outlives the topic's copy. Its topic, partition and offset find the
    DLQ's copy (whose headers carry them) while that is kept."""
    size = f" ({0 if raw is None else len(raw)} bytes)"
    return ConsumedAck(topic, partition, offset, None, reason[: _DETAIL_CHARS - len(size)] + size)


class Overtaken(CoordinatorError):
    """Raised by `apply_acks(track_missing=False)`, before it wrote anything: some acks
    name events nobody tracks yet. Roll back, `track_overtaken` them in a transaction of
    their own, and apply the batch again."""


class Contended(CoordinatorError):
    """Raised when events this transaction found it must lock out of their sorted order
    are locked by another (`lock_events(nowait=True)`), or were not locked by the sorted
    pass at all (`events`: those). Roll back and apply the batch again with `events` in
    the sorted pass (docs/verification.md, "Lock order")."""

    def __init__(self, events: Sequence[uuid.UUID]) -> None:
        super().__init__(f"{len(events)} events to lock in the sorted pass")
        self.events = list(events)


@dataclass(slots=True)
class LedgerOutcome:
    records: int = 0
    accepted: list[RetentionAck] = field(default_factory=list)
    duplicates: int = 0
    rejected: list[tuple[ConsumedAck, RejectReason]] = field(default_factory=list)
    # (policy, seconds from publication to the last expected ack) per event completed now.
    completed: list[tuple[str, float]] = field(default_factory=list)
    failed: int = 0


async def apply_acks(
    conn: AsyncConnection,
    records: Sequence[ConsumedAck],
    *,
    declared: Declared,
    now: datetime,
    reminder_interval: timedelta,
    deadlines: Deadlines | None = None,
    track_missing: bool = True,
    also_lock: Sequence[uuid.UUID] = (),
    then_lock: Callable[[AsyncConnection], Awaitable[Sequence[uuid.UUID]]] | None = None,
) -> LedgerOutcome:
    """Record `records` in the ledger and apply the new, valid ones; one audit append.

    `track_missing=False`: raise `Overtaken` rather than track events nobody tracks yet
    (tracking holds the audit chain's lock until this transaction commits).

    `also_lock`: events the rest of the transaction changes (verify answers' reopenings),
    locked with the acks' events in one sorted pass, and so before the audit chain.
    `then_lock`: read once the batch's events are locked (inside `by_key`), more events
    to lock; out of order, so with NOWAIT: held by another transaction, `Contended`.

    Stages, each set-based (one statement per table, whatever the batch holds): lock the
    events the acks name, tracking those the acks overtook; read their expected acks;
    judge each record; find which are new to the ledger; fold the new acks into their
    expected rows and store them; derive the events' new states, each statement planned
    as a probe per key (`by_key`); insert the new ledger rows and store the new states,
    linked to the batch's audit entries by a token (`audit.draw_link`). Only then is the
    audit chain locked, for the entries alone (docs/tracking.md, "Ack ledger").
    """
    outcome = LedgerOutcome(records=len(records))
    event_ids = _events_named(records)
    # Every statement is keyed by the batch's events or records, but tracking overtaken
    # events: one `by_key` block for the batch (its settings cost three statements)
    # unless some event has to be tracked first.
    async with by_key(conn):
        if also_lock:
            locked = await lock_events(conn, sorted_ids({*event_ids, *also_lock}))
            events = {e: locked[e] for e in event_ids if e in locked}
        else:
            locked = events = await lock_events(conn, event_ids)
        if len(events) == len(event_ids):
            await _lock_more(conn, locked.keys(), then_lock)
            return await _apply_locked(conn, records, events, now, outcome)
    if not track_missing:
        raise Overtaken
    # Events nobody tracked yet: their ack overtook the tracking pass, and
    # `track_overtaken` did not see them. Tracked through the outbox's batch index, then
    # locked in turn (re-read even if we tracked none: another tracker may just have).
    # Tracking took the chain's lock: NOWAIT, never a wait after it (`Contended`).
    missing = [e for e in event_ids if e not in events]
    await track_events(
        conn,
        missing,
        declared=declared,
        now=now,
        reminder_interval=reminder_interval,
        deadlines=deadlines,
    )
    async with by_key(conn):
        tracked = await lock_events(conn, missing, nowait=True)
        events |= tracked
        await _lock_more(conn, locked.keys() | tracked.keys(), then_lock)
        return await _apply_locked(conn, records, events, now, outcome)


async def _lock_more(
    conn: AsyncConnection,
    locked: Collection[uuid.UUID],
    then_lock: Callable[[AsyncConnection], Awaitable[Sequence[uuid.UUID]]] | None,
) -> None:
    """`apply_acks`' `then_lock`, once every event of the batch is locked."""
    if then_lock is not None and (more := [e for e in await then_lock(conn) if e not in locked]):
        await lock_events(conn, sorted_ids(more), nowait=True)


async def _apply_locked(
    conn: AsyncConnection,
    records: Sequence[ConsumedAck],
    events: dict[uuid.UUID, EventRow],
    now: datetime,
    outcome: LedgerOutcome,
) -> LedgerOutcome:
    """`apply_acks` once the events are locked, inside its `by_key` block."""
    expected = await _expected_of(conn, events)
    accepted_rows, rejected_rows = _judge(records, events, expected, now, outcome)
    fresh = await _new_to_ledger(conn, accepted_rows, rejected_rows, outcome)
    changed = await _fold(conn, fresh, expected, outcome)
    # Each changed row's event once, by its int (`_distinct_sorted`).
    touched = _distinct_sorted(row[0] for row in changed.values())
    transitions = compute_transitions(events, expected, touched)
    entries = _audit_entries(outcome, transitions)
    await _record_and_audit(conn, accepted_rows, rejected_rows, entries, transitions, now)
    _count_outcomes(outcome, events, transitions)
    return outcome


async def track_overtaken(
    conn: AsyncConnection,
    records: Sequence[ConsumedAck],
    *,
    declared: Declared,
    now: datetime,
    reminder_interval: timedelta,
    deadlines: Deadlines | None = None,
) -> int:
    """Track the events of acks that overtook the tracking pass; return how many.

    Run in a transaction of its own before the batch's: tracking takes the audit chain's
    lock (its status rows carry the events_tracked entry's seq), which the batch would
    otherwise hold from its start to its commit. A tracked event stays tracked whatever
    becomes of the batch; the pass would have tracked it anyway."""
    event_ids = _events_named(records)
    if not event_ids:
        return 0
    async with by_key(conn):
        known = set(
            await conn.scalars(
                select(event_status.c.event_id).where(
                    event_status.c.event_id == any_(event_ids_param(event_ids))
                )
            )
        )
    missing = [e for e in event_ids if e not in known]
    tracked = await track_events(
        conn,
        missing,
        declared=declared,
        now=now,
        reminder_interval=reminder_interval,
        deadlines=deadlines,
    )
    return len(tracked)


def _events_named(records: Sequence[ConsumedAck]) -> list[uuid.UUID]:
    """The events to lock (and track, if untracked) for `records`: those of acks not
    refused already. A refused one (bad signature, undeclared service) is rejected
    whatever its event, so it neither waits for an event's lock nor has one tracked
    (anyone can write the acks topic)."""
    return _distinct_sorted(
        r.ack.event_id for r in records if r.ack is not None and r.refused is None
    )


def _distinct_sorted(ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """`sorted_ids(set(ids))`, de-duplicated by the ids' ints (a UUID's hash is Python
    code, called once per id of a set)."""
    by_int = {event_id.int: event_id for event_id in ids}
    return [by_int[n] for n in sorted(by_int)]


async def _expected_of(conn: AsyncConnection, events: dict[uuid.UUID, EventRow]) -> Expected:
    return await expected_rows(conn, list(events))


async def expected_rows(conn: AsyncConnection, event_ids: Sequence[uuid.UUID]) -> Expected:
    """The expected rows of `event_ids`, as `compute_transitions` reads them: only what
    folding an ack and judging the event read or write (each column more is decoded and
    copied for every expected row of the batch's events); keyed by `ExpectedKey`."""
    result = await conn.execute(_EXPECTED, {"event_ids": list(event_ids)})
    # By index (`_KEY` leads the select): a Row's attribute costs ~0.3 µs, an index ~0.03.
    return {(row[0].int, row[1]): list(row) for row in result}


# The ack path's statements are built once and their values bound when they run
# (`columns.unnest_slot`): bound into a statement, a batch's ids and rows lived until
# the cyclic collector freed the statement.
_EXPECTED = select(*(expected_acks.c[name] for name in EXPECTED_COLUMNS)).where(
    expected_acks.c.event_id == any_(event_ids_slot())
)


def _judge(
    records: Sequence[ConsumedAck],
    events: dict[uuid.UUID, EventRow],
    expected: Expected,
    now: datetime,
    outcome: LedgerOutcome,
) -> tuple[list[_Judged], list[_Judged]]:
    """The accepted and the rejected records, each with its ledger row."""
    accepted: list[_Judged] = []
    rejected: list[_Judged] = []
    # Once per event, not per ack: a Row's attribute costs ~0.3 µs (its class's MRO is
    # searched before Row.__getattr__), an index ~0.03. A pseudonymised event's id is None,
    # which no ack's equals (`_reject_reason`).
    entities = {
        event_id.int: (row.entity_type, None if row.pseudonymised_at else row.entity_id)
        for event_id, row in events.items()
    }
    # The rows name a known event by its id as asyncpg read it (`lock_events`): asyncpg
    # encodes its own UUID by copying 16 bytes, a decoded ack's stdlib one through the
    # Python property `bytes`. The same value: only the object differs.
    ids = {event_id.int: event_id for event_id in events}
    event_at = LedgerEventMs(now)
    for record in records:
        reason = _reject_reason(record, entities, expected)
        row = ledger_row(record, now, reason, event_at=event_at, ids=ids)
        if reason is None:
            accepted.append((record, row))
        else:
            rejected.append((record, row))
            outcome.rejected.append((record, reason))
    return accepted, rejected


async def _new_to_ledger(
    conn: AsyncConnection,
    accepted: list[_Judged],
    rejected: list[_Judged],
    outcome: LedgerOutcome,
) -> list[ConsumedAck]:
    """Keep, in `accepted` and `rejected`, only the records the ledger has not got yet;
    return the accepted ones.

    A record is old if its Kafka coordinates are recorded (a redelivery), an accepted one
    also if the same ack (event, service, attempt, status) was accepted before (a re-send),
    in an earlier batch or earlier in this one. The answer holds until the insert: every
    accepted ack's event is locked by this transaction; `_insert_new` checks it anyway.
    """
    if not accepted and not rejected:
        return []  # a batch of verify answers only (recorded by `apply_answers`)
    where = [(r.topic, r.partition, r.offset) for r, _ in accepted + rejected]
    # The rows' ids: every accepted ack's event is locked, its id asyncpg's (`_judge`).
    event_ids = _distinct_sorted(row[_L_EVENT] for _, row in accepted)
    months = [row[_L_EVENT_MS] for _, row in accepted + rejected]
    recorded, acks = await _recorded(conn, where, (min(months), max(months)), event_ids)
    new_accepted: list[_Judged] = []
    for (record, row), at in zip(accepted, where, strict=False):
        ack_key = _ack_key(row)
        if at not in recorded and ack_key not in acks:
            new_accepted.append((record, row))
            recorded.add(at)
            acks.add(ack_key)
    new_rejected: list[_Judged] = []
    for (record, row), at in zip(rejected, where[len(accepted) :], strict=True):
        if at not in recorded:
            new_rejected.append((record, row))
            recorded.add(at)
    outcome.duplicates = len(accepted) - len(new_accepted)
    if len(new_rejected) < len(rejected):
        # A redelivered rejected record was already recorded (and audited) the first time.
        kept = {_where(record) for record, _ in new_rejected}
        outcome.rejected = [(r, why) for r, why in outcome.rejected if _where(r) in kept]
    accepted[:] = new_accepted
    rejected[:] = new_rejected
    return [record for record, _ in new_accepted]


async def _recorded(
    conn: AsyncConnection,
    where: list[_Where],
    event_ms: tuple[int, int],
    event_ids: list[uuid.UUID],
) -> tuple[set[_Where], set[_AckKey]]:
    """The Kafka coordinates among `where` already in the ledger, and the acks already
    accepted for `event_ids`: the ledger's two unique keys.

    The coordinates are asked for as one offset range per topic partition (a batch's
    records of a partition are consecutive but for gaps), one index range scan each
    rather than a probe per record; what the ranges hold beyond `where` is dropped.

    Both read only the ledger's months the batch's rows can be in, not every month kept
    (`event_ms`: the least and greatest of the rows'): a row's `event_at` derives from
    its record (`ledger_event_at`), so a redelivered record or a re-sent ack was stored
    in the same month as its row now, or at `EPOCH` (its id minted after it arrived then:
    made up, or a coordinator clock ahead of this one's), or with NULL (a ledger not
    converted yet, migration 0025)."""
    ranges: dict[tuple[str, int], tuple[int, int]] = {}
    for topic, partition, offset in where:
        low, high = ranges.get((topic, partition), (offset, offset))
        ranges[(topic, partition)] = (min(low, offset), max(high, offset))
    spans = unnest_values(
        "spans",
        _SPAN_TYPES,
        [
            {"topic": t, "partition": p, "low": low, "high": high}
            for (t, p), (low, high) in ranges.items()
        ],
    )
    wanted = set(where)
    low, high = event_ms
    recorded = {
        found
        for row in await conn.execute(
            _RECORDED_AT, {**spans, "low_at": _at(low), "high_at": _at(high)}
        )
        if (found := (row[0], row[1], row[2])) in wanted
    }
    acks: set[_AckKey] = set()
    if event_ids:
        acks = {
            (row[0].int, row[1], row[2], row[3])
            for row in await conn.execute(
                _ACCEPTED_OF, {"event_ids": event_ids, "low_at": _at(low), "high_at": _at(high)}
            )
        }
    return recorded, acks


def _at(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


_SPAN_TYPES = {
    "topic": ack_ledger.c.kafka_topic.type,
    "partition": ack_ledger.c.kafka_partition.type,
    "low": ack_ledger.c.kafka_offset.type,
    "high": ack_ledger.c.kafka_offset.type,
}
_SPANS = unnest_slot("spans", _SPAN_TYPES)
# A literal, not a bound value: the shared statements bind every value when they run.
_EPOCH_SQL = literal_column("TIMESTAMPTZ 'epoch'", DateTime(timezone=True))
_SECOND = literal_column("INTERVAL '1 second'", Interval())
_US_PER_SECOND = literal_column("1000000", BigInteger())
_MICROSECOND = literal_column("INTERVAL '1 microsecond'", Interval())
_MICROSECOND_DELTA = timedelta(microseconds=1)


def _from_us(us: Any) -> Any:
    """The timestamptz `us` Unix microseconds stand for (NULL for NULL), exactly for any
    time the wire accepts. The ack path sends its ack times so, each `(at - EPOCH) //
    _MICROSECOND_DELTA`: asyncpg encodes an aware datetime through comparisons with its
    infinities that ask the datetime's `tzinfo` for its offset, a bigint without any.

    PostgreSQL multiplies an interval through float8: `us` microseconds at once would be
    rounded past 2**53 (the year 2255), whole seconds stay exact for ±18,000 years. So
    the seconds and the rest apart (both truncated toward zero, so they sum to `us`)."""
    return _EPOCH_SQL + (us // _US_PER_SECOND) * _SECOND + (us % _US_PER_SECOND) * _MICROSECOND


_IN_MONTHS = or_(
    ack_ledger.c.event_at.between(
        bindparam("low_at", type_=ack_ledger.c.event_at.type),
        bindparam("high_at", type_=ack_ledger.c.event_at.type),
    ),
    ack_ledger.c.event_at == _EPOCH_SQL,
    ack_ledger.c.event_at.is_(None),
)
"""The months a batch's rows can be in (`_recorded`): the partitions the two reads visit."""
_RECORDED_AT = (
    select(ack_ledger.c.kafka_topic, ack_ledger.c.kafka_partition, ack_ledger.c.kafka_offset)
    .join(
        _SPANS,
        (ack_ledger.c.kafka_topic == _SPANS.c.topic)
        & (ack_ledger.c.kafka_partition == _SPANS.c.partition)
        & ack_ledger.c.kafka_offset.between(_SPANS.c.low, _SPANS.c.high),
    )
    .where(_IN_MONTHS)
)
_ACCEPTED_OF = select(
    ack_ledger.c.event_id, ack_ledger.c.service, ack_ledger.c.attempt, ack_ledger.c.status
).where(ack_ledger.c.accepted, ack_ledger.c.event_id == any_(event_ids_slot()), _IN_MONTHS)


def _ack_key(row: LedgerRow) -> _AckKey:
    # The id's int: hashing a UUID is Python code (`UUID.__hash__`), an int's is not.
    return (row[_L_EVENT].int, row[_L_SERVICE], row[_L_ATTEMPT], row[_L_STATUS])


async def _record_and_audit(
    conn: AsyncConnection,
    accepted: list[_Judged],
    rejected: list[_Judged],
    entries: list[audit.AuditEntry],
    transitions: list[Transition],
    now: datetime,
) -> None:
    """The batch's last statements: the ledger rows and the new states, then, with the
    audit chain locked until the commit, the entries recording them.

    Rows and states name their entries by a link token drawn first (`audit.draw_link`,
    migration 0031) and stored with the entries, not by seq: a seq is decided only with
    the lock held, which made every write carrying one wait for the other replicas'
    batches (docs/tracking.md, "The ack batch's link to its audit entries"). Ledger rows
    of accepted acks name `acks_accepted`, of rejected records `acks_rejected`, completed
    events `events_completed`, each with the batch's link."""
    if not entries:
        return  # every record was a redelivery: nothing to record, nothing changed
    # Built by `_audit_entries` from ids as text, names, statuses and counts only.
    prepared = audit.prepare(entries, at=now, json_native=True)
    link = await audit.draw_link(conn)
    rows = [row for _, row in accepted] + [row for _, row in rejected]
    await _insert_new(conn, rows, link=link, received_at=now)
    await write_transitions(conn, transitions, completed_link=link, now=now)
    await audit.append_onto(conn, await audit.lock_head(conn), prepared, link=link)


async def _fold(
    conn: AsyncConnection,
    fresh: list[ConsumedAck],
    expected: Expected,
    outcome: LedgerOutcome,
) -> Expected:
    """Fold the new acks into their expected rows, oldest first; store the changed rows
    in one UPDATE."""
    changed: Expected = {}
    changes: dict[ExpectedKey, _Change] = {}
    for ack in sorted((r.ack for r in fresh if r.ack is not None), key=_order):
        key = (ack.event_id.int, ack.service)
        change = changes.get(key)
        if change is None:
            change = changes[key] = _Change()
            row = changed[key] = expected[key]
        else:
            row = changed[key]
        _apply(row, change, ack)
        outcome.accepted.append(ack)
    if changed:
        await conn.execute(
            _UPDATE_EXPECTED,
            {"new_rows": [_change_row(changed[key], change) for key, change in changes.items()]},
        )
    return changed


def _change_set(new: Any) -> dict[str, Any]:
    """The update's SET from a `_CHANGE_COLUMNS` relation: what an ack only writes or adds
    to is combined with the stored row in SQL, where the ack path no longer reads it."""
    e = expected_acks.c
    return {
        "status": new.status,
        "attempt": new.attempt,
        "acknowledged_at": _from_us(new.acknowledged_us),
        "records_affected": case(
            (new.detail.is_(None), e.records_affected), else_=new.records_affected
        ),
        "detail": func.coalesce(new.detail, e.detail),
        # LEAST ignores NULLs: a row's first ack sets it.
        "first_ack_at": func.least(
            e.first_ack_at, _from_us(func.coalesce(new.first_ack_us, new.acknowledged_us))
        ),
        "acks_received": e.acks_received + new.acks_received,
    }


_NEW = unnest_rows(
    "new",
    "retention_ack_change_us",
    {n: BigInteger() if n in _AS_INTEGERS else expected_acks.c[n].type for n in _CHANGE_COLUMNS},
)
_UPDATE_EXPECTED = (
    update(expected_acks)
    .where(expected_acks.c.event_id == _NEW.c.event_id, expected_acks.c.service == _NEW.c.service)
    .values(_change_set(_NEW.c))
)


@dataclass(slots=True)
class _Change:
    """What a batch's new acks did to one expected row besides its folded columns."""

    acks: int = 0
    first: datetime | None = None
    replaced: RetentionAck | None = None
    """The last ack that replaced the row's status, if any did."""


def _change_row(row: ExpectedRow, change: _Change) -> tuple[Any, ...]:
    """`row` and `change` as a `retention_ack_change_us`, in `_CHANGE_COLUMNS`' order."""
    acked = row[_E_ACKED]
    replaced = change.replaced
    first = change.first
    return (
        row[0],
        row[1],
        row[_E_STATUS],
        None if replaced is None else replaced.records_affected,
        row[_E_ATTEMPT],
        None if replaced is None else replaced.detail[:_DETAIL_CHARS],
        # A settled row no ack replaced may have none (a waiver sets no ack time).
        None if acked is None else (acked - EPOCH) // _MICROSECOND_DELTA,
        None if first is None or first == acked else (first - EPOCH) // _MICROSECOND_DELTA,
        change.acks,
    )


def _count_outcomes(
    outcome: LedgerOutcome, events: dict[uuid.UUID, EventRow], transitions: list[Transition]
) -> None:
    for t in transitions:
        if t.state == "completed" and t.completed_at is not None:
            event = events[t.event_id]
            seconds = (t.completed_at - event.published_at).total_seconds()
            outcome.completed.append((event.policy, max(seconds, 0.0)))
        elif t.state == "failed":
            outcome.failed += 1


_Where = tuple[str, int, int]
_AckKey = tuple[int, str, int, str]
"""An accepted ack's key: (event id as an int, service, attempt, status)."""
_Judged = tuple[ConsumedAck, LedgerRow]


async def write_transitions(
    conn: AsyncConnection,
    transitions: Sequence[Transition],
    *,
    completed_seq: int | None = None,
    completed_link: int | None = None,
    now: datetime,
) -> None:
    """Store new event states; the audit entry recording completions is `completed_seq`,
    or the `events_completed` entry carrying `completed_link` (`audit.draw_link`)."""
    if not transitions:
        return
    states = unnest_values(
        "states",
        _STATE_TYPES,
        [
            {
                "event_id": t.event_id,
                "state": t.state,
                "expected": t.expected,
                "completed_at": t.completed_at,
                "completed_audit_seq": completed_seq if t.state == "completed" else None,
                "completed_audit_link": completed_link if t.state == "completed" else None,
            }
            for t in transitions
        ],
    )
    await conn.execute(_UPDATE_STATES, {**states, "now": now})


_STATE_TYPES = {
    name: event_status.c[name].type
    for name in (
        "event_id",
        "state",
        "expected",
        "completed_at",
        "completed_audit_seq",
        "completed_audit_link",
    )
}
_STATES = unnest_slot("states", _STATE_TYPES)
_UPDATE_STATES = (
    update(event_status)
    .where(event_status.c.event_id == _STATES.c.event_id)
    .values(
        state=_STATES.c.state,
        expected=_STATES.c.expected,
        completed_at=_STATES.c.completed_at,
        completed_audit_seq=_STATES.c.completed_audit_seq,
        completed_audit_link=_STATES.c.completed_audit_link,
        updated_at=bindparam("now", type_=event_status.c.updated_at.type),
    )
)


class EventRow(NamedTuple):
    """What the ack path reads of an event's status row: a NamedTuple's attribute costs a
    tenth of a SQLAlchemy Row's, and the columns left out are not decoded."""

    event_id: uuid.UUID
    policy: str
    entity_type: str
    entity_id: str
    published_at: datetime
    state: str
    expected: int
    completed_at: datetime | None
    pseudonymised_at: datetime | None
    """Set once `entity_id` is its HMAC: acks to it are refused `evidence_expired`."""


async def lock_events(
    conn: AsyncConnection, event_ids: Sequence[uuid.UUID], *, nowait: bool = False
) -> dict[uuid.UUID, EventRow]:
    """The status rows of `event_ids` that exist, locked in a fixed order (the events' ids)
    so that ack batches, waivers, reminder and deadline passes never interleave.

    `nowait`: for locks taken out of that order; one held elsewhere raises `Contended`
    at once rather than wait (a wait out of order can close a deadlock)."""
    try:
        rows = await conn.execute(_LOCK[nowait], {"event_ids": list(event_ids)})
    except DBAPIError as exc:
        if nowait and getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            raise Contended(event_ids) from exc
        raise
    return {row[0]: EventRow(*row) for row in rows}


_LOCK_NOT_AVAILABLE = "55P03"
_LOCK = {
    nowait: select(*(event_status.c[name] for name in EventRow._fields))
    .where(event_status.c.event_id == any_(event_ids_slot()))
    .order_by(event_status.c.event_id)
    .with_for_update(nowait=nowait)
    for nowait in (False, True)
}


def sorted_ids(ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """`sorted(ids)`, the same order: by their int, compared in C, where `UUID.__lt__` is
    Python code called n log n times."""
    return sorted(ids, key=_UUID_INT)


_UUID_INT = operator.attrgetter("int")


def _where(record: ConsumedAck) -> _Where:
    return (record.topic, record.partition, record.offset)


def _order(ack: RetentionAck) -> tuple[datetime, int]:
    return (ack.acknowledged_at, ack.attempt)


def _reject_reason(
    record: ConsumedAck,
    entities: dict[int, tuple[str, str | None]],
    expected: Expected,
) -> RejectReason | None:
    """Why the record is refused, if it is; `entities`: each known event's entity, by
    the event id's int, its id None once pseudonymised."""
    ack = record.ack
    if ack is None:
        return RejectReason.MALFORMED
    if record.refused is not None:
        return record.refused
    event = ack.event_id.int
    entity = entities.get(event)
    if entity is None:
        return RejectReason.UNKNOWN_EVENT
    if (ack.entity_type, ack.entity_id) != entity:
        # Checked only on a mismatch: an accepted ack pays nothing for it.
        if entity[1] is None:
            return RejectReason.EVIDENCE_EXPIRED
        return RejectReason.ENTITY_MISMATCH
    if (event, ack.service) not in expected:
        return RejectReason.UNEXPECTED_SERVICE
    if ack.status in VERIFY_STATUSES:
        return RejectReason.UNEXPECTED_STATUS
    return None


def ledger_row(
    record: ConsumedAck,
    now: datetime,
    reason: RejectReason | None,
    *,
    event_at: Callable[[uuid.UUID | None], int] | None = None,
    ids: Mapping[int, uuid.UUID] | None = None,
) -> LedgerRow:
    """The record's row, `_PER_ROW`'s values in order; received at `now`. `event_at`:
    a `LedgerEventMs(now)` shared by a batch's rows; `ids`: event ids by their int, to
    name the event by instead of the ack's equal one."""
    if event_at is None:
        event_at = LedgerEventMs(now)
    ack = record.ack
    if ack is None:
        return (
            record.topic,
            record.partition,
            record.offset,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            (record.poison or "")[:_DETAIL_CHARS],
            None,
            reason is None,
            None if reason is None else reason.value,
            record.key_id,
            event_at(None),
        )
    event_id = ack.event_id if ids is None else ids.get(ack.event_id.int, ack.event_id)
    return (
        record.topic,
        record.partition,
        record.offset,
        event_id,
        ack.service,
        ack.entity_type,
        None if reason in _NO_ENTITY_ID else ack.entity_id,
        STATUS_TEXT[ack.status],
        ack.records_affected,
        ack.attempt,
        ack.detail[:_DETAIL_CHARS],
        (ack.acknowledged_at - EPOCH) // _MICROSECOND_DELTA,
        reason is None,
        None if reason is None else reason.value,
        record.key_id,
        # The partition key both unique keys hold (coordinator/store/tables.py).
        event_at(event_id),
    )


def audited_rejects(rejected: Sequence[tuple[ConsumedAck, RejectReason]]) -> list[dict[str, Any]]:
    """Rejected acks as the audit log records them: where each was read, why it was
    refused, and which event and service it named."""
    event_ids = audit.id_texts([r.ack.event_id if r.ack else None for r, _ in rejected])
    return [
        {
            "partition": r.partition,
            "offset": r.offset,
            "reason": why.value,
            "event_id": event_id,
            "service": r.ack.service if r.ack else None,
        }
        for (r, why), event_id in zip(rejected, event_ids, strict=True)
    ]


async def insert_ledger(
    conn: AsyncConnection, rows: list[LedgerRow], *, audit_seq: int, received_at: datetime
) -> set[_Where]:
    """Insert what is new; return which records were (as topic, partition, offset).

    Verify answers (coordinator/copies/verification/answers.py) go in through here too,
    so one de-duplication rule holds for every ledger row."""
    if not rows:
        return set()
    result = await conn.execute(_INSERT_SEQ, _ledger_values(rows, audit_seq, received_at))
    return {(row.kafka_topic, row.kafka_partition, row.kafka_offset) for row in result}


def _ledger_insert(column: str) -> Any:
    """The rows' insert, from one array of rows (`retention_ack_row_us`, migration
    0034). The rows were received at one time, bound once (a timestamp is the dearest
    value asyncpg encodes, ~0.5 µs); each row's `event_at` travels as milliseconds, its
    `acknowledged_at` as microseconds.
    `column`: the one naming the rows' audit entry (`audit_seq` or `audit_link`), bound
    with the rows (`_ledger_values`)."""
    c = ack_ledger.c
    consumed = unnest_rows(
        "consumed",
        "retention_ack_row_us",
        {name: BigInteger() if name in _AS_INTEGERS else c[name].type for name in _PER_ROW},
    )
    return pg_insert(ack_ledger).from_select(
        [*_STORED, "acknowledged_at", "event_at", "received_at", column],
        select(
            *(consumed.c[name] for name in _STORED),
            _from_us(consumed.c.acknowledged_us),
            # Exact: a product below 2**53 µs (any time before the year 2255;
            # `LedgerEventMs` never sends one after the batch arrived) is a whole number in
            # float8, and an interval of microseconds only is added to a timestamptz
            # without the session's time zone.
            _EPOCH_SQL + consumed.c.event_ms * _MILLISECOND,
            bindparam("received", type_=c.received_at.type),
            bindparam("audit", type_=BigInteger()),
        ),
    )


def _ledger_values(rows: list[LedgerRow], audit: int, received_at: datetime) -> dict[str, Any]:
    return {"consumed_rows": rows, "received": received_at, "audit": audit}


_MILLISECOND = literal_column("INTERVAL '1 millisecond'", Interval())
_INSERT_LINKED = _ledger_insert("audit_link")
_INSERT_SEQ = (
    _ledger_insert("audit_seq")
    .on_conflict_do_nothing()
    .returning(ack_ledger.c.kafka_topic, ack_ledger.c.kafka_partition, ack_ledger.c.kafka_offset)
)


async def _insert_new(
    conn: AsyncConnection, rows: list[LedgerRow], *, link: int, received_at: datetime
) -> None:
    """Insert rows `_new_to_ledger` found new. Should one have been recorded meanwhile
    (a rebalance handed its partition to another replica), the unique keys fail the
    insert: the batch is rolled back and read again, rather than audited as new.

    A plain insert, no ON CONFLICT: checking both unique keys ahead of each row
    (speculative insertion) made it about half as slow again, for conflicts the lookup
    just ruled out."""
    if rows:
        await conn.execute(_INSERT_LINKED, _ledger_values(rows, link, received_at))


_FAILED = AckStatus.FAILED.value
STATUS_TEXT: dict[AckStatus, str] = {status: status.value for status in AckStatus}
"""`status.value` by lookup: the enum's `.value` is a Python property (~85 ns against
~15), read a few times per ack."""


def _apply(row: ExpectedRow, change: _Change, ack: RetentionAck) -> None:
    """Fold one new ack into its service's row. Success sticks: a later failure (say, of a
    reminder re-delivery) cannot undo a deletion that was reported done."""
    change.acks += 1
    if change.first is None or ack.acknowledged_at < change.first:
        change.first = ack.acknowledged_at
    status = row[_E_STATUS]
    if status in SETTLED or status == STILL_PRESENT:
        return
    if (
        status == _FAILED
        and ack.status is AckStatus.FAILED
        and (row[_E_ACKED], row[_E_ATTEMPT]) > _order(ack)
    ):
        return
    row[_E_STATUS] = STATUS_TEXT[ack.status]
    row[_E_ATTEMPT] = ack.attempt
    row[_E_ACKED] = ack.acknowledged_at
    change.replaced = ack


@dataclass(frozen=True, slots=True)
class Transition:
    event_id: uuid.UUID
    state: str
    expected: int
    completed_at: datetime | None


def compute_transitions(
    events: dict[uuid.UUID, EventRow],
    expected: Expected,
    touched: Collection[uuid.UUID],
) -> list[Transition]:
    """The touched events' new states; `expected` holds every expected row of each (laid
    out as `EXPECTED_COLUMNS`, from `expected_rows`)."""
    by_event: dict[int, list[ExpectedRow]] = {e.int: [] for e in touched}
    for (event_int, _), row in expected.items():
        found = by_event.get(event_int)
        if found is not None:
            found.append(row)
    out = []
    for event_id in sorted_ids(touched):
        event, rows = events[event_id], by_event[event_id.int]
        completed_at = None
        unsettled = [r for r in rows if r[_E_STATUS] not in SETTLED]
        if unsettled and all(r[_E_STATUS] == STILL_PRESENT for r in unsettled):
            # Done everywhere but found back somewhere: never completed while a service
            # is still open (that keeps its own state, reminders and escalation).
            state = "resurrected"
            completed_at = event.completed_at or max(
                (r[_E_ACKED] for r in rows if r[_E_ACKED] is not None),
                default=None,
            )
        elif rows and all(r[_E_STATUS] in SETTLED for r in rows):
            state = "completed"
            completed_at = max(r[_E_ACKED] for r in rows)
        elif rows and all(r[_E_STATUS] in SETTLED or r[_E_STATUS] == HELD for r in rows):
            # Only held services are left: not late, not done, until the hold's release
            # re-publishes the event (tracking/released.py).
            state = HELD
        elif event.state == "overdue":
            state = "overdue"
        elif any(r[_E_STATUS] == _FAILED for r in rows):
            state = "failed"
        else:
            state = "pending"
        if state != event.state or len(rows) != event.expected:
            out.append(Transition(event_id, state, len(rows), completed_at))
    return out


def _audit_entries(outcome: LedgerOutcome, transitions: list[Transition]) -> list[audit.AuditEntry]:
    entries = []
    if outcome.accepted:
        entries.append(
            audit.AuditEntry(
                audit.AuditAction.ACKS_ACCEPTED,
                ACTOR,
                {
                    "acks": [
                        {
                            "event_id": event_id,
                            "service": a.service,
                            "status": STATUS_TEXT[a.status],
                            "attempt": a.attempt,
                            "records_affected": a.records_affected,
                        }
                        for a, event_id in zip(
                            outcome.accepted,
                            audit.id_texts([a.event_id for a in outcome.accepted]),
                            strict=True,
                        )
                    ]
                },
            )
        )
    if outcome.rejected:
        entries.append(
            audit.AuditEntry(
                audit.AuditAction.ACKS_REJECTED,
                ACTOR,
                {"acks": audited_rejects(outcome.rejected)},
            )
        )
    for state in ("completed", "failed"):
        ids = [t.event_id for t in transitions if t.state == state]
        if ids:
            entries.append(
                audit.AuditEntry(
                    audit.AuditAction(f"events_{state}"), ACTOR, {"events": audit.id_texts(ids)}
                )
            )
    return entries
