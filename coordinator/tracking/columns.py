"""Rows as column arrays: one statement and one bound parameter per column, any batch size.

`unnest($1::uuid[], $2::text[], …) AS name(col, …)` turns N rows into a relation with a
statement text that never changes, so asyncpg reuses one prepared statement, where a
parameter list runs N executions and an IN list re-plans for every length.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ARRAY, BindParameter, TableValuedAlias, Uuid, bindparam, column, func
from sqlalchemy.types import TypeEngine

__all__ = ["event_ids_param", "unnest"]


def unnest(
    name: str, types: Mapping[str, TypeEngine[Any]], rows: Sequence[Mapping[str, Any]]
) -> TableValuedAlias:
    """The relation `name(col, …)` holding `rows`; each row has a value for every column."""
    arrays = [
        bindparam(f"{name}_{col}", [row[col] for row in rows], type_=ARRAY(type_))
        for col, type_ in types.items()
    ]
    return (
        func.unnest(*arrays)
        .table_valued(*(column(col, type_) for col, type_ in types.items()))
        .render_derived(name=name)
    )


def event_ids_param(event_ids: Sequence[uuid.UUID]) -> BindParameter[Any]:
    """`event_id = any_(event_ids_param(ids))`: one array, not an IN list of len(ids)."""
    return bindparam("event_ids", list(event_ids), type_=ARRAY(Uuid()))
