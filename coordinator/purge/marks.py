"""Where an anonymize policy's anonymized prefix ends, so a run walks only the new rows.

An anonymize policy keeps its rows, so without this every run would re-walk and
row-lock every row it ever anonymized (the ledger only filtered them out afterwards):
a run's cost grew with the policy's history instead of with its new rows.

The mark is the largest key K such that every row with a key at most K was anonymized
(with the policy's fields or more) when the mark was set. A batch extends it only when
every row of the key range it scanned was due, unheld and is anonymized once it commits
(`Batch.contiguous`): a held, young or out-of-scope row ends the prefix, so a row that
becomes due later (a hold released, a row ageing, a condition turning true) is always
after the mark. The mark is written in the batch's own transaction, so it never runs
ahead of what committed.

What the mark cannot see, and how it is caught:
* a row committed with a key at or below the mark after the mark passed it (a
  transaction still open while the run went by): its timestamp is newer than the cutoff
  of the run that set the mark, so `start` looks for such rows and restarts just before
  the first one;
* a policy whose fields, table, key or entity type change: the fingerprint differs and
  the run starts from the first key again, as before marks existed.
It cannot see a row inserted below the mark with an old timestamp (a backfill of old
rows under keys that do not increase); docs/policies.md says so, and deleting the
policy's mark row makes the next run walk everything.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Text, bindparam, cast, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.policy.binding import BoundPolicy
from coordinator.purge.planner import timestamp_value
from coordinator.tables import anonymize_marks

__all__ = ["advance", "fingerprint", "start"]


def fingerprint(bound: BoundPolicy) -> str:
    """What the prefix was anonymized for; a change makes the mark meaningless."""
    return json.dumps(
        {
            "table": bound.table.fullname,
            "key": bound.id_column.name,
            "entity_type": bound.policy.entity_type,
            "fields": sorted(bound.policy.fields),
        },
        sort_keys=True,
    )


async def start(conn: AsyncConnection, bound: BoundPolicy) -> Any | None:
    """The key a run starts after (None: from the first key)."""
    m = anonymize_marks.c
    mark = (
        await conn.execute(
            select(
                m.fingerprint, cast(m.last_key, bound.id_column.type).label("key"), m.cutoff
            ).where(m.policy == bound.name)
        )
    ).one_or_none()
    if mark is None or mark.fingerprint != fingerprint(bound):
        return None
    id_column = bound.id_column
    key = bindparam("mark", mark.key, type_=id_column.type)
    # No min()/max() for uuid keys: ORDER BY … LIMIT 1 reads the same index.
    late = (
        await conn.execute(
            select(id_column)
            .where(
                id_column <= key,
                bound.timestamp_column >= timestamp_value(bound, mark.cutoff),
            )
            .order_by(id_column)
            .limit(1)
        )
    ).scalar_one_or_none()
    if late is None:
        return mark.key
    # Restart just before the first row the mark went past unseen.
    return (
        await conn.execute(
            select(id_column)
            .where(id_column < bindparam("late", late, type_=id_column.type))
            .order_by(id_column.desc())
            .limit(1)
        )
    ).scalar_one_or_none()


async def advance(
    conn: AsyncConnection, bound: BoundPolicy, key: Any, *, cutoff: datetime, now: datetime
) -> None:
    """Move the mark to `key`, in the transaction of the batch that anonymized up to it."""
    values = {
        "fingerprint": fingerprint(bound),
        "last_key": cast(literal(key, bound.id_column.type), Text),
        "cutoff": cutoff,
        "updated_at": now,
    }
    await conn.execute(
        pg_insert(anonymize_marks)
        .values(policy=bound.name, **values)
        .on_conflict_do_update(index_elements=[anonymize_marks.c.policy], set_=values)
    )
