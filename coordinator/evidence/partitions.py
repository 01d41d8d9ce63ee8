"""Tables partitioned by month (PostgreSQL declarative partitioning on a timestamp).

Pruning then drops whole months instead of deleting rows one by one (`prune.py`,
coordinator/outbox/prune.py). A unique constraint on a partitioned table must include the
partition key, so each primary key is (key, time): the audit log's (seq, at), the outbox's
(seq, created_at). The key stays unique all the same: both seqs are only ever assigned
under the audit chain lock (coordinator/evidence/audit.py, coordinator/outbox/write.py).
The ack ledger's time is derived from the record it stores (`ledger_event_at`), so that
its de-duplication keys can hold it and stay what they were (coordinator/store/tables.py).

`LAYOUTS` names every partitioned table. Partitions are `<table>_yYYYYmMM`; rows of a
month without one (a clock far off) land in `<table>_default`. Serve's upkeep creates the
current and the next two months ahead of time (`ensure_months`); a month whose rows
already sit in the default partition gets no partition of its own (PostgreSQL would
refuse it), its rows are pruned row by row.

Existing deployments convert with `retention db partition` while `serve` runs
(`convert`): a migration created the empty partitioned table `<table>_partitioned`
beside the old one; each step copies the next `batch` rows in key order in its own
transaction, so an interrupted conversion resumes where it stopped. A step copies only up
to a key every writer before it has committed: a moment's SHARE lock on the old table
waits for writers in flight. The last step locks the old table, copies what was written
meanwhile and swaps the names (readers and writers wait a moment). The old table stays as
`<table>_unpartitioned` until an operator drops it. A conversion copies the columns its
`Layout` names: it refuses a table with a column it does not name (one a newer migration
added, such as 0031's links for a version before it), which the swap would lose.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator import CoordinatorError

__all__ = [
    "AUDIT",
    "EPOCH",
    "LAYOUTS",
    "LEDGER",
    "OUTBOX",
    "Conversion",
    "Layout",
    "LedgerEventMs",
    "Month",
    "UncopiedColumns",
    "ahead",
    "convert",
    "converting",
    "delete_copies",
    "drop_month",
    "ensure_months",
    "event_time",
    "is_partition",
    "is_partitioned",
    "ledger_event_at",
    "lock_copies",
    "month_ids",
    "months",
]


@dataclass(frozen=True, slots=True)
class Layout:
    """One table partitioned by month, and what its conversion copies and renames."""

    parent: str
    column: str
    """The partition key: a timestamp with time zone."""
    key: str
    """Unique, growing in commit order: the conversion's copy order and resume point."""
    columns: tuple[str, ...]
    indexes: tuple[str, ...]
    """The index names besides the primary key's, as `<prefix>_<table><suffix>` with
    `<table>` left out (`ix_audit_log_action`: "ix_action")."""
    computed: tuple[tuple[str, str], ...] = ()
    """Columns the old table lacks: (name, SQL over the old table's row) for the copy."""
    after_swap: tuple[str, ...] = ()
    """Statements after the names are swapped (the ledger's id sequence changes owner)."""

    @property
    def shadow(self) -> str:
        return f"{self.parent}_partitioned"

    @property
    def old(self) -> str:
        return f"{self.parent}_unpartitioned"

    @property
    def default(self) -> str:
        return f"{self.parent}_default"

    def partition(self, month: Month) -> str:
        return f"{self.parent}_y{month.first.year:04d}m{month.first.month:02d}"

    def month_of(self, name: str) -> Month | None:
        match = re.fullmatch(re.escape(self.parent) + r"_y(\d{4})m(\d{2})", name)
        return Month(date(int(match[1]), int(match[2]), 1)) if match else None


