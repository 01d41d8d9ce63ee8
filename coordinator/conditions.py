"""The policy condition language of SPEC §4, compiled to bound SQLAlchemy Core expressions.

A condition such as ``status = 'closed' AND resolved_at IS NOT NULL`` is tokenized and
parsed here by a small recursive-descent parser; nothing of the text ever reaches the
database as SQL. Columns are resolved against the policy's `Table` (so the identifier
SQLAlchemy quotes is one the schema has), and every literal becomes a bind parameter
typed for its column. Anything outside the grammar is a `ConditionError` naming the
offending fragment and its offset. Grammar and rationale: ``docs/conditions.md``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Any, TypeAlias, cast

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

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "ConditionError",
    "compile_condition",
    "parse_condition",
    "referenced_columns",
]

MAX_LENGTH = 10_000
"""Longest condition accepted; a policy filter is a line or two, not a program."""

MAX_DEPTH = 50
"""Deepest nesting of parentheses and NOT; keeps the parser's recursion bounded."""

_INT64 = 2**63
_MAX_NUMBER_LENGTH = 100


class ConditionError(ValueError):
    """A condition outside the language, or one that does not fit its table.

    ``str(error)`` reads ``<reason> at position <n>``; callers that know where the
    condition sits in a larger file can compose their own message from ``reason``,
    ``position`` (0-based offset into the condition text) and ``fragment`` (the
    offending text, verbatim).
    """

    def __init__(self, reason: str, position: int, fragment: str) -> None:
        self.reason = reason
        self.position = position
        self.fragment = fragment
        super().__init__(f"{reason} at position {position}")


def _show(fragment: str, limit: int = 40) -> str:
    """A fragment quoted for a message, cut short so one bad policy cannot flood a log."""
    if len(fragment) > limit:
        fragment = fragment[:limit] + "…"
    return repr(fragment)


# ---------------------------------------------------------------------------- tokens


class _Kind(Enum):
    WORD = "word"  # bare identifier or keyword
    QUOTED = "quoted identifier"
    STRING = "string"
    NUMBER = "number"
    OP = "operator"
    LPAREN = "("
    RPAREN = ")"
    COMMA = ","
    END = "end of condition"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    text: str  # verbatim source text
    value: str  # identifier name, decoded string, or number text
    start: int
    end: int

    def keyword(self) -> str | None:
        return self.text.upper() if self.kind is _Kind.WORD else None


_KEYWORDS = frozenset({"AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE", "TRUE", "FALSE"})

# SQL words that are not part of the language. Bare, they are rejected with a reason of
# their own (a column with such a name can still be written in double quotes).
_SUBQUERY_WORDS = frozenset({"SELECT", "EXISTS", "WITH", "VALUES", "TABLE"})
_FORBIDDEN_WORDS = frozenset(
    {
        "ALL", "ALTER", "ANY", "ARRAY", "BETWEEN", "CALL", "CASE", "CAST", "COLLATE",
        "COPY", "CREATE", "DELETE", "DO", "DROP", "ESCAPE", "EXCEPT", "EXECUTE", "FROM",
        "GRANT", "GROUP", "HAVING", "ILIKE", "INSERT", "INTERSECT", "INTO", "JOIN",
        "LIMIT", "OFFSET", "ORDER", "REVOKE", "SIMILAR", "SOME", "TRUNCATE", "UNION",
        "UPDATE", "WHERE",
    }
)  # fmt: skip

_COMPARISONS = frozenset({"=", "!=", "<>", "<", "<=", ">", ">="})
_OPERATOR_CHARS = "<>=!"
_FOREIGN_OPERATOR_CHARS = "+-*/%^|&~@#?"
_WHITESPACE = " \t\r\n"
_STRING_PREFIXES = frozenset({"E", "B", "X", "N", "U"})


def _is_word_start(char: str) -> bool:
    return char == "_" or ("a" <= char <= "z") or ("A" <= char <= "Z")


def _is_word_char(char: str) -> bool:
    return _is_word_start(char) or ("0" <= char <= "9")


def _is_digit(char: str) -> bool:
    return "0" <= char <= "9"


