"""The condition language compiles what SPEC §4 allows into bound expressions and rejects
everything else with a message naming the offending text and where it is."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import Column, ColumnElement, Integer, MetaData, String, Table, literal_column
from sqlalchemy import text as raw_sql
from sqlalchemy.dialects import postgresql

from coordinator.policy.conditions import (
    MAX_DEPTH,
    MAX_LENGTH,
    ConditionError,
    compile_condition,
    parse_condition,
    referenced_columns,
)
from tests.condition_grammar import corpus, junk, leaked_sql, orders, valid_condition


def sql(expression: ColumnElement[bool]) -> str:
    return str(expression.compile(dialect=postgresql.dialect()))


def params(expression: ColumnElement[bool]) -> list[Any]:
    return list(expression.compile(dialect=postgresql.dialect()).params.values())


def rejected(text: str) -> ConditionError:
    with pytest.raises(ConditionError) as info:
        compile_condition(text, orders)
    return info.value


# --------------------------------------------------------------------------- happy paths


def test_spec_example_compiles_to_bound_sql() -> None:
    expression = compile_condition("status = 'closed' AND resolved_at IS NOT NULL", orders)
    assert sql(expression) == (
        "orders.status = %(param_1)s::VARCHAR AND orders.resolved_at IS NOT NULL"
    )
    assert params(expression) == ["closed"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id = 1", "orders.id = %(param_1)s::BIGINT"),
        ("id != 1", "orders.id != %(param_1)s::BIGINT"),
        ("id <> 1", "orders.id != %(param_1)s::BIGINT"),
        ("id < 1", "orders.id < %(param_1)s::BIGINT"),
        ("id <= 1", "orders.id <= %(param_1)s::BIGINT"),
        ("id > 1", "orders.id > %(param_1)s::BIGINT"),
        ("id >= 1", "orders.id >= %(param_1)s::BIGINT"),
        # a literal on the left is mirrored so the column comes first
        ("1 < id", "orders.id > %(param_1)s::BIGINT"),
        ("'x' = status", "orders.status = %(param_1)s::VARCHAR"),
        ("id IN (1, 2, 3)", "orders.id IN (%(param_1)s::BIGINT, %(param_2)s::BIGINT, "
         "%(param_3)s::BIGINT)"),
        ("id NOT IN (1)", "(orders.id NOT IN (%(param_1)s::BIGINT))"),
        ("note IS NULL", "orders.note IS NULL"),
        ("note IS NOT NULL", "orders.note IS NOT NULL"),
        ("status LIKE 'clo%'", "orders.status LIKE %(param_1)s::VARCHAR"),
        ("status NOT LIKE 'clo%'", "orders.status NOT LIKE %(param_1)s::VARCHAR"),
        ("active", "orders.active"),
        ("NOT active", "NOT orders.active"),
        ("active = TRUE", "orders.active = %(param_1)s"),
        ("amount > score", "orders.amount > orders.score"),
        ("created_at < resolved_at", "orders.created_at < orders.resolved_at"),
        ('"CreatedBy" = \'ops\'', 'orders."CreatedBy" = %(param_1)s::VARCHAR'),
        ('"order" = \'x\'', 'orders."order" = %(param_1)s::VARCHAR'),
        ("kind = 'closed'", "orders.kind = %(param_1)s"),
        ("payload IS NULL", "orders.payload IS NULL"),
    ],
)  # fmt: skip
def test_each_construct_compiles(text: str, expected: str) -> None:
    assert sql(compile_condition(text, orders)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # NOT binds tighter than AND, AND tighter than OR
        ("active OR id = 1 AND id = 2",
         "orders.active OR orders.id = %(param_1)s::BIGINT AND orders.id = %(param_2)s::BIGINT"),
        ("(active OR id = 1) AND id = 2",
         "(orders.active OR orders.id = %(param_1)s::BIGINT) AND orders.id = %(param_2)s::BIGINT"),
        ("NOT active AND active", "NOT orders.active AND orders.active"),
        ("NOT (active AND active)", "NOT (orders.active AND orders.active)"),
        ("NOT active OR active", "NOT orders.active OR orders.active"),
        ("active AND (active OR NOT active)",
         "orders.active AND (orders.active OR NOT orders.active)"),
    ],
)  # fmt: skip
def test_precedence_is_not_then_and_then_or(text: str, expected: str) -> None:
    assert sql(compile_condition(text, orders)) == expected


def test_keywords_are_case_insensitive_and_whitespace_free_form() -> None:
    loose = "status='closed'\n\tand\tresolved_at is not null Or id in(1,2)"
    strict = "status = 'closed' AND resolved_at IS NOT NULL OR id IN (1, 2)"
    assert sql(compile_condition(loose, orders)) == sql(compile_condition(strict, orders))


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("''", ""),
        ("'it''s'", "it's"),
        ("''''", "'"),
        ("'a\\b'", "a\\b"),  # backslash is an ordinary character, as in standard SQL
        ("'--;/* */$$'", "--;/* */$$"),  # quoted, SQL syntax is just text
        ("'Zoë 日本'", "Zoë 日本"),
    ],
)
def test_string_literals_are_bound_verbatim(literal: str, value: str) -> None:
    expression = compile_condition(f"status = {literal}", orders)
    assert params(expression) == [value]
    assert sql(expression) == "orders.status = %(param_1)s::VARCHAR"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("amount = 12.50", Decimal("12.50")),
        ("amount = -3", Decimal(-3)),
        ("id = -7", -7),
        ("id > 1.5", Decimal("1.5")),  # bound as NUMERIC, so 1.5 is not truncated to 1
        ("score < 2", 2.0),
        ("big = 9223372036854775807", 2**63 - 1),
        ("active = false", False),
        ("birthday = '2000-02-29'", dt.date(2000, 2, 29)),
        ("opens_at < '08:30'", dt.time(8, 30)),
        ("resolved_at < '2024-01-31'", dt.datetime(2024, 1, 31, tzinfo=dt.UTC)),
        ("resolved_at < '2024-01-31T10:00:00+02:00'", dt.datetime(2024, 1, 31, 8, tzinfo=dt.UTC)),
        ("created_at < '2024-01-31 10:00:00+02:00'", dt.datetime(2024, 1, 31, 8)),
        ("ref = '6F1C0A52-4F6B-4C8E-9A53-2D1F5E0B7C11'",
         uuid.UUID("6f1c0a52-4f6b-4c8e-9a53-2d1f5e0b7c11")),
    ],
)  # fmt: skip
def test_literals_are_converted_for_their_column(text: str, value: object) -> None:
    assert params(compile_condition(text, orders)) == [value]


def test_no_literal_value_reaches_the_sql_text() -> None:
    text = (
        "status = 'sekrit' AND id IN (424242, 434343) AND note LIKE '%needle%' "
        "AND amount > 98765.43 AND resolved_at < '2031-07-04' AND active = TRUE"
    )
    compiled = sql(compile_condition(text, orders))
    for value in ("sekrit", "424242", "434343", "needle", "98765", "2031", "true", "TRUE"):
        assert value not in compiled
    assert leaked_sql(compile_condition(text, orders)) == []


def test_referenced_columns_fold_bare_names_and_keep_quoted_ones() -> None:
    text = "Status = 'x' AND (NOT active OR \"CreatedBy\" IN ('a')) AND ID > amount"
    assert referenced_columns(text) == {"status", "active", "CreatedBy", "id", "amount"}


def test_parse_needs_no_table() -> None:
    assert parse_condition("nosuch = 1") is not None


def test_column_vs_column_names_only_columns_of_the_table() -> None:
    assert "orders.status = orders.note" in sql(compile_condition("status = note", orders))


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("text", "message", "position", "fragment"),
    [
        ("", "condition is empty at position 0", 0, ""),
        ("  \n ", "condition is empty at position 0", 0, "  \n "),
        ("status = 'x'; DROP TABLE orders", "statement separators are not allowed: ';' at "
         "position 12", 12, ";"),
        ("id = 1 -- x", "comments are not allowed: '--' at position 7", 7, "--"),
        ("id = 1 /* x */", "comments are not allowed: '/*' at position 7", 7, "/*"),
        ("lower(status) = 'x'", "function calls are not allowed: 'lower(' at position 0", 0,
         "lower("),
        ("status = 'x' AND foo = 1", "unknown column 'foo' in table 'orders' at position 17",
         17, "foo"),
        ("(SELECT 1) = 1", "subqueries are not allowed: 'SELECT' at position 1", 1, "SELECT"),
        ("status = 'open", "unterminated string literal (quotes inside strings are written '') "
         "at position 9", 9, "'open"),
        ("(active", "unbalanced parentheses: '(' is never closed at position 0", 0, "("),
        ("active)", "unbalanced parentheses: ')' has no matching '(' at position 6", 6, ")"),
        ("id == 1", "unknown operator '==' at position 3", 3, "=="),
        ("id = 1 active", "expected AND, OR or the end of the condition, found 'active' at "
         "position 7", 7, "active"),
        ("1 = 1", "comparison needs a column on at least one side: '1 = 1' at position 0", 0,
         "1 = 1"),
        ("id = 'x'", "column 'id' (INTEGER) cannot be compared with string \"'x'\"; expected a "
         "number at position 5", 5, "'x'"),
        ("status = 5", "column 'status' (VARCHAR(20)) cannot be compared with number '5'; "
         "expected a quoted string at position 9", 9, "5"),
        ("id = NULL", "NULL can only be tested with IS NULL or IS NOT NULL (comparisons with "
         "NULL are never true) at position 5", 5, "NULL"),
        ("createdby = 'x'", "unknown column 'createdby' in table 'orders' (did you mean "
         "\"CreatedBy\"? mixed-case names need double quotes) at position 0", 0, "createdby"),
    ],
)  # fmt: skip
def test_rejections_name_reason_position_and_fragment(
    text: str, message: str, position: int, fragment: str
) -> None:
    error = rejected(text)
    assert str(error) == message
    assert (error.position, error.fragment) == (position, fragment)
    assert error.reason == message.rpartition(" at position ")[0]
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("active = 1", "expected TRUE or FALSE"),
        ("big = 9223372036854775808", "an integer that fits in 64 bits"),
        ("resolved_at < 'yesterday'", "expected a quoted timestamp such as"),
        ("resolved_at < 5", "expected a quoted timestamp such as"),
        ("birthday = '2024-02-30'", "expected a quoted date such as"),
        ("opens_at = '25:00'", "expected a quoted time such as"),
        ("ref = 'not-a-uuid'", "expected a quoted uuid such as"),
        ("kind = 'open'", "'open' is not a value of column 'kind' (enum order_kind); allowed: "
         "new, closed"),
        ("payload = 'x'", "has a type conditions cannot compare"),
        ("status = id", "column 'status' (VARCHAR(20)) cannot be compared with column 'id'"),
        ("status > active", "cannot be compared with column 'active'"),
        ("birthday = created_at", "cannot be compared with column 'created_at'"),
        ("id LIKE '1%'", "LIKE needs a text column; column 'id' (INTEGER) is not one"),
        ("kind LIKE 'n%'", "LIKE needs a text column"),
        ("status LIKE 'a\\'", "LIKE pattern must not end with a lone backslash"),
        ("status LIKE id", "LIKE needs a string pattern, found 'id'"),
        ("status IN ()", "IN list is empty"),
        ("status IN ('a', note)", "IN lists may only hold literals, found 'note'"),
        ("status IN 'a'", "IN must be followed by a parenthesized list"),
        ("id IN (1, 'x')", "cannot be compared with string \"'x'\""),
        ("status IN ('a' 'b')", "expected ',' or ')' in the IN list, found \"'b'\""),
        ("id", "column 'id' (INTEGER) is not boolean"),
        ("'x'", "a literal alone is not a condition"),
        ("'x' IS NULL", "IS NULL needs a column on its left"),
        ("id IS 1", "expected NULL after IS, found '1'"),
        ("id IS NOT TRUE", "expected NULL after IS NOT, found 'TRUE'"),
        ("id NOT 1", "expected IN or LIKE after NOT"),
        ("status = 'a\x00'", "invalid character '\\x00' (U+0000) in string literal"),
        ("status = 'a\ud800'", "invalid character '\\ud800' (U+D800) in string literal"),
        ("id = 1" + "0" * 100, "number is longer than 100 characters"),
        ("id = 1.", "malformed number '1.'"),
        ("(id = 1 active)", "expected ')' to close the '(' at position 0, found 'active'"),
        ('"" = 1', "empty quoted identifier"),
        ('"status = 1', "unterminated quoted identifier"),
        ('"select" = 1', "unknown column 'select'"),
        ("resolved_at < '0001-01-01T00:00:00+05:00'", "expected a quoted timestamp"),
        ("(" * (MAX_DEPTH + 1) + "active" + ")" * (MAX_DEPTH + 1), "nesting is deeper than"),
        ("active OR " * 1000 + "x" * MAX_LENGTH, f"longer than {MAX_LENGTH} characters"),
    ],
)  # fmt: skip
def test_type_and_grammar_mistakes_say_what_is_wrong(text: str, reason: str) -> None:
    assert reason in rejected(text).reason


def test_deep_nesting_within_the_limit_compiles() -> None:
    text = "(" * MAX_DEPTH + "active" + ")" * MAX_DEPTH
    assert sql(compile_condition(text, orders)) == "orders.active"


def test_a_keyword_named_column_is_reachable_only_quoted() -> None:
    table = Table("t", MetaData(), Column("select", Integer), Column("and", String))
    assert sql(compile_condition('"select" = 1 AND "and" = \'x\'', table)) == (
        't."select" = %(param_1)s::BIGINT AND t."and" = %(param_2)s::VARCHAR'
    )
    with pytest.raises(ConditionError, match="subqueries are not allowed"):
        compile_condition("select = 1", table)


def test_columns_resolve_against_the_table_given() -> None:
    other = Table("other", MetaData(), Column("status", String))
    assert sql(compile_condition("status = 'x'", other)) == "other.status = %(param_1)s::VARCHAR"
    with pytest.raises(ConditionError, match="unknown column 'id' in table 'other'"):
        compile_condition("id = 1", other)


# --------------------------------------------------------------------------- corpus


def test_injection_corpus_is_large_and_without_duplicates() -> None:
    lines = corpus()
    assert len(lines) >= 30
    assert len(set(lines)) == len(lines)
    assert all(line.strip() for line in lines)


@pytest.mark.parametrize("text", corpus())
def test_every_hostile_string_is_rejected(text: str) -> None:
    error = rejected(text)
    assert 0 <= error.position <= len(text)
    assert error.fragment == "" or error.fragment in text


# --------------------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_condition)
def test_random_valid_conditions_compile_to_clean_sql(text: str) -> None:
    expression = compile_condition(text, orders)
    assert leaked_sql(expression) == []
    assert referenced_columns(text) <= set(orders.c.keys())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk)
def test_random_junk_is_rejected_or_compiles_to_clean_sql(text: str) -> None:
    try:
        expression = compile_condition(text, orders)
    except ConditionError as error:
        position = error.position
    else:
        assert leaked_sql(expression) == []
        return
    assert 0 <= position <= len(text)


def test_leak_detector_notices_raw_sql() -> None:
    """The property above can fail: raw text in a compiled expression is reported."""
    assert leaked_sql(orders.c.id == literal_column("1")) != []
    assert leaked_sql(raw_sql("1=1 OR pg_sleep(1)")) != []
    assert leaked_sql(orders.c.id == 1) == []
