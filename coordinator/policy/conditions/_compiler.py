"""Syntax tree + table -> bound SQLAlchemy expression, with columns and literal types checked."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from enum import Enum
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Date,
    DateTime,
    Float,
    Numeric,
    String,
    Table,
    Time,
    Uuid,
    and_,
    literal,
    not_,
    or_,
)
from sqlalchemy import Column as SAColumn
from sqlalchemy.sql import sqltypes
from sqlalchemy.types import TypeEngine

from coordinator.policy.conditions._errors import ConditionError, show
from coordinator.policy.conditions._syntax import (
    And,
    BooleanColumn,
    ColumnRef,
    Comparison,
    InList,
    IsNull,
    Like,
    Node,
    Not,
    Or,
    ScalarValue,
    Value,
    parse_condition,
)

_INT64 = 2**63


class _Family(Enum):
    """What a column holds, as far as comparing it with a literal is concerned."""

    STRING = "text"
    ENUM = "enum"
    BOOLEAN = "boolean"
    INTEGER = "integer"
    NUMERIC = "numeric"
    FLOAT = "floating point"
    TIMESTAMP = "timestamp"
    DATE = "date"
    TIME = "time"
    UUID = "uuid"


_NUMBERS = frozenset({_Family.INTEGER, _Family.NUMERIC, _Family.FLOAT})

# Order matters: Enum is a String, Float a Numeric, in SQLAlchemy's hierarchy.
_FAMILIES: tuple[tuple[type[TypeEngine[Any]], _Family], ...] = (
    (sqltypes.Enum, _Family.ENUM),
    (sqltypes.Boolean, _Family.BOOLEAN),
    (sqltypes.Integer, _Family.INTEGER),
    (sqltypes.Float, _Family.FLOAT),
    (sqltypes.Numeric, _Family.NUMERIC),
    (sqltypes.String, _Family.STRING),
    (sqltypes.DateTime, _Family.TIMESTAMP),
    (sqltypes.Date, _Family.DATE),
    (sqltypes.Time, _Family.TIME),
    (sqltypes.Uuid, _Family.UUID),
)


def _family(type_: TypeEngine[Any]) -> _Family | None:
    for cls, family in _FAMILIES:
        if isinstance(type_, cls):
            return family
    return None


def _type_name(type_: TypeEngine[Any]) -> str:
    if isinstance(type_, sqltypes.Enum) and type_.name:
        return f"enum {type_.name}"
    try:
        return str(type_)
    except Exception:  # a dialect-specific type the generic compiler cannot render
        return type(type_).__name__.upper()


_Compare = Callable[[ColumnElement[Any], ColumnElement[Any]], ColumnElement[bool]]
_OPERATORS: dict[str, _Compare] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<>": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
# `5 < age` is `age > 5`: comparisons are compiled with the column on the left.
_MIRRORED = {"=": "=", "!=": "!=", "<>": "<>", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _value_kind(value: ScalarValue) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    return "number"


_EXAMPLES = {
    _Family.TIMESTAMP: "'2024-01-31 12:00:00+00:00'",
    _Family.DATE: "'2024-01-31'",
    _Family.TIME: "'12:30:00'",
    _Family.UUID: "'6f1c0a52-4f6b-4c8e-9a53-2d1f5e0b7c11'",
}


class _Compiler:
    def __init__(self, text: str, table: Table) -> None:
        self.text = text
        self.table = table
        self.columns = {column.name: column for column in table.columns}

    def fragment(self, start: int, end: int) -> str:
        return self.text[start:end]

    def resolve(self, ref: ColumnRef) -> SAColumn[Any]:
        column = self.columns.get(ref.name)
        if column is not None:
            return column
        reason = f"unknown column {ref.name!r} in table {self.table.name!r}"
        folded = [name for name in self.columns if name.lower() == ref.name.lower()]
        if folded:
            reason += f' (did you mean "{folded[0]}"? mixed-case names need double quotes)'
        raise ConditionError(reason, ref.start, self.fragment(ref.start, ref.end))

    def describe(self, column: SAColumn[Any]) -> str:
        return f"column {column.name!r} ({_type_name(column.type)})"

    def bind(self, column: SAColumn[Any], lit: Value) -> ColumnElement[Any]:
        """`lit` as a bind parameter typed for comparison with `column`, or an error.

        Bind types are generic (no length, precision or scale): asyncpg casts each
        parameter to its type, and a cast to VARCHAR(10) or NUMERIC(5, 2) would truncate
        or overflow the literal instead of comparing it.
        """
        family = _family(column.type)
        value = lit.value
        shown = self.fragment(lit.start, lit.end)

        def mismatch(expected: str) -> ConditionError:
            return ConditionError(
                f"{self.describe(column)} cannot be compared with "
                f"{_value_kind(value)} {show(shown)}; expected {expected}",
                lit.start,
                shown,
            )

        if family is None:
            raise ConditionError(
                f"{self.describe(column)} has a type conditions cannot compare; "
                "only IS NULL and IS NOT NULL apply to it",
                lit.start,
                shown,
            )
        if family is _Family.BOOLEAN:
            if not isinstance(value, bool):
                raise mismatch("TRUE or FALSE")
            return literal(value, Boolean())
        if family in _NUMBERS:
            if isinstance(value, bool) or not isinstance(value, int | Decimal):
                raise mismatch("a number")
            if family is _Family.FLOAT:
                # Numbers are at most 100 digits long, far inside float range.
                return literal(float(value), Float())
            if family is _Family.NUMERIC or isinstance(value, Decimal):
                return literal(Decimal(value), Numeric())
            if not -_INT64 <= value < _INT64:
                raise mismatch("an integer that fits in 64 bits")
            return literal(value, BigInteger())
        example = _EXAMPLES.get(family)
        expected = f"a quoted {family.value} such as {example}" if example else "a quoted string"
        if not isinstance(value, str):
            raise mismatch(expected)
        if family is _Family.STRING:
            return literal(value, String())
        if family is _Family.ENUM:
            allowed: list[str] = list(cast(sqltypes.Enum, column.type).enums)
            if allowed and value not in allowed:
                raise ConditionError(
                    f"{show(value)} is not a value of {self.describe(column)}; "
                    f"allowed: {', '.join(allowed)}",
                    lit.start,
                    shown,
                )
            # Enum operators exist only between enum values, so the parameter takes
            # the column's own enum type.
            return literal(value, column.type)
        try:
            return self.parse_typed(family, column, value)
        except (ValueError, OverflowError):
            raise mismatch(expected) from None

    def parse_typed(self, family: _Family, column: SAColumn[Any], value: str) -> ColumnElement[Any]:
        if family is _Family.TIMESTAMP:
            timezone = bool(cast(sqltypes.DateTime, column.type).timezone)
            moment = dt.datetime.fromisoformat(value)
            # Naive literals mean UTC. Aware ones are moved to UTC here, where an offset
            # that pushes year 1 or 9999 out of range is still a ConditionError.
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
            moment = moment.astimezone(dt.UTC)
            if not timezone:
                moment = moment.replace(tzinfo=None)
            return literal(moment, DateTime(timezone=timezone))
        if family is _Family.DATE:
            return literal(dt.date.fromisoformat(value), Date())
        if family is _Family.TIME:
            timezone = bool(cast(sqltypes.Time, column.type).timezone)
            return literal(dt.time.fromisoformat(value), Time(timezone=timezone))
        return literal(uuid.UUID(value), Uuid())

    def node(self, node: Node) -> ColumnElement[bool]:
        match node:
            case Comparison():
                return self.comparison(node)
            case InList(column=ref, values=values, negated=negated):
                column = self.resolve(ref)
                binds = [self.bind(column, value) for value in values]
                return column.not_in(binds) if negated else column.in_(binds)
            case IsNull(column=ref, negated=negated):
                column = self.resolve(ref)
                return column.is_not(None) if negated else column.is_(None)
            case Like(column=ref, pattern=pattern, negated=negated):
                return self.like(ref, pattern, negated=negated)
            case BooleanColumn(column=ref):
                column = self.resolve(ref)
                if _family(column.type) is not _Family.BOOLEAN:
                    raise ConditionError(
                        f"{self.describe(column)} is not boolean, so it is not a condition "
                        "by itself; compare it with something",
                        ref.start,
                        self.fragment(ref.start, ref.end),
                    )
                return cast(ColumnElement[bool], column)
            case Not(operand=operand):
                return not_(self.node(operand))
            case And(operands=operands):
                return and_(*(self.node(operand) for operand in operands))
            case Or(operands=operands):
                return or_(*(self.node(operand) for operand in operands))
        raise AssertionError(f"unhandled node {node!r}")  # pragma: no cover

    def comparison(self, node: Comparison) -> ColumnElement[bool]:
        left, right, op = node.left, node.right, node.op
        if isinstance(left, Value) and isinstance(right, Value):
            fragment = self.fragment(node.start, node.end)
            raise ConditionError(
                f"comparison needs a column on at least one side: {show(fragment)}",
                node.start,
                fragment,
            )
        if isinstance(left, Value):
            left, right, op = right, left, _MIRRORED[op]
        assert isinstance(left, ColumnRef)
        column = self.resolve(left)
        if isinstance(right, Value):
            return _OPERATORS[op](column, self.bind(column, right))
        other = self.resolve(right)
        self.check_comparable(node, column, other)
        return _OPERATORS[op](column, other)

    def check_comparable(self, node: Comparison, a: SAColumn[Any], b: SAColumn[Any]) -> None:
        fa, fb = _family(a.type), _family(b.type)
        same = fa is not None and (fa == fb or (fa in _NUMBERS and fb in _NUMBERS))
        if same and fa is _Family.ENUM:
            same = cast(sqltypes.Enum, a.type).name == cast(sqltypes.Enum, b.type).name
        if not same:
            fragment = self.fragment(node.start, node.end)
            raise ConditionError(
                f"{self.describe(a)} cannot be compared with {self.describe(b)}",
                node.start,
                fragment,
            )

    def like(self, ref: ColumnRef, pattern: Value, *, negated: bool) -> ColumnElement[bool]:
        column = self.resolve(ref)
        if _family(column.type) is not _Family.STRING:
            raise ConditionError(
                f"LIKE needs a text column; {self.describe(column)} is not one",
                ref.start,
                self.fragment(ref.start, ref.end),
            )
        value = str(pattern.value)
        escaped = False
        for char in value:
            escaped = not escaped and char == "\\"
        if escaped:
            shown = self.fragment(pattern.start, pattern.end)
            raise ConditionError(
                "LIKE pattern must not end with a lone backslash (the escape character)",
                pattern.start,
                shown,
            )
        bound = literal(value, String())
        return column.not_like(bound) if negated else column.like(bound)


def compile_condition(text: str, table: Table) -> ColumnElement[bool]:
    """Compile `text` into a boolean expression over `table` with every literal bound.

    Raises:
        ConditionError: the text is not in the language, names a column `table` does
            not have, or compares a column with a literal of the wrong type.
    """
    return _Compiler(text, table).node(parse_condition(text))
