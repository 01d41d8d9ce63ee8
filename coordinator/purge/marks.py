"""Where an anonymize policy's anonymized prefix ends, so a run walks only the new rows.

An anonymize policy keeps its rows, so without this every run would re-walk and
row-lock every row it ever anonymized (the ledger only filtered them out afterwards):
a run's cost grew with the policy's history instead of with its new rows.

The mark is the largest key K such that every row with a key at most K was, when the
mark was set, either anonymized (with the policy's fields or more) or under a legal
hold. A batch extends it only when every row of the key range it scanned was due —
old enough and in scope (`Batch.contiguous`), so each is anonymized or held once the
batch commits. A young or out-of-scope row ends the prefix, so a row that becomes due
later by ageing or by a condition turning true is always after the mark. The mark is
written in the batch's own transaction, so it never runs ahead of what committed.

`start` sends a run back below the mark, to just before the first such row, when:
* a hold on a row's entity or on its subject (SPEC §11) ended — released or expired —
  since the mark was set, minus `_HOLD_MARGIN` for clock differences between
  replicas: its rows may be due now;
* a row at or below the mark has a timestamp at or after the cutoff of the run that set
  it: it was committed after that run passed its key (a transaction still open then)
  or its timestamp was changed;
and from the first key when the policy's fields, table, key or entity type changed
(the fingerprint).

It cannot see a row inserted below the mark with an old timestamp — a backfill of old
rows under keys that do not increase (random UUIDs, reused ids, a table reloaded from a
dump); docs/policies.md says so, and deleting the policy's mark row makes the next run
walk everything. The restart checks read the timestamp column with `id <= mark`: with
an index on it they cost the young rows; the hold check costs nothing while no hold of
the entity type ended, and one scan of the table when one did.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Text, and_, bindparam, cast, literal, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Select

from coordinator.policy.binding import BoundPolicy
from coordinator.purge.planner import timestamp_value
from coordinator.store.tables import anonymize_marks, legal_hold_entities, legal_holds

__all__ = ["advance", "fingerprint", "start"]

_HOLD_MARGIN = timedelta(hours=1)


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


async def start(conn: AsyncConnection, bound: BoundPolicy, now: datetime) -> Any | None:
    """The key a run starts after (None: from the first key)."""
    m = anonymize_marks.c
    mark = (
        await conn.execute(
            select(
                m.fingerprint,
                cast(m.last_key, bound.id_column.type).label("key"),
                m.cutoff,
                m.updated_at,
            ).where(m.policy == bound.name)
        )
    ).one_or_none()
    if mark is None or mark.fingerprint != fingerprint(bound):
        return None
    id_column = bound.id_column
    below = id_column <= bindparam("mark", mark.key, type_=id_column.type)
    since = mark.updated_at - _HOLD_MARGIN
    h, e = legal_holds.c, legal_hold_entities.c

    def ended(entity_type: str) -> Select[Any]:
        return (
            select(e.entity_id)
            .join_from(legal_hold_entities, legal_holds, h.id == e.hold_id)
            .where(
                e.entity_type == entity_type,
                or_(h.released_at >= since, and_(h.expires_at >= since, h.expires_at <= now)),
            )
        )

    # As the planner's hold checks: a hold on the row's entity, or on its subject.
    released = [cast(id_column, Text).in_(ended(bound.policy.entity_type))]
    subject, column = bound.subject, bound.subject_column
    itself = (
        subject is not None
        and subject.entity_type == bound.policy.entity_type
        and column is id_column
    )
    if subject is not None and column is not None and not itself:
        released.append(cast(column, Text).in_(ended(subject.entity_type)))
    # No min()/max() for uuid keys: ORDER BY … LIMIT 1 reads the same index.
    first = (
        await conn.execute(
            select(id_column)
            .where(
                below,
                or_(bound.timestamp_column >= timestamp_value(bound, mark.cutoff), *released),
            )
            .order_by(id_column)
            .limit(1)
        )
    ).scalar_one_or_none()
    if first is None:
        return mark.key
    return (
        await conn.execute(
            select(id_column)
            .where(id_column < bindparam("first", first, type_=id_column.type))
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