AUDIT = Layout(
    "audit_log",
    "at",
    "seq",
    # `link` since migration 0031, which adds it to both tables while they convert.
    ("seq", "at", "action", "actor", "data", "prev_hash", "hash", "link"),
    ("ix_action", "ix_link"),
)
OUTBOX = Layout(
    "retention_outbox_batches",
    "created_at",
    "seq",
    (
        "seq",
        "id_base",
        "id_first",
        "events",
        "run_id",
        "policy",
        "event_type",
        "entity_type",
        "legal_basis",
        "fields",
        "initiated_at",
        "deadline",
        "reason",
        "request_id",
        "entity_ids",
        "subjects",
        "created_at",
    ),
    ("ix_ids", "ix_request_id", "ix_run_id"),
)
# The columns copied from an unpartitioned ledger, as that table stood: not
# `tracking/ledger.py LEDGER_COLUMNS` (what the tracker inserts: no `id` or `audit_seq`,
# `event_at` computed), nor today's table, which later columns would make wrong here.
LEDGER = Layout(
    "retention_ack_ledger",
    "event_at",
    "id",
    (
        "id",
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
        "acknowledged_at",
        "accepted",
        "reject_reason",
        "audit_seq",
        "key_id",
        # Since migration 0031, which adds it to both tables while they convert.
        "audit_link",
    ),
    ("uq_record", "uq_ack", "ix_rejected_event_id", "ix_rejected_received_at"),
    # Written by the tracker since migration 0025; computed for the rows from before.
    computed=(("event_at", "coalesce(event_at, retention_ack_event_at(event_id, received_at))"),),
    after_swap=("ALTER SEQUENCE retention_ack_ledger_id_seq OWNED BY retention_ack_ledger.id",),
)
LAYOUTS = {layout.parent: layout for layout in (AUDIT, OUTBOX, LEDGER)}

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The ledger's time for a record naming no event, or one minted after it arrived."""


def event_time(event_id: uuid.UUID) -> datetime:
    """When a UUIDv7 was minted (its first 48 bits: Unix milliseconds)."""
    return EPOCH + timedelta(milliseconds=_minted_ms(event_id))


def _minted_ms(event_id: uuid.UUID) -> int:
    # The first 48 of 128 bits; `.int` is stored, `.bytes` is computed on each call.
    return event_id.int >> 80


def ledger_event_at(event_id: uuid.UUID | None, received_at: datetime) -> datetime:
    """The ack ledger's partition key, derived from the record alone so that both unique
    keys can hold it: the claimed event's minting time (for an accepted ack, the real
    event's), or `EPOCH` when the record names no event or one minted after it arrived
    (an id made up ahead, which would otherwise fill months not yet created). The same
    as the SQL function `retention_ack_event_at` (migration 0025)."""
    if event_id is None:
        return EPOCH
    minted_ms = _minted_ms(event_id)
    # Compared in milliseconds: a made-up id may lie past the last year a datetime holds.
    if minted_ms > received_at.timestamp() * 1000:
        return EPOCH
    return EPOCH + timedelta(milliseconds=minted_ms)


class LedgerEventMs:
    """`ledger_event_at` for records received at `received_at`, as Unix milliseconds
    (`EPOCH` is 0): what the tracker sends for each ledger row (`event_ms` of
    `retention_ack_row_us`, migration 0034; since 0030), where a datetime costs asyncpg
    about twice as much to encode and ~0.8 µs to make."""

    __slots__ = ("_limit_ms",)

    def __init__(self, received_at: datetime) -> None:
        # `ledger_event_at`'s own bound, the same float comparison.
        self._limit_ms = received_at.timestamp() * 1000

    def __call__(self, event_id: uuid.UUID | None) -> int:
        if event_id is None:
            return 0
        minted_ms = _minted_ms(event_id)
        return 0 if minted_ms > self._limit_ms else minted_ms


def month_ids(month: Month) -> tuple[uuid.UUID, uuid.UUID]:
    """The smallest UUIDv7 of `month` and the smallest of the next: every event minted in
    it lies in [first, second)."""
    first, after = (
        uuid.UUID(bytes=int(at.timestamp() * 1000).to_bytes(6, "big") + bytes(10))
        for at in month.bounds()
    )
    return first, after


