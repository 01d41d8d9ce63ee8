"""A list bound as one PostgreSQL array literal: `array_param(name, Uuid())`.

asyncpg encodes an array parameter element by element in Python: for each one a check
whether it is itself a sequence (a `collections.abc` isinstance) and the element's own
encoder (a `uuid.UUID`'s `.bytes`, an int's, a str's). A batch's statements bind a few
arrays of one value per event, so that was a few tenths of a microsecond per event per
array. Here the list becomes one text parameter, written by msgspec in C, that the
server casts to the array type (`CAST($1::VARCHAR AS UUID[])`): the same values, parsed
by PostgreSQL's own input functions.

msgspec's JSON array of strings, UUIDs or ints is a valid array literal once its
brackets are braces, as long as no string needed an escape: an unescaped JSON string is
a double-quoted array element with neither `"` nor `\\` inside, so it reads back as the
same text (a quoted `NULL` stays the text "NULL"). A list whose JSON has any backslash
(a string with a quote, a backslash or a control character) is written with the array
literal's own escapes instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import ARRAY, Text, TypeDecorator, bindparam, cast, select
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import Cast
from sqlalchemy.types import TypeEngine

__all__ = ["array_filter", "array_literal", "array_param"]

_encode = msgspec.json.Encoder().encode


def array_literal(values: Sequence[str] | Sequence[int] | Sequence[uuid.UUID]) -> str:
    """`values` (all strings, all ints or all UUIDs; never None, a bool or an enum: their
    JSON and their text differ, and the two paths below would read back differently) as
    a PostgreSQL array literal."""
    encoded = _encode(values)
    if b"\\" not in encoded:
        return "{" + encoded[1:-1].decode() + "}"
    # Only strings need escapes (a UUID's or an int's JSON has none).
    return "{" + ",".join(_escaped(v) for v in values) + "}"


def _escaped(value: object) -> str:
    # A str or int subclass (an enum) by its value, as msgspec writes it, not its str().
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__repr__(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"an array literal holds str, int or UUID values, not {type(value).__name__}")


class _ArrayLiteral(TypeDecorator[Sequence[Any]]):
    """A list bound as its array literal's text (`array_literal`)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Sequence[Any] | None, dialect: Dialect) -> str | None:
        return None if value is None else array_literal(value)


def array_param(name: str, element: TypeEngine[Any]) -> Cast[Any]:
    """A parameter `name` taking a list of `element` values, bound as one array literal
    and cast to `element[]` by the server.

    The cast is not folded to a constant: where it is evaluated once (`unnest(...)` in
    FROM, a VALUES list) that is free, but as a row filter (`col = ANY(...)` in WHERE or
    a join) a sequential scan parses the whole literal again for every row, and the
    planner cannot use an index for it. There, use `array_filter`: 450 ids against
    48,000 rows took 1.26 s as a filter, 0.8 ms through an index (PostgreSQL 15)."""
    return cast(bindparam(name, type_=_ArrayLiteral()), ARRAY(element))


def array_filter(name: str, element: TypeEngine[Any]) -> Cast[Any]:
    """`array_param` read once per statement, in a scalar subquery, for a row filter
    (`col == any_(array_filter("ids", Text()))`) or a join: its value is computed before
    the scan and compared as a constant, so an index on `col` can be used."""
    return cast(select(array_param(name, element)).scalar_subquery(), ARRAY(element))
