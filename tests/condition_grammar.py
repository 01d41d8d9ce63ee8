"""A table with one column of every type conditions handle, and hypothesis strategies that
write conditions over it: valid ones from the grammar, and junk near and far from it."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path

from hypothesis import strategies as st
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Enum,
    Float,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    Time,
    Uuid,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB

CORPUS = Path(__file__).parent / "data" / "injection_corpus.txt"

metadata = MetaData()
orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("status", String(20)),
    Column("note", Text),
    Column("kind", Enum("new", "closed", name="order_kind")),
    Column("amount", Numeric(10, 2)),
    Column("score", Float),
    Column("big", BigInteger),
    Column("active", Boolean),
    Column("created_at", DateTime),
    Column("resolved_at", DateTime(timezone=True)),
    Column("birthday", Date),
    Column("opens_at", Time),
    Column("ref", Uuid),
    Column("payload", JSONB(none_as_null=True)),
    Column("CreatedBy", String(40)),
    Column("order", String(20)),
)

# How each column is written in a condition, by the kind of literal it takes.
COLUMNS: dict[str, list[str]] = {
    "string": ["status", "note", '"CreatedBy"', '"order"'],
    "enum": ["kind"],
    "number": ["id", "amount", "score", "big"],
    "boolean": ["active"],
    "timestamp": ["created_at", "resolved_at"],
    "date": ["birthday"],
    "time": ["opens_at"],
    "uuid": ["ref"],
}
NULLABLE = [*(name for names in COLUMNS.values() for name in names), "payload"]
OPERATORS = ["=", "!=", "<>", "<", "<=", ">", ">="]


def corpus() -> list[str]:
    return CORPUS.read_text(encoding="utf-8").splitlines()


def keyword(word: str) -> st.SearchStrategy[str]:
    """Keywords are case-insensitive: any casing is valid."""
    return st.sampled_from([word, word.lower(), word.capitalize()])


space = st.sampled_from([" ", "  ", "\n", "\t", " \r\n "])
tight = st.sampled_from(["", " "])  # where the grammar needs no space (around = ( , )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _number(value: Decimal | int) -> str:
    return f"{value:f}" if isinstance(value, Decimal) else str(value)


_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
_offsets = st.sampled_from(
    [
        None,
        dt.UTC,
        dt.timezone(dt.timedelta(hours=5, minutes=30)),
        dt.timezone(-dt.timedelta(hours=8)),
    ]
)

LITERALS: dict[str, st.SearchStrategy[str]] = {
    "string": _text.map(_quote),
    "enum": st.sampled_from(["'new'", "'closed'"]),
    "number": st.one_of(
        st.integers(-(2**63), 2**63 - 1),
        st.decimals(min_value=-(10**12), max_value=10**12, places=3),
    ).map(_number),
    "boolean": st.sampled_from(["TRUE", "false", "True", "FALSE"]),
    "timestamp": st.builds(
        lambda moment, sep: moment.isoformat(sep=sep),
        st.datetimes(timezones=_offsets),
        st.sampled_from(["T", " "]),
    ).map(_quote),
    "date": st.dates().map(lambda d: _quote(d.isoformat())),
    "time": st.times().map(lambda t: _quote(t.isoformat())),
    "uuid": st.uuids().map(lambda u: _quote(str(u))),
}


@st.composite
def comparison(draw: st.DrawFn) -> str:
    family = draw(st.sampled_from(sorted(COLUMNS)))
    column = draw(st.sampled_from(COLUMNS[family]))
    op = draw(st.sampled_from(OPERATORS))
    other = draw(st.one_of(LITERALS[family], st.sampled_from(COLUMNS[family])))
    left, right = draw(st.permutations([column, other]))
    return f"{left}{draw(tight)}{op}{draw(tight)}{right}"


@st.composite
def in_list(draw: st.DrawFn) -> str:
    family = draw(st.sampled_from(sorted(COLUMNS)))
    column = draw(st.sampled_from(COLUMNS[family]))
    values = draw(st.lists(LITERALS[family], min_size=1, max_size=4))
    not_ = draw(keyword("NOT")) + draw(space) if draw(st.booleans()) else ""
    sep = "," + draw(tight)
    return f"{column}{draw(space)}{not_}{draw(keyword('IN'))}{draw(tight)}({sep.join(values)})"


@st.composite
def is_null(draw: st.DrawFn) -> str:
    column = draw(st.sampled_from(NULLABLE))
    not_ = draw(keyword("NOT")) + draw(space) if draw(st.booleans()) else ""
    return f"{column}{draw(space)}{draw(keyword('IS'))}{draw(space)}{not_}{draw(keyword('NULL'))}"


_like_pattern = st.text(st.sampled_from(list("ab%_'\\ é")), max_size=10).filter(
    lambda p: (len(p) - len(p.rstrip("\\"))) % 2 == 0
)


@st.composite
def like(draw: st.DrawFn) -> str:
    column = draw(st.sampled_from(COLUMNS["string"]))
    not_ = draw(keyword("NOT")) + draw(space) if draw(st.booleans()) else ""
    pattern = _quote(draw(_like_pattern))
    return f"{column}{draw(space)}{not_}{draw(keyword('LIKE'))}{draw(space)}{pattern}"


predicate = st.one_of(
    comparison(), in_list(), is_null(), like(), st.sampled_from(COLUMNS["boolean"])
)


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def joined(word: str) -> st.SearchStrategy[str]:
        return st.builds(
            lambda a, s1, k, s2, b: f"{a}{s1}{k}{s2}{b}",
            children,
            space,
            keyword(word),
            space,
            children,
        )

    return st.one_of(
        joined("AND"),
        joined("OR"),
        st.builds(lambda k, s, c: f"{k}{s}{c}", keyword("NOT"), space, children),
        st.builds(lambda a, c, b: f"({a}{c}{b})", tight, children, tight),
    )


valid_condition = st.recursive(predicate, _combine, max_leaves=8)
"""Conditions the grammar accepts, typed correctly for `orders`."""

_pieces = st.sampled_from(
    [
        *OPERATORS, "(", ")", ",", "'", "''", '"', ";", "--", "/*", "*/", "::", "$$", "$1",
        ":x", "\\", "E'", "||", "+", "-", "*", "1", "-1", "1.5", "'x'", "NULL", "TRUE",
        "AND", "OR", "NOT", "IN", "IS", "LIKE", "SELECT", "UNION", "FROM", "lower(",
        "pg_sleep(1)", "status", "id", "active", "kind", "payload", '"order"', "nosuch",
        "\u00a0", "\u037e", "\uff07", "\u200b", "é", " ", "\n",
    ]
)  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid condition with a few characters inserted, deleted or replaced."""
    text = draw(valid_condition)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.one_of(_pieces, st.characters(exclude_categories=("Cs",))))
        if action == "insert":
            text = text[:at] + piece + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + piece + text[at + 1 :]
    return text