def is_partition(name: str) -> bool:
    """A monthly or default partition of a table in `LAYOUTS` (made at run time)."""
    return any(
        name == layout.default or layout.month_of(name) is not None for layout in LAYOUTS.values()
    )


@dataclass(frozen=True, slots=True, order=True)
class Month:
    first: date

    @property
    def end(self) -> date:
        y, m = self.first.year, self.first.month
        return date(y + m // 12, m % 12 + 1, 1)

    @classmethod
    def of(cls, at: datetime) -> Month:
        """The month of `at` in UTC (a naive `at` is UTC already)."""
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        return cls(date(at.year, at.month, 1))

    def next(self) -> Month:
        return Month(self.end)

    def bounds(self) -> tuple[datetime, datetime]:
        return (
            datetime(self.first.year, self.first.month, 1, tzinfo=UTC),
            datetime(self.end.year, self.end.month, 1, tzinfo=UTC),
        )


async def is_partitioned(conn: AsyncConnection, table: str = AUDIT.parent) -> bool:
    kind = (
        await conn.execute(
            text(
                "SELECT relkind::text FROM pg_class WHERE relname = :t AND relnamespace = "
                "current_schema()::regnamespace"
            ),
            {"t": table},
        )
    ).scalar_one_or_none()
    return kind == "p"


async def _exists(conn: AsyncConnection, table: str) -> bool:
    found = await conn.scalar(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table})
    return bool(found)


async def months(
    conn: AsyncConnection, layout: Layout = AUDIT, parent: str | None = None
) -> list[Month]:
    """The monthly partitions of `layout`'s table (or of `parent`, its shadow), oldest first."""
    names = (
        await conn.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = CAST(:parent AS regclass)"
            ),
            {"parent": parent or layout.parent},
        )
    ).scalars()
    return sorted(m for m in (layout.month_of(name) for name in names) if m is not None)


async def ensure_months(
    conn: AsyncConnection,
    wanted: Iterable[Month],
    layout: Layout = AUDIT,
    parent: str | None = None,
) -> list[str]:
    """Create the monthly partitions of `wanted` that are missing; return their names.

    A month with rows in the default partition is skipped (they stay there)."""
    parent = parent or layout.parent
    have = set(await months(conn, layout, parent))
    created = []
    for month in sorted(set(wanted) - have):
        lo, hi = month.bounds()
        # Names and bounds come from dates and constants, never from input: safe to format.
        stray = (
            await conn.execute(
                text(
                    f"SELECT EXISTS (SELECT 1 FROM {layout.default} "
                    f"WHERE {layout.column} >= :lo AND {layout.column} < :hi)"
                ),
                {"lo": lo, "hi": hi},
            )
        ).scalar_one()
        if stray:
            continue
        name = layout.partition(month)
        await conn.execute(
            text(
                f"CREATE TABLE {name} PARTITION OF {parent} "
                f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
            )
        )
        created.append(name)
    return created


def ahead(now: datetime, count: int = 3) -> list[Month]:
    """This month and the next `count - 1`."""
    found = [Month.of(now)]
    while len(found) < count:
        found.append(found[-1].next())
    return found


@dataclass(frozen=True, slots=True)
class Conversion:
    copied: int
    """Rows copied by this call."""
    swapped: bool
    """The partitioned table has the table's name now."""


class UncopiedColumns(CoordinatorError):
    """The old table has columns this version's conversion does not copy."""

    def __init__(self, table: str, columns: list[str]) -> None:
        super().__init__(
            f"{table} has columns this version does not copy: {', '.join(columns)};"
            " convert it with the version that added them"
        )
        self.table = table
        self.columns = columns


async def _uncopied(conn: AsyncConnection, layout: Layout) -> list[str]:
    copied = {*layout.columns, *(name for name, _ in layout.computed)}
    names = (
        await conn.execute(
            text(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = :t"
                " ORDER BY ordinal_position"
            ),
            {"t": layout.parent},
        )
    ).scalars()
    return [name for name in names if name not in copied]


def _index(name: str, table: str) -> str:
    prefix, _, suffix = name.partition("_")
    return f"{prefix}_{table}_{suffix}" if suffix else f"{prefix}_{table}"