def _describe_char(char: str) -> str:
    if char.isprintable() and char.isascii():
        return repr(char)
    return f"{char!r} (U+{ord(char):04X})"


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, reason: str, start: int, end: int) -> ConditionError:
        return ConditionError(reason, start, self.text[start:end])

    def tokens(self) -> list[_Token]:
        out: list[_Token] = []
        text = self.text
        while True:
            while self.pos < len(text) and text[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos >= len(text):
                out.append(_Token(_Kind.END, "", "", len(text), len(text)))
                return out
            out.append(self._next())

    def _next(self) -> _Token:
        text, start = self.text, self.pos
        char = text[start]
        pair = text[start : start + 2]
        if pair == "--" or pair == "/*":
            raise self.error(f"comments are not allowed: {_show(pair)}", start, start + 2)
        if char == ";":
            raise self.error("statement separators are not allowed: ';'", start, start + 1)
        if char == "\x00":
            raise self.error("NUL characters are not allowed", start, start + 1)
        if char == "'":
            return self._string()
        if char == '"':
            return self._quoted_identifier()
        if _is_word_start(char):
            return self._word()
        if _is_digit(char) or (char == "-" and _is_digit(text[start + 1 : start + 2])):
            return self._number()
        if char in _OPERATOR_CHARS:
            return self._operator()
        if char in "(),":
            self.pos += 1
            kind = {"(": _Kind.LPAREN, ")": _Kind.RPAREN, ",": _Kind.COMMA}[char]
            return _Token(kind, char, char, start, start + 1)
        if pair == "::":
            raise self.error("type casts are not allowed: '::'", start, start + 2)
        if char == ":":
            raise self.error("bind parameters are not allowed: ':'", start, start + 1)
        if char == "$":
            raise self.error(
                "dollar quoting and positional parameters are not allowed: '$'", start, start + 1
            )
        if char in _FOREIGN_OPERATOR_CHARS:
            raise self.error(f"unknown operator {_show(char)}", start, start + 1)
        if char == "\\":
            raise self.error(
                "backslashes are only allowed inside string literals", start, start + 1
            )
        raise self.error(f"unexpected character {_describe_char(char)}", start, start + 1)

    def _string(self) -> _Token:
        text, start = self.text, self.pos
        parts: list[str] = []
        i = start + 1
        while True:
            close = text.find("'", i)
            if close < 0:
                raise self.error(
                    "unterminated string literal (quotes inside strings are written '')",
                    start,
                    len(text),
                )
            parts.append(text[i:close])
            if text.startswith("''", close):
                parts.append("'")
                i = close + 2
                continue
            value = "".join(parts)
            for offset, char in enumerate(text[start : close + 1], start):
                if char == "\x00" or "\ud800" <= char <= "\udfff":
                    # PostgreSQL text can hold neither, so the database would fail later.
                    raise self.error(
                        f"invalid character {_describe_char(char)} in string literal",
                        offset,
                        offset + 1,
                    )
            self.pos = close + 1
            return _Token(_Kind.STRING, text[start : self.pos], value, start, self.pos)

    def _quoted_identifier(self) -> _Token:
        text, start = self.text, self.pos
        close = text.find('"', start + 1)
        if close < 0:
            raise self.error("unterminated quoted identifier", start, len(text))
        name = text[start + 1 : close]
        if not name:
            raise self.error("empty quoted identifier: '\"\"'", start, close + 1)
        if "\x00" in name:
            nul = text.index("\x00", start)
            raise self.error("NUL characters are not allowed", nul, nul + 1)
        self.pos = close + 1
        token = _Token(_Kind.QUOTED, text[start : self.pos], name, start, self.pos)
        self._reject_call(token)
        return token

    def _word(self) -> _Token:
        text, start = self.text, self.pos
        end = start + 1
        while end < len(text) and _is_word_char(text[end]):
            end += 1
        word = text[start:end]
        upper = word.upper()
        if end < len(text) and text[end] == "'" and upper in _STRING_PREFIXES:
            raise self.error(
                f"prefixed string literals are not allowed: {_show(text[start : end + 1])}",
                start,
                end + 1,
            )
        if upper in _SUBQUERY_WORDS:
            raise self.error(f"subqueries are not allowed: {_show(word)}", start, end)
        if upper in _FORBIDDEN_WORDS:
            raise self.error(
                f"SQL keyword {_show(word)} is not part of the condition language", start, end
            )
        self.pos = end
        token = _Token(_Kind.WORD, word, word.lower(), start, end)
        if upper not in _KEYWORDS:
            self._reject_call(token)
        return token

    def _reject_call(self, token: _Token) -> None:
        """A name followed by '(' can only be a function call: the grammar has none."""
        text, i = self.text, token.end
        while i < len(text) and text[i] in _WHITESPACE:
            i += 1
        if text[i : i + 1] == "(":
            raise self.error(
                f"function calls are not allowed: {_show(text[token.start : i + 1])}",
                token.start,
                i + 1,
            )

    def _number(self) -> _Token:
        text, start = self.text, self.pos
        end = start + 1
        while end < len(text) and _is_digit(text[end]):
            end += 1
        if text[end : end + 1] == "." and _is_digit(text[end + 1 : end + 2]):
            end += 2
            while end < len(text) and _is_digit(text[end]):
                end += 1
        if end < len(text) and (_is_word_char(text[end]) or text[end] == "."):
            bad_end = end + 1
            while bad_end < len(text) and (_is_word_char(text[bad_end]) or text[bad_end] == "."):
                bad_end += 1
            raise self.error(
                f"malformed number {_show(text[start:bad_end])} "
                "(numbers are written like 42, -7 or 3.14)",
                start,
                bad_end,
            )
        if end - start > _MAX_NUMBER_LENGTH:
            raise self.error(f"number is longer than {_MAX_NUMBER_LENGTH} characters", start, end)
        self.pos = end
        return _Token(_Kind.NUMBER, text[start:end], text[start:end], start, end)

    def _operator(self) -> _Token:
        text, start = self.text, self.pos
        end = start
        while end < len(text) and text[end] in _OPERATOR_CHARS:
            end += 1
        op = text[start:end]
        if op not in _COMPARISONS:
            raise self.error(f"unknown operator {_show(op)}", start, end)
        self.pos = end
        return _Token(_Kind.OP, op, op, start, end)


# ---------------------------------------------------------------------------- syntax tree

LiteralValue: TypeAlias = str | int | Decimal | bool


@dataclass(frozen=True, slots=True)
class ColumnRef:
    """A column as written: bare names fold to lower case, quoted names are exact."""

    name: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Literal:
    value: LiteralValue
    start: int
    end: int


Operand: TypeAlias = ColumnRef | Literal


@dataclass(frozen=True, slots=True)
class Comparison:
    op: str
    left: Operand
    right: Operand
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class InList:
    column: ColumnRef
    values: tuple[Literal, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class IsNull:
    column: ColumnRef
    negated: bool


@dataclass(frozen=True, slots=True)
class Like:
    column: ColumnRef
    pattern: Literal
    negated: bool


@dataclass(frozen=True, slots=True)
class BooleanColumn:
    column: ColumnRef


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Node, ...]


Node: TypeAlias = Comparison | InList | IsNull | Like | BooleanColumn | Not | And | Or


class _Parser:
    def __init__(self, text: str, tokens: list[_Token]) -> None:
        self.text = text
        self.tokens = tokens
        self.index = 0
        self.depth = 0

    # -- helpers

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind is not _Kind.END:
            self.index += 1
        return token

    def at_keyword(self, *words: str) -> bool:
        return self.current.keyword() in words

    def error(self, reason: str, token: _Token) -> ConditionError:
        return ConditionError(reason, token.start, token.text)

    def found(self, token: _Token) -> str:
        return "the end of the condition" if token.kind is _Kind.END else _show(token.text)

    def nest(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nesting is deeper than {MAX_DEPTH} levels", token)

    # -- grammar

    def parse(self) -> Node:
        if self.current.kind is _Kind.END:
            raise ConditionError("condition is empty", 0, self.text)
        node = self.or_expr()
        token = self.current
        if token.kind is _Kind.RPAREN:
            raise self.error("unbalanced parentheses: ')' has no matching '('", token)
        if token.kind is not _Kind.END:
            raise self.error(
                f"expected AND, OR or the end of the condition, found {self.found(token)}", token
            )
        return node

    def or_expr(self) -> Node:
        operands = [self.and_expr()]
        while self.at_keyword("OR"):
            self.advance()
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def and_expr(self) -> Node:
        operands = [self.not_expr()]
        while self.at_keyword("AND"):
            self.advance()
            operands.append(self.not_expr())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def not_expr(self) -> Node:
        if not self.at_keyword("NOT"):
            return self.primary()
        token = self.advance()
        self.nest(token)
        node = Not(self.not_expr())
        self.depth -= 1
        return node

    def primary(self) -> Node:
        token = self.current
        if token.kind is not _Kind.LPAREN:
            return self.predicate()
        self.advance()
        self.nest(token)
        node = self.or_expr()
        close = self.current
        if close.kind is _Kind.END:
            raise self.error("unbalanced parentheses: '(' is never closed", token)
        if close.kind is not _Kind.RPAREN:
            raise self.error(
                f"expected ')' to close the '(' at position {token.start}, "
                f"found {self.found(close)}",
                close,
            )
        self.advance()
        self.depth -= 1
        return node

    def predicate(self) -> Node:
        left = self.operand()
        token = self.current
        if token.kind is _Kind.OP:
            self.advance()
            right = self.operand()
            return Comparison(token.value, left, right, left.start, right.end)
        if self.at_keyword("IS"):
            return self.is_null(self.column_of(left, "IS NULL"))
        if self.at_keyword("NOT"):
            self.advance()
            if self.at_keyword("IN"):
                return self.in_list(self.column_of(left, "NOT IN"), negated=True)
            if self.at_keyword("LIKE"):
                return self.like(self.column_of(left, "NOT LIKE"), negated=True)
            raise self.error(
                f"expected IN or LIKE after NOT, found {self.found(self.current)}", self.current
            )
        if self.at_keyword("IN"):
            return self.in_list(self.column_of(left, "IN"), negated=False)
        if self.at_keyword("LIKE"):
            return self.like(self.column_of(left, "LIKE"), negated=False)
        if isinstance(left, ColumnRef):
            return BooleanColumn(left)
        raise ConditionError(
            f"a literal alone is not a condition: {_show(self.text[left.start : left.end])}",
            left.start,
            self.text[left.start : left.end],
        )

    def column_of(self, operand: Operand, construct: str) -> ColumnRef:
        if isinstance(operand, ColumnRef):
            return operand
        fragment = self.text[operand.start : operand.end]
        raise ConditionError(
            f"{construct} needs a column on its left, found literal {_show(fragment)}",
            operand.start,
            fragment,
        )

    def operand(self) -> Operand:
        token = self.current
        keyword = token.keyword()
        if token.kind is _Kind.WORD and keyword not in _KEYWORDS:
            self.advance()
            return ColumnRef(token.value, token.start, token.end)
        if token.kind is _Kind.QUOTED:
            self.advance()
            return ColumnRef(token.value, token.start, token.end)
        if keyword == "NULL":
            raise self.error(
                "NULL can only be tested with IS NULL or IS NOT NULL (comparisons with "
                "NULL are never true)",
                token,
            )
        return self.literal("a column or a literal")

    def literal(self, expected: str) -> Literal:
        token = self.current
        keyword = token.keyword()
        value: LiteralValue
        if token.kind is _Kind.STRING:
            value = token.value
        elif token.kind is _Kind.NUMBER:
            value = Decimal(token.value) if "." in token.value else int(token.value)
        elif keyword in ("TRUE", "FALSE"):
            value = keyword == "TRUE"
        else:
            raise self.error(f"expected {expected}, found {self.found(token)}", token)
        self.advance()
        return Literal(value, token.start, token.end)

    def is_null(self, column: ColumnRef) -> Node:
        self.advance()  # IS
        negated = self.at_keyword("NOT")
        if negated:
            self.advance()
        if not self.at_keyword("NULL"):
            raise self.error(
                f"expected NULL after IS{' NOT' if negated else ''}, "
                f"found {self.found(self.current)}",
                self.current,
            )
        self.advance()
        return IsNull(column, negated)

    def in_list(self, column: ColumnRef, *, negated: bool) -> Node:
        keyword = self.advance()  # IN
        opening = self.current
        if opening.kind is not _Kind.LPAREN:
            raise self.error(
                f"IN must be followed by a parenthesized list of literals, "
                f"found {self.found(opening)}",
                opening,
            )
        self.advance()
        if self.current.kind is _Kind.RPAREN:
            raise ConditionError(
                "IN list is empty", opening.start, self.text[keyword.start : self.current.end]
            )
        values = [self.list_item()]
        while self.current.kind is _Kind.COMMA:
            self.advance()
            values.append(self.list_item())
        close = self.current
        if close.kind is _Kind.END:
            raise self.error("unbalanced parentheses: '(' is never closed", opening)
        if close.kind is not _Kind.RPAREN:
            raise self.error(
                f"expected ',' or ')' in the IN list, found {self.found(close)}", close
            )
        self.advance()
        return InList(column, tuple(values), negated)

    def list_item(self) -> Literal:
        token = self.current
        if token.kind in (_Kind.WORD, _Kind.QUOTED) and token.keyword() not in (
            "TRUE",
            "FALSE",
        ):
            raise self.error(f"IN lists may only hold literals, found {self.found(token)}", token)
        return self.literal("a literal")

    def like(self, column: ColumnRef, *, negated: bool) -> Node:
        self.advance()  # LIKE
        if self.current.kind is not _Kind.STRING:
            raise self.error(
                f"LIKE needs a string pattern, found {self.found(self.current)}", self.current
            )
        return Like(column, self.literal("a string pattern"), negated)


def parse_condition(text: str) -> Node:
    """Parse a condition into its syntax tree, without looking at any table.

    Raises:
        ConditionError: the text is not in the language.
    """
    if len(text) > MAX_LENGTH:
        raise ConditionError(
            f"condition is longer than {MAX_LENGTH} characters",
            MAX_LENGTH,
            text[MAX_LENGTH : MAX_LENGTH + 40],
        )
    return _Parser(text, _Lexer(text).tokens()).parse()


def _walk_columns(node: Node) -> Iterator[ColumnRef]:
    match node:
        case Comparison(left=left, right=right):
            yield from (side for side in (left, right) if isinstance(side, ColumnRef))
        case InList(column=column) | IsNull(column=column) | Like(column=column):
            yield column
        case BooleanColumn(column=column):
            yield column
        case Not(operand=inner):
            yield from _walk_columns(inner)
        case And(operands=operands) | Or(operands=operands):
            for child in operands:
                yield from _walk_columns(child)


def referenced_columns(text: str) -> frozenset[str]:
    """Names of the columns a condition mentions (bare names folded to lower case).

    Raises:
        ConditionError: the text is not in the language.
    """
    return frozenset(ref.name for ref in _walk_columns(parse_condition(text)))


# ---------------------------------------------------------------------------- compiling


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


def _literal_kind(value: LiteralValue) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    return "number"


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

    def bind(self, column: SAColumn[Any], lit: Literal) -> ColumnElement[Any]:
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
                f"{_literal_kind(value)} {_show(shown)}; expected {expected}",
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
        if not isinstance(value, str):
            raise mismatch(
                "a quoted string" if family in (_Family.STRING, _Family.ENUM) else
                f"a quoted {family.value} such as {_EXAMPLES[family]}"
            )  # fmt: skip
        if family is _Family.STRING:
            return literal(value, String())
        if family is _Family.ENUM:
            allowed: list[str] = list(cast(sqltypes.Enum, column.type).enums)
            if allowed and value not in allowed:
                raise ConditionError(
                    f"{_show(value)} is not a value of {self.describe(column)}; "
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
            raise mismatch(f"a quoted {family.value} such as {_EXAMPLES[family]}") from None

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
        if isinstance(left, Literal) and isinstance(right, Literal):
            fragment = self.fragment(node.start, node.end)
            raise ConditionError(
                f"comparison needs a column on at least one side: {_show(fragment)}",
                node.start,
                fragment,
            )
        if isinstance(left, Literal):
            left, right, op = right, left, _MIRRORED[op]
        assert isinstance(left, ColumnRef)
        column = self.resolve(left)
        if isinstance(right, Literal):
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

    def like(self, ref: ColumnRef, pattern: Literal, *, negated: bool) -> ColumnElement[bool]:
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


_EXAMPLES = {
    _Family.TIMESTAMP: "'2024-01-31 12:00:00+00:00'",
    _Family.DATE: "'2024-01-31'",
    _Family.TIME: "'12:30:00'",
    _Family.UUID: "'6f1c0a52-4f6b-4c8e-9a53-2d1f5e0b7c11'",
}


def compile_condition(text: str, table: Table) -> ColumnElement[bool]:
    """Compile `text` into a boolean expression over `table` with every literal bound.

    Raises:
        ConditionError: the text is not in the language, names a column `table` does
            not have, or compares a column with a literal of the wrong type.
    """
    return _Compiler(text, table).node(parse_condition(text))
