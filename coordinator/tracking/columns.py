"""Rows as column arrays: one statement and one bound parameter per column, any batch size.

`unnest($1::uuid[], $2::text[], …) AS name(col, …)` turns N rows into a relation with a
statement text that never changes, so asyncpg reuses one prepared statement, where a
parameter list runs N executions and an IN list re-plans for every length.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import (
    ARRAY,
    BindParameter,
    Select,
    TableValuedAlias,
    Text,
    Uuid,
    bindparam,
    column,
    func,
    literal_column,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnClause
from sqlalchemy.types import TypeEngine, UserDefinedType

__all__ = [
    "by_key",
    "event_ids_param",
    "event_ids_slot",
    "state_literal",
    "unnest",
    "unnest_rows",
    "unnest_slot",
    "unnest_values",
]

_JOIN_PLANS = ("enable_hashjoin", "enable_mergejoin", "enable_seqscan")
_CORRELATED_PLANS = ("enable_material", "enable_bitmapscan")


def unnest(
    name: str, types: Mapping[str, TypeEngine[Any]], rows: Sequence[Mapping[str, Any]]
) -> TableValuedAlias:
    """The relation `name(col, …)` holding `rows`; each row has a value for every column."""
    arrays = [
        bindparam(f"{name}_{col}", [row[col] for row in rows], type_=ARRAY(type_))
        for col, type_ in types.items()
    ]
    return _table(name, types, arrays)


def unnest_slot(name: str, types: Mapping[str, TypeEngine[Any]]) -> TableValuedAlias:
    """`unnest` with its arrays bound when the statement runs (`unnest_values`), for a
    statement built once. A statement is a web of objects in reference cycles (each
    clause and its comparator), freed only by the cyclic collector: a batch's rows bound
    into it lived until the next collection, which had to scan every tuple and id of them
    first (docs/tracking.md, "What session 12 cut"). Passed to `execute` instead, they are
    freed when it returns."""
    arrays = [bindparam(f"{name}_{col}", type_=ARRAY(type_)) for col, type_ in types.items()]
    return _table(name, types, arrays)


def unnest_values(
    name: str, types: Mapping[str, TypeEngine[Any]], rows: Sequence[Mapping[str, Any]]
) -> dict[str, list[Any]]:
    """The parameters of `unnest_slot(name, types)` holding `rows`."""
    return {f"{name}_{col}": [row[col] for row in rows] for col in types}


def _table(
    name: str, types: Mapping[str, TypeEngine[Any]], arrays: Sequence[Any]
) -> TableValuedAlias:
    return (
        func.unnest(*arrays)
        .table_valued(*(column(col, type_) for col, type_ in types.items()))
        .render_derived(name=name)
    )


class _Rows(UserDefinedType[list[tuple[Any, ...]]]):
    """An array of a composite type, each row a tuple of its attributes in order. Not
    `ARRAY(...)`: SQLAlchemy would turn each tuple into a list, which asyncpg reads as a
    sub-array."""

    cache_ok = True
    render_bind_cast = True

    def __init__(self, composite: str) -> None:
        self.composite = composite

    def get_col_spec(self, **kw: Any) -> str:
        return f"{self.composite}[]"


def unnest_rows(
    name: str, composite: str, types: Mapping[str, TypeEngine[Any]]
) -> TableValuedAlias:
    """Like `unnest_slot`, from one array of the composite type `composite` whose
    attributes are `types`' keys in that order (a migration creates it), bound when the
    statement runs as the parameter `{name}_rows`: a list of tuples, each a row's values
    in that order. For the ack path's widest inputs: asyncpg checks an array's shape
    value by value, once per row here, and that check was about a third of the cost of
    encoding a batch as an array per column; PostgreSQL also unpacks one array instead
    of one per column."""
    return _table(name, types, [bindparam(f"{name}_rows", type_=_Rows(composite))])


def event_ids_param(event_ids: Sequence[uuid.UUID]) -> BindParameter[Any]:
    """`event_id = any_(event_ids_param(ids))`: one array, not an IN list of len(ids)."""
    return bindparam("event_ids", list(event_ids), type_=ARRAY(Uuid()))


def event_ids_slot() -> BindParameter[Any]:
    """`event_ids_param` bound when the statement runs, as the parameter `event_ids` (a
    list of ids): see `unnest_slot`."""
    return bindparam("event_ids", type_=ARRAY(Uuid()))


def state_literal(value: str) -> ColumnClause[str]:
    """A state or status written into the statement, not bound: a partial index's
    predicate (`WHERE status = 'held'`) is proved from the statement's text, and a
    generic plan never sees a bound value."""
    if "'" in value:
        raise ValueError(f"not a state: {value!r}")
    return literal_column(f"'{value}'", Text())


@asynccontextmanager
async def by_key(conn: AsyncConnection, *, correlated: bool = False) -> AsyncIterator[None]:
    """Plan the statements run inside as one index probe per key of their input relation.

    The ack path joins a batch (an `unnest`, a few thousand keys) to tables of millions of
    rows. On statistics taken when the tables were small, or none yet, the planner has
    been seen to hash or merge join the batch against a sequential scan of the whole
    table, mid-run: a cost that grows with the table per batch. Here every such
    statement has an index for its key, so probing it is right at any size; the
    settings last until the block ends (or the transaction does, should it fail).

    `correlated`: also for the probes of a correlated subquery (an EXISTS keyed by the
    outer row), which the planner otherwise may answer from a partial index over the
    whole table: materialized once, or ANDed as a bitmap with the key's on every probe."""
    plans = (*_JOIN_PLANS, *_CORRELATED_PLANS) if correlated else _JOIN_PLANS
    before = (await conn.execute(_enter(plans))).one()[: len(plans)]
    yield
    await _set(conn, dict(zip(plans, before, strict=True)))


def _enter(plans: tuple[str, ...]) -> Select[Any]:
    """Read the settings and turn them off in one round trip. The read is a MATERIALIZED
    CTE: computed before the outer row that sets them is (a plain select list leaves
    the order of its expressions to the executor)."""
    was = (
        select(*(func.current_setting(name).label(f"was_{at}") for at, name in enumerate(plans)))
        .cte("was")
        .prefix_with("MATERIALIZED")
    )
    return select(*was.c, *(func.set_config(name, "off", True) for name in plans))


async def _set(conn: AsyncConnection, values: Mapping[str, str]) -> None:
    await conn.execute(
        select(*(func.set_config(name, value, True) for name, value in values.items()))
    )
