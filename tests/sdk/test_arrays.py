"""A list bound as one array literal (`consumer_sdk.arrays`) reads back on the server as
exactly the list asyncpg's element-by-element array binds: texts of any characters
(quotes, backslashes, braces, commas, blanks, `NULL`, control characters, other scripts),
UUIDs and ints, in order."""

from __future__ import annotations

import enum
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import ARRAY, Integer, Text, Uuid, any_, bindparam, column, select, table, text
from sqlalchemy.ext.asyncio import create_async_engine

from consumer_sdk.arrays import array_filter, array_literal, array_param
from schemas import async_database_url

# PostgreSQL text holds no NUL (our wire models refuse it before a handler runs).
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
_TRICKY = ["", "NULL", "null", " a ", '"', "\\", "a,b", "{x}", "\n\t", "é€😀", '\\"', "'"]


async def _both(url: str, values: list[Any], kind: Any) -> tuple[list[Any], list[Any]]:
    engine = create_async_engine(async_database_url(url))
    try:
        async with engine.connect() as conn:
            ours = await conn.scalar(select(array_param("v", kind)), {"v": values})
            theirs = await conn.scalar(select(bindparam("v", type_=ARRAY(kind))), {"v": values})
    finally:
        await engine.dispose()
    return list(ours), list(theirs)


async def test_tricky_texts_uuids_and_ints_read_back_unchanged(postgres_url: str) -> None:
    for values, kind in [
        (_TRICKY, Text()),
        ([], Text()),
        ([uuid.uuid4() for _ in range(5)], Uuid()),
        ([0, -1, 2**31 - 1, -(2**31)], Integer()),
    ]:
        ours, theirs = await _both(postgres_url, values, kind)
        assert ours == theirs == values


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_TEXT, max_size=8))
async def test_any_texts_read_back_unchanged(postgres_url: str, values: list[str]) -> None:
    ours, theirs = await _both(postgres_url, values, Text())
    assert ours == theirs == values


def test_the_escaped_form_is_taken_only_when_json_escaped_something() -> None:
    assert array_literal(["a", "b c"]) == '{"a","b c"}'
    assert array_literal([1, 2]) == "{1,2}"
    assert array_literal(['a"b', "c\\d"]) == '{"a\\"b","c\\\\d"}'


class _Text(str, enum.Enum):  # noqa: UP042 - its str() is "_Text.PLAIN", a StrEnum's the value
    PLAIN = "plain"
    ESCAPED = 'a"b\\c'


def test_an_enum_is_written_by_its_value_on_both_paths() -> None:
    # Without an escape msgspec writes the literal; with one each value is escaped here:
    # both write an enum member as its value, never its str() ("_Text.ESCAPED").
    assert array_literal([_Text.PLAIN]) == array_literal(["plain"]) == '{"plain"}'
    assert array_literal([_Text.ESCAPED, _Text.PLAIN]) == array_literal(['a"b\\c', "plain"])


def test_a_value_that_is_no_str_int_or_uuid_is_refused() -> None:
    with pytest.raises(TypeError, match="NoneType"):
        array_literal(["a\\b", None])  # type: ignore[list-item]


async def test_a_filter_reads_the_literal_once_per_statement(postgres_url: str) -> None:
    """`array_filter` in a WHERE is an InitPlan, computed once before the scan; the bare
    parameter is a filter the scan evaluates per row."""
    rows = table("filtered", column("id", Text()))
    values = ["3", "7", 'x"y', "49"]
    engine = create_async_engine(async_database_url(postgres_url))
    try:
        async with engine.connect() as conn:
            await conn.execute(text("CREATE TEMP TABLE filtered (id text)"))
            await conn.execute(
                text("INSERT INTO filtered SELECT g::text FROM generate_series(1, 50) g")
            )
            for param, once in (
                (array_filter("v", Text()), True),
                (array_param("v", Text()), False),
            ):
                query = select(rows.c.id).where(rows.c.id == any_(param)).order_by(rows.c.id)
                found = (await conn.execute(query, {"v": values})).scalars().all()
                assert found == ["3", "49", "7"]
                sql = str(query.compile(dialect=conn.dialect))
                explained = await conn.exec_driver_sql("EXPLAIN " + sql, (array_literal(values),))
                plan = "\n".join(line for (line,) in explained)
                assert ("InitPlan" in plan) is once, plan
    finally:
        await engine.dispose()
