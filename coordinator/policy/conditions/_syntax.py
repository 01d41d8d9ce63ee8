"""The syntax tree of a condition and the recursive-descent parser that builds it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeAlias

from coordinator.policy.conditions._errors import ConditionError, show
from coordinator.policy.conditions._lexer import KEYWORDS, Kind, Lexer, Token

MAX_LENGTH = 10_000
"""Longest condition accepted; a policy filter is a line or two, not a program."""

MAX_DEPTH = 50
"""Deepest nesting of parentheses and NOT; keeps the parser's recursion bounded."""

ScalarValue: TypeAlias = str | int | Decimal | bool


@dataclass(frozen=True, slots=True)
class ColumnRef:
    """A column as written: bare names fold to lower case, quoted names are exact."""

    name: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Value:
    """A literal: string, integer, decimal or boolean."""

    value: ScalarValue
    start: int
    end: int


Operand: TypeAlias = ColumnRef | Value


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
    values: tuple[Value, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class IsNull:
    column: ColumnRef
    negated: bool


@dataclass(frozen=True, slots=True)
class Like:
    column: ColumnRef
    pattern: Value
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
    def __init__(self, text: str, tokens: list[Token]) -> None:
        self.text = text
        self.tokens = tokens
        self.index = 0
        self.depth = 0

    # -- helpers

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        if token.kind is not Kind.END:
            self.index += 1
        return token

    def at_keyword(self, *words: str) -> bool:
        return self.current.keyword() in words

    def error(self, reason: str, token: Token) -> ConditionError:
        return ConditionError(reason, token.start, token.text)

    def found(self, token: Token) -> str:
        return "the end of the condition" if token.kind is Kind.END else show(token.text)

    def nest(self, token: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nesting is deeper than {MAX_DEPTH} levels", token)

    # -- grammar

    def parse(self) -> Node:
        if self.current.kind is Kind.END:
            raise ConditionError("condition is empty", 0, self.text)
        node = self.or_expr()
        token = self.current
        if token.kind is Kind.RPAREN:
            raise self.error("unbalanced parentheses: ')' has no matching '('", token)
        if token.kind is not Kind.END:
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
        if token.kind is not Kind.LPAREN:
            return self.predicate()
        self.advance()
        self.nest(token)
        node = self.or_expr()
        close = self.current
        if close.kind is Kind.END:
            raise self.error("unbalanced parentheses: '(' is never closed", token)
        if close.kind is not Kind.RPAREN:
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
        if token.kind is Kind.OP:
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
            f"a literal alone is not a condition: {show(self.text[left.start : left.end])}",
            left.start,
            self.text[left.start : left.end],
        )

    def column_of(self, operand: Operand, construct: str) -> ColumnRef:
        if isinstance(operand, ColumnRef):
            return operand
        fragment = self.text[operand.start : operand.end]
        raise ConditionError(
            f"{construct} needs a column on its left, found literal {show(fragment)}",
            operand.start,
            fragment,
        )

    def operand(self) -> Operand:
        token = self.current
        keyword = token.keyword()
        if token.kind is Kind.WORD and keyword not in KEYWORDS:
            self.advance()
            return ColumnRef(token.value, token.start, token.end)
        if token.kind is Kind.QUOTED:
            self.advance()
            return ColumnRef(token.value, token.start, token.end)
        if keyword == "NULL":
            raise self.error(
                "NULL can only be tested with IS NULL or IS NOT NULL (comparisons with "
                "NULL are never true)",
                token,
            )
        return self.literal("a column or a literal")

    def literal(self, expected: str) -> Value:
        token = self.current
        keyword = token.keyword()
        value: ScalarValue
        if token.kind is Kind.STRING:
            value = token.value
        elif token.kind is Kind.NUMBER:
            value = Decimal(token.value) if "." in token.value else int(token.value)
        elif keyword in ("TRUE", "FALSE"):
            value = keyword == "TRUE"
        else:
            raise self.error(f"expected {expected}, found {self.found(token)}", token)
        self.advance()
        return Value(value, token.start, token.end)

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
        if opening.kind is not Kind.LPAREN:
            raise self.error(
                f"IN must be followed by a parenthesized list of literals, "
                f"found {self.found(opening)}",
                opening,
            )
        self.advance()
        if self.current.kind is Kind.RPAREN:
            raise ConditionError(
                "IN list is empty", opening.start, self.text[keyword.start : self.current.end]
            )
        values = [self.list_item()]
        while self.current.kind is Kind.COMMA:
            self.advance()
            values.append(self.list_item())
        close = self.current
        if close.kind is Kind.END:
            raise self.error("unbalanced parentheses: '(' is never closed", opening)
        if close.kind is not Kind.RPAREN:
            raise self.error(
                f"expected ',' or ')' in the IN list, found {self.found(close)}", close
            )
        self.advance()
        return InList(column, tuple(values), negated)

    def list_item(self) -> Value:
        token = self.current
        if token.kind in (Kind.WORD, Kind.QUOTED) and token.keyword() not in (
            "TRUE",
            "FALSE",
        ):
            raise self.error(f"IN lists may only hold literals, found {self.found(token)}", token)
        return self.literal("a literal")

    def like(self, column: ColumnRef, *, negated: bool) -> Node:
        self.advance()  # LIKE
        if self.current.kind is not Kind.STRING:
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
    return _Parser(text, Lexer(text).tokens()).parse()


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