def _swap(layout: Layout) -> list[str]:
    """Renaming an index renames the constraint it backs with it."""
    p, shadow, old = layout.parent, layout.shadow, layout.old
    names = ("pk", *layout.indexes)
    return [
        f"ALTER TABLE {p} RENAME TO {old}",
        *(f"ALTER INDEX {_index(n, p)} RENAME TO {_index(n, old)}" for n in names),
        f"ALTER TABLE {shadow} RENAME TO {p}",
        *(f"ALTER INDEX {_index(n, shadow)} RENAME TO {_index(n, p)}" for n in names),
        *layout.after_swap,
    ]


def _copy(layout: Layout) -> str:
    names = ", ".join((*layout.columns, *(name for name, _ in layout.computed)))
    values = ", ".join((*layout.columns, *(sql for _, sql in layout.computed)))
    return (
        f"INSERT INTO {layout.shadow} ({names}) SELECT {values} FROM {layout.parent} "
        f"WHERE {layout.key} > :after AND {layout.key} <= :upto ORDER BY {layout.key} LIMIT :batch"
    )


async def _max_key(conn: AsyncConnection, table: str, layout: Layout) -> int:
    return int(
        (
            await conn.execute(text(f"SELECT coalesce(max({layout.key}), 0) FROM {table}"))
        ).scalar_one()
    )


async def _settled(engine: AsyncEngine, layout: Layout) -> int:
    """The greatest key of the old table once every writer in flight has committed: no
    row with a smaller key can appear after this."""
    async with engine.begin() as conn:
        await conn.execute(text(f"LOCK TABLE {layout.parent} IN SHARE MODE"))
        return await _max_key(conn, layout.parent, layout)


async def _copy_step(conn: AsyncConnection, layout: Layout, upto: int, batch: int) -> int:
    after = await _max_key(conn, layout.shadow, layout)
    params = {"after": after, "upto": upto, "batch": batch}
    column = dict(layout.computed).get(layout.column, layout.column)
    pending = (
        await conn.execute(
            text(
                f"SELECT {column} AT TIME ZONE 'UTC' FROM {layout.parent} "
                f"WHERE {layout.key} > :after AND {layout.key} <= :upto "
                f"ORDER BY {layout.key} LIMIT :batch"
            ),
            params,
        )
    ).scalars()
    await ensure_months(conn, {Month.of(at) for at in pending}, layout, parent=layout.shadow)
    return (await conn.execute(text(_copy(layout)), params)).rowcount


async def convert(
    engine: AsyncEngine,
    layout: Layout = AUDIT,
    *,
    batch: int = 10_000,
    max_batches: int | None = None,
) -> Conversion:
    """Copy the unpartitioned table into the partitioned one, `batch` rows per transaction,
    then swap them; resumable at any point. `max_batches` stops early (the copied rows
    stay; the next call goes on from there). Raises `UncopiedColumns`, copying nothing,
    if the table has a column `layout` does not copy."""
    async with engine.connect() as conn:
        if not await is_partitioned(conn, layout.parent):
            uncopied = await _uncopied(conn, layout)
            if uncopied:
                raise UncopiedColumns(layout.parent, uncopied)
    copied = 0
    done = 0
    upto = 0
    while max_batches is None or done < max_batches:
        async with engine.connect() as conn:
            if await is_partitioned(conn, layout.parent):
                return Conversion(copied, True)
            behind = await _max_key(conn, layout.shadow, layout) >= upto
        if behind:
            upto = await _settled(engine, layout)
        async with engine.begin() as conn:
            n = await _copy_step(conn, layout, upto, batch)
        copied += n
        done += 1
        if n < batch:
            return Conversion(copied + await _finish(engine, layout), True)
    return Conversion(copied, False)


