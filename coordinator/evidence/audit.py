"""The tamper-evident audit log: an append-only hash chain in one table.

Each row's `hash` is sha256(previous row's hash ‖ canonical JSON of the row's content).
Editing, deleting or reordering any row breaks every later link, and `verify` names the
first row where the chain no longer holds. Rows carry ids only, never personal data.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import msgspec
from sqlalchemy import Text, bindparam, cast, func, insert, literal, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.store.tables import audit_link_seq, audit_log

__all__ = [
    "GENESIS",
    "AuditAction",
    "AuditEntry",
    "AuditRef",
    "BrokenLink",
    "Prepared",
    "append",
    "append_onto",
    "append_prepared",
    "append_refs",
    "broken_link",
    "canonical",
    "chain_rows",
    "chained",
    "draw_link",
    "id_texts",
    "link",
    "lock_head",
    "prepare",
    "row_values",
    "try_lock_head",
    "verify",
]

GENESIS = "0" * 64
"""The `prev_hash` of the first row."""

# Appends serialize on this transaction-scoped advisory lock so that two writers can
# never chain onto the same predecessor. The number is arbitrary but fixed.
_CHAIN_LOCK = 0x72657461


class AuditAction(StrEnum):
    """Every action the coordinator writes to the chain. The values are stored and hashed:
    an existing one never changes (new ones take a `snake_case` verb phrase)."""

    RUN_START = "run.start"
    RUN_FINISH = "run.finish"
    PURGE_BATCH = "purge.batch"
    HOLD_CREATE = "hold.create"
    HOLD_RELEASE = "hold.release"
    HOLDS_NORMALISED = "holds_normalised"
    EVENTS_PUBLISHED = "events_published"
    EVENTS_TRACKED = "events_tracked"
    ACKS_ACCEPTED = "acks_accepted"
    ACKS_REJECTED = "acks_rejected"
    EVENTS_COMPLETED = "events_completed"
    EVENTS_FAILED = "events_failed"
    REMINDERS_SENT = "reminders_sent"
    EVENTS_OVERDUE = "events_overdue"
    HELD_EVENTS_REPUBLISHED = "held_events_republished"
    ERASURE_CREATE = "erasure.create"
    ERASURE_EXTEND = "erasure.extend"
    ERASURE_REJECT = "erasure.reject"
    ERASURE_EXECUTE = "erasure.execute"
    ERASURE_COMPLETE = "erasure.complete"
    ERASURE_HELD_DOWNSTREAM = "erasure.held_downstream"
    DB_PRUNE = "db.prune"
    DATA_KEY_DESTROYED = "data_key.destroyed"
    EVENTS_REPUBLISHED = "events_republished"
    DLQ_REDRIVEN = "dlq_redriven"
    SERVICE_BACKFILLED = "service_backfilled"
    VERIFY_REQUEST = "verify.request"
    VERIFY_ANSWERS = "verify.answers"
    ENTITY_RESURRECTED = "entity.resurrected"
    ENTITY_DELETED_AGAIN = "entity.deleted_again"
    DATA_KEY_DESTROYING = "data_key.destroying"
    VAULT_RESTORE = "vault.restore"
    ARCHIVE_ENCRYPTED = "archive.encrypted"
    ACK_WAIVED = "ack_waived"
    SERVICE_RETIRED = "service_retired"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One thing the coordinator did."""

    action: AuditAction
    """Read back from the chain, the stored text (an action of an older version stays
    verifiable)."""
    actor: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AuditRef:
    """Where an entry landed in the chain: what evidence (a certificate) points at."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class BrokenLink:
    seq: int
    reason: str


def canonical(seq: int, at: datetime, entry: AuditEntry) -> bytes:
    """The bytes a row's hash covers: sorted keys, no whitespace, UTC timestamps."""
    document = {
        "seq": seq,
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "action": entry.action,
        "actor": entry.actor,
        "data": entry.data,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), default=str).encode()


_IDS = msgspec.json.Encoder()
_ID_TEXTS = msgspec.json.Decoder(list[str | None])


def id_texts(ids: Sequence[uuid.UUID | None]) -> list[str | None]:
    """`str(id)` of each id (None stays None), as `prepare` would store it, in one call
    into C: an ack batch's entries name a few thousand ids, and `str` on a UUID is
    Python code (about half a microsecond each, ~1.7 through `json.dumps`' default)."""
    return _ID_TEXTS.decode(_IDS.encode(ids))