junk = st.one_of(
    st.text(max_size=60),
    st.lists(st.tuples(_pieces, tight), max_size=12).map(
        lambda parts: "".join(p + s for p, s in parts)
    ),
    mutated(),
)
"""Text of every shape: mostly outside the language, sometimes inside by luck."""

# What compiled SQL may contain: columns of `orders`, bind parameters (with a type cast),
# the language's keywords and operators, and punctuation. Anything else is a leak.
_BIND = re.compile(r"%\(\w+\)s(?:::(?:[A-Z]+(?: [A-Z]+)*|order_kind))?")
_COLUMN = re.compile(r'orders\.(?:"([^"]+)"|([a-z_][a-z0-9_]*))')
_ALLOWED_WORDS = {"AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE"}
_REST = re.compile(r"\s+|[(),]|!=|<=|>=|=|<|>|[A-Z]+")


def leaked_sql(expression: object) -> list[str]:
    """Pieces of the expression's PostgreSQL rendering that are neither a known column,
    a bind parameter, a keyword, an operator nor punctuation (empty when clean)."""
    sql = str(expression.compile(dialect=postgresql.dialect()))  # type: ignore[attr-defined]
    leaks: list[str] = []
    for match in _COLUMN.finditer(sql):
        name = match.group(1) or match.group(2)
        if name not in orders.c:
            leaks.append(match.group(0))
    rest = _COLUMN.sub(" ", _BIND.sub(" ", sql))
    position = 0
    while position < len(rest):
        match = _REST.match(rest, position)
        if match is None or (match.group(0).isalpha() and match.group(0) not in _ALLOWED_WORDS):
            leaks.append(rest[position : position + 20])
            break
        position = match.end()
    return leaks