async def _finish(engine: AsyncEngine, layout: Layout) -> int:
    """Copy what was written since the last step and swap, readers and writers waiting
    meanwhile. The strongest lock at once and nothing else held: a weaker one upgraded
    later, or the chain lock taken first, could deadlock with a reader that goes on to
    append to the chain."""
    async with engine.begin() as conn:
        await conn.execute(text(f"LOCK TABLE {layout.parent} IN ACCESS EXCLUSIVE MODE"))
        n = await _copy_step(conn, layout, 2**62, 2**62)
        for statement in _swap(layout):
            await conn.execute(text(statement))
    return n


async def converting(conn: AsyncConnection, layout: Layout) -> bool:
    """A conversion has begun and not finished: the old table is still the one in use,
    with its partitioned copy beside it (a row deleted from the old table after it was
    copied would come back with the swap, unless its copy goes too: `delete_copies`)."""
    return await _exists(conn, layout.shadow) and not await is_partitioned(conn, layout.parent)


async def lock_copies(conn: AsyncConnection, layout: Layout) -> bool:
    """Whether a conversion of `layout` is under way; if so, its copies are locked for the
    rest of this transaction, for a caller about to change rows of the old table whose
    copies must change alike (`delete_copies`, the pseudonymising pass), after it changed
    them in the old table.

    Checked after that change: its lock on the old table keeps the swap (which starts with
    that table's ACCESS EXCLUSIVE) out until this commits, and a swap before it made the
    change hit the partitioned table itself. The shadow's SHARE ROW EXCLUSIVE waits for a
    copy step in flight and holds off the next, so a row was either copied already and is
    seen by the caller's next statement (its snapshot follows the lock) or is not copied
    yet (a later step reads the old table after this commit). No cycle: the swap too
    locks the old table before the shadow, a copy step needs only ACCESS SHARE on the old
    one, and neither takes the chain lock. Not SHARE: two callers (two serve replicas)
    could both hold it and deadlock on their changes; SHARE ROW EXCLUSIVE conflicts with
    itself."""
    if not await converting(conn, layout):
        return False
    # The names come from a Layout, never from input.
    await conn.execute(text(f"LOCK TABLE {layout.shadow} IN SHARE ROW EXCLUSIVE MODE"))
    return True


async def delete_copies(
    conn: AsyncConnection, layout: Layout, keys: Sequence[int], before: datetime
) -> None:
    """Delete the conversion's copies of the rows `keys` names, just deleted from the old
    table in this transaction (all of them with their partition key before `before`), so
    the swap does not bring them back. Nothing when no conversion is under way
    (`lock_copies`). A step's resume point, the shadow's greatest key, may drop: the rows
    above it went from both tables."""
    if not keys or not await lock_copies(conn, layout):
        return
    await conn.execute(
        text(
            f"DELETE FROM {layout.shadow} WHERE {layout.key} = ANY(:keys)"
            f" AND {layout.column} < :before"
        ),
        {"keys": list(keys), "before": before},
    )


async def drop_month(
    engine: AsyncEngine,
    layout: Layout,
    name: str,
    *,
    still_due: Callable[[AsyncConnection], Awaitable[bool]],
    dropped: Callable[[AsyncConnection], Awaitable[None]],
    chain_lock: Callable[[AsyncConnection], Awaitable[bool]],
    tries: int = 50,
) -> bool:
    """Drop partition `name` of `layout` if `still_due` says so under the locks, with
    `dropped` (its audit entry) in the same transaction; whether it was dropped.

    The table's ACCESS EXCLUSIVE lock comes first and the chain lock (`chain_lock`, a
    try-lock) only if free; otherwise the transaction ends and the next try waits a
    moment. Writers and readers of these tables take the chain lock after touching the
    table (the relay, the tracker), so waiting for either lock while holding the other
    could deadlock."""
    for _ in range(tries):
        async with engine.begin() as conn:
            await conn.execute(text(f"LOCK TABLE {layout.parent} IN ACCESS EXCLUSIVE MODE"))
            if await chain_lock(conn):
                if not await still_due(conn):
                    return False
                # The name comes from a date, never from input.
                await conn.execute(text(f"DROP TABLE {name}"))
                await dropped(conn)
                return True
        await asyncio.sleep(0.1)
    return False