def link(prev_hash: str, body: bytes) -> str:
    """A row's hash from its predecessor's and its canonical bytes."""
    return hashlib.sha256(prev_hash.encode() + body).hexdigest()


async def append(
    conn: AsyncConnection, entries: Sequence[AuditEntry], *, at: datetime
) -> list[str]:
    """Append `entries` in order inside the caller's transaction; return their hashes.

    Call it in the same transaction as the change it records, so the log and the data
    can never disagree.
    """
    return [ref.hash for ref in await append_refs(conn, entries, at=at)]


async def append_refs(
    conn: AsyncConnection, entries: Sequence[AuditEntry], *, at: datetime
) -> list[AuditRef]:
    """Like `append`, returning each entry's sequence number with its hash."""
    return await append_prepared(conn, prepare(entries, at=at))


@dataclass(frozen=True, slots=True)
class Prepared:
    """An entry serialized up to its seq, the one thing only the chain's head decides."""

    entry: AuditEntry
    """With its data as stored, so what is stored is exactly what was hashed: round-tripped
    through JSON, or as built when the caller's data is JSON-native already
    (`json_native`)."""
    at: datetime
    head: bytes
    """`canonical(seq, at, entry)` up to the seq's digits: "seq" is its last key."""
    data_json: str
    """The data as `canonical` serializes it inside `head`: the text stored, so the data
    is serialized once (it was again for the insert, with the chain locked)."""


def prepare(
    entries: Sequence[AuditEntry], *, at: datetime, json_native: bool = False
) -> list[Prepared]:
    """Serialize `entries` before taking the chain lock, so that holding it costs only
    the hashes and the insert (a writer holds it until its commit).

    `json_native`: the caller vouches that the data holds only str keys, str, int, bool,
    None, lists and dicts, so it is stored as it is, without the JSON round trip that
    turns ids and timestamps into text (an ack batch's entry names thousands of acks;
    the round trip cost ~1.8 µs each). A value of any other type then fails the insert
    rather than being stored unlike it was hashed; a non-str key would not, hence the
    vouching. Such data is serialized by msgspec when that gives `canonical`'s bytes."""
    prepared = []
    for entry in entries:
        if json_native:
            data = dict(entry.data)
            data_json = _native_json(data)
        else:
            data = json.loads(json.dumps(dict(entry.data), default=str))
            data_json = _canonical_json(data)
        stored = AuditEntry(entry.action, entry.actor, data)
        # The document around the data, which sorts between "at" and "seq".
        around = canonical(0, at, AuditEntry(entry.action, entry.actor, {}))
        if not around.endswith(_AROUND_END):
            raise AssertionError("canonical() no longer ends with the data and the seq")
        head = around[: -len(_EMPTY_END)] + data_json.encode() + b","
        prepared.append(Prepared(stored, at, head, data_json))
    return prepared


_AROUND_END = b'"data":{},"seq":0}'
_EMPTY_END = b'{},"seq":0}'
_SORTED = msgspec.json.Encoder(order="sorted")


def _canonical_json(data: Any) -> str:
    """`data` as `canonical` serializes it within the document."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def _native_json(data: Any) -> str:
    """`_canonical_json(data)` for JSON-native data, by msgspec (several times faster)
    where its bytes are the same: printable ASCII without escapes, whose keys sort by
    bytes as by code points. Anything else (non-ASCII text, which `json.dumps` escapes,
    control characters, DEL, ints beyond 64 bits) takes `json.dumps`."""
    try:
        raw = _SORTED.encode(data)
    except (TypeError, OverflowError, ValueError):
        return _canonical_json(data)
    if raw.isascii() and b"\\" not in raw and b"\x7f" not in raw:
        return raw.decode()
    return _canonical_json(data)


async def append_prepared(conn: AsyncConnection, prepared: Sequence[Prepared]) -> list[AuditRef]:
    """Append prepared entries in order inside the caller's transaction."""
    if not prepared:
        return []
    return await append_onto(conn, await lock_head(conn), prepared)


async def append_onto(
    conn: AsyncConnection,
    head: tuple[int, str],
    prepared: Sequence[Prepared],
    *,
    link: int | None = None,
) -> list[AuditRef]:
    """Append prepared entries onto `head`, which the caller read with `lock_head` in this
    transaction (the lock is still held): no second round trip for the lock and head.

    `link`: a token the caller drew (`draw_link`) and wrote, before taking the lock, into
    the rows these entries record; stored with each entry (not hashed, like a ledger row's
    seq), so that those rows find their entry by (link, action)."""
    rows = chained(head, prepared)
    if link is not None:
        for row in rows:
            row["link"] = link
    await conn.execute(_INSERT, rows)
    return [AuditRef(row["seq"], row["hash"]) for row in rows]


