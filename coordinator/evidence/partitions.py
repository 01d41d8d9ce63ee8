"""The audit log partitioned by month (PostgreSQL declarative partitioning, on `at`).

Pruning then drops whole months instead of deleting rows one by one (`prune.py`). The
primary key is (seq, at): a unique constraint on a partitioned table must include the
partition key. seq stays unique all the same, since it is only ever assigned under the
chain lock (coordinator/evidence/audit.py).

Partitions are `audit_log_yYYYYmMM`; rows of a month without one (a clock far off) land
in `audit_log_default`. Serve's upkeep creates the current and the next two months ahead
of time (`ensure_months`); a month whose rows already sit in the default partition gets
no partition of its own (PostgreSQL would refuse it), its rows are pruned row by row.

Existing deployments convert with `retention db partition-audit` while `serve` runs
(`convert`): migration 0021 created the empty partitioned table `audit_log_partitioned`
beside the old one; each step copies the next `batch` rows in seq order in its own
transaction, so an interrupted conversion resumes where it stopped; the last step takes
the chain lock (appends wait a moment), copies what was appended meanwhile and swaps the
names. The old table stays as `audit_log_unpartitioned` until an operator drops it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.evidence import audit

__all__ = [
    "DEFAULT",
    "Conversion",
    "Month",
    "ahead",
    "convert",
    "ensure_months",
    "is_partitioned",
    "months",
]

PARENT = "audit_log"
SHADOW = "audit_log_partitioned"
OLD = "audit_log_unpartitioned"
DEFAULT = "audit_log_default"
_NAME = re.compile(r"audit_log_y(\d{4})m(\d{2})")


@dataclass(frozen=True, slots=True, order=True)
class Month:
    first: date

    @property
    def name(self) -> str:
        return f"audit_log_y{self.first.year:04d}m{self.first.month:02d}"

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


async def is_partitioned(conn: AsyncConnection, table: str = PARENT) -> bool:
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


async def months(conn: AsyncConnection, parent: str = PARENT) -> list[Month]:
    """The monthly partitions of `parent`, oldest first."""
    names = (
        await conn.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = CAST(:parent AS regclass)"
            ),
            {"parent": parent},
        )
    ).scalars()
    found = []
    for name in names:
        match = _NAME.fullmatch(name)
        if match:
            found.append(Month(date(int(match[1]), int(match[2]), 1)))
    return sorted(found)


async def ensure_months(
    conn: AsyncConnection, wanted: Iterable[Month], parent: str = PARENT
) -> list[str]:
    """Create the monthly partitions of `wanted` that are missing; return their names.

    A month with rows in the default partition is skipped (they stay there)."""
    have = set(await months(conn, parent))
    created = []
    for month in sorted(set(wanted) - have):
        lo, hi = month.bounds()
        stray = (
            await conn.execute(
                text(f"SELECT EXISTS (SELECT 1 FROM {DEFAULT} WHERE at >= :lo AND at < :hi)"),
                {"lo": lo, "hi": hi},
            )
        ).scalar_one()
        if stray:
            continue
        # Names and bounds come from dates, never from input: safe to format.
        await conn.execute(
            text(
                f"CREATE TABLE {month.name} PARTITION OF {parent} "
                f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
            )
        )
        created.append(month.name)
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
    """The partitioned table is `audit_log` now."""


_SWAP = (
    f"ALTER TABLE {PARENT} RENAME TO {OLD}",
    f"ALTER INDEX pk_{PARENT} RENAME TO pk_{OLD}",
    f"ALTER INDEX ix_{PARENT}_action RENAME TO ix_{OLD}_action",
    f"ALTER TABLE {SHADOW} RENAME TO {PARENT}",
    f"ALTER TABLE {PARENT} RENAME CONSTRAINT pk_{SHADOW} TO pk_{PARENT}",
    f"ALTER INDEX ix_{SHADOW}_action RENAME TO ix_{PARENT}_action",
)

_COPY = text(
    f"INSERT INTO {SHADOW} (seq, at, action, actor, data, prev_hash, hash) "
    f"SELECT seq, at, action, actor, data, prev_hash, hash FROM {PARENT} "
    f"WHERE seq > :after ORDER BY seq LIMIT :batch"
)


async def _copied_up_to(conn: AsyncConnection) -> int:
    return int(
        (await conn.execute(text(f"SELECT coalesce(max(seq), 0) FROM {SHADOW}"))).scalar_one()
    )


async def convert(
    engine: AsyncEngine, *, batch: int = 10_000, max_batches: int | None = None
) -> Conversion:
    """Copy the unpartitioned audit log into the partitioned one, `batch` rows per
    transaction, then swap them; resumable at any point. `max_batches` stops early (the
    copied rows stay; the next call goes on from there)."""
    copied = 0
    done = 0
    while max_batches is None or done < max_batches:
        async with engine.begin() as conn:
            if await is_partitioned(conn):
                return Conversion(copied, True)
            after = await _copied_up_to(conn)
            pending = (
                await conn.execute(
                    text(
                        f"SELECT at AT TIME ZONE 'UTC' FROM {PARENT} WHERE seq > :after "
                        "ORDER BY seq LIMIT :batch"
                    ),
                    {"after": after, "batch": batch},
                )
            ).scalars()
            await ensure_months(conn, {Month.of(at) for at in pending}, parent=SHADOW)
            n = (await conn.execute(_COPY, {"after": after, "batch": batch})).rowcount
        copied += n
        done += 1
        if n < batch:
            return Conversion(copied, await _swap(engine))
    return Conversion(copied, False)


async def _swap(engine: AsyncEngine) -> bool:
    async with engine.begin() as conn:
        # Appends wait on the chain lock from here to the commit.
        await audit.lock_head(conn)
        after = await _copied_up_to(conn)
        rest = (
            await conn.execute(
                text(f"SELECT at AT TIME ZONE 'UTC' FROM {PARENT} WHERE seq > :after"),
                {"after": after},
            )
        ).scalars()
        await ensure_months(conn, {Month.of(at) for at in rest}, parent=SHADOW)
        await conn.execute(_COPY, {"after": after, "batch": 2**62})
        for statement in _SWAP:
            await conn.execute(text(statement))
    return True