_INSERT = insert(audit_log).values(data=cast(bindparam("data_json", type_=Text()), JSONB))
"""The data goes in as the text `prepare` hashed, parsed by PostgreSQL."""


def chained(head: tuple[int, str], prepared: Sequence[Prepared]) -> list[dict[str, Any]]:
    """The audit_log rows of `prepared` linked onto `head` (from `lock_head`, whose lock the
    caller holds until the rows commit), the data as JSON text under "data_json": for a
    writer that inserts them in a statement of its own (coordinator/outbox/write.py),
    through `row_values`."""
    seq, prev = head
    rows: list[dict[str, Any]] = []
    for p in prepared:
        seq += 1
        digest = link(prev, p.head + b'"seq":%d}' % seq)
        rows.append(
            {
                "seq": seq,
                "at": p.at,
                "action": p.entry.action,
                "actor": p.entry.actor,
                "data_json": p.data_json,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    return rows


def row_values(row: dict[str, Any]) -> dict[str, Any]:
    """A row of `chained` as the values of `insert(audit_log)`."""
    values = {name: value for name, value in row.items() if name != "data_json"}
    values["data"] = cast(literal(row["data_json"], Text()), JSONB)
    return values


async def draw_link(conn: AsyncConnection) -> int:
    """A new link token (migration 0031): unique, known before the chain's lock."""
    drawn: int = (await conn.execute(select(func.nextval(audit_link_seq.name)))).scalar_one()
    return drawn


async def lock_head(conn: AsyncConnection) -> tuple[int, str]:
    """Lock the chain until the transaction ends; return its last (seq, hash).

    While the caller holds the lock its next appended entry gets seq + 1, so it can write
    that number next to the change before appending the entry that records it.
    """
    await conn.execute(_LOCK_CHAIN)
    last = (await conn.execute(_HEAD)).first()
    return (last.seq, last.hash) if last else (0, GENESIS)


async def try_lock_head(conn: AsyncConnection) -> bool:
    """Lock the chain until the transaction ends if no one holds it; whether it did."""
    return bool(await conn.scalar(_TRY_LOCK_CHAIN))


# Built once: every writer of an entry runs them (a purge batch, each ack batch), and
# building a statement and its cache key cost more Python than executing it (measured).
_LOCK_CHAIN = select(func.pg_advisory_xact_lock(_CHAIN_LOCK))
_TRY_LOCK_CHAIN = select(func.pg_try_advisory_xact_lock(_CHAIN_LOCK))
_HEAD = select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)


async def chain_rows(conn: AsyncConnection, *, after: int, chunk: int) -> AsyncIterator[Any]:
    """The chain's rows after seq `after`, in order, read `chunk` at a time."""
    while True:
        rows = (
            await conn.execute(
                select(audit_log)
                .where(audit_log.c.seq > after)
                .order_by(audit_log.c.seq)
                .limit(chunk)
            )
        ).all()
        if not rows:
            return
        for row in rows:
            yield row
        after = rows[-1].seq


def broken_link(row: Any, *, prev: str, expected: int) -> BrokenLink | None:
    """What is wrong with `row` as the chain's next row (`expected` its seq, `prev` the
    hash before it), or None."""
    if row.seq != expected:
        return BrokenLink(expected, f"row {expected} is missing")
    if row.prev_hash != prev:
        return BrokenLink(row.seq, "prev_hash does not match the previous row")
    entry = AuditEntry(row.action, row.actor, row.data)
    if link(prev, canonical(row.seq, row.at, entry)) != row.hash:
        return BrokenLink(row.seq, "content does not match its hash (edited)")
    return None


async def verify(conn: AsyncConnection, *, chunk: int = 10_000) -> tuple[int, BrokenLink | None]:
    """Walk the chain from the start; return rows checked and the first broken link, if any."""
    prev, expected_seq, checked = GENESIS, 1, 0
    async for row in chain_rows(conn, after=0, chunk=chunk):
        broken = broken_link(row, prev=prev, expected=expected_seq)
        if broken is not None:
            return checked, broken
        prev, expected_seq, checked = row.hash, expected_seq + 1, checked + 1
    return checked, None
