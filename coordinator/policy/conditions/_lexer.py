"""Tokens of the condition language; SQL syntax outside the language is rejected here,
in text order, with a reason of its own."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from coordinator.policy.conditions._errors import ConditionError, show

MAX_NUMBER_LENGTH = 100
"""Longest number literal; keeps int() and float() far from their limits."""


class Kind(Enum):
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
class Token:
    kind: Kind
    text: str  # verbatim source text
    value: str  # identifier name, decoded string, or number text
    start: int
    end: int

    def keyword(self) -> str | None:
        return self.text.upper() if self.kind is Kind.WORD else None


KEYWORDS = frozenset({"AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE", "TRUE", "FALSE"})

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


def describe_char(char: str) -> str:
    if char.isprintable() and char.isascii():
        return repr(char)
    return f"{char!r} (U+{ord(char):04X})"


class Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, reason: str, start: int, end: int) -> ConditionError:
        return ConditionError(reason, start, self.text[start:end])

    def tokens(self) -> list[Token]:
        out: list[Token] = []
        text = self.text
        while True:
            while self.pos < len(text) and text[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos >= len(text):
                out.append(Token(Kind.END, "", "", len(text), len(text)))
                return out
            out.append(self._next())

    def _next(self) -> Token:
        text, start = self.text, self.pos
        char = text[start]
        pair = text[start : start + 2]
        if pair == "--" or pair == "/*":
            raise self.error(f"comments are not allowed: {show(pair)}", start, start + 2)
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
            kind = {"(": Kind.LPAREN, ")": Kind.RPAREN, ",": Kind.COMMA}[char]
            return Token(kind, char, char, start, start + 1)
        if pair == "::":
            raise self.error("type casts are not allowed: '::'", start, start + 2)
        if char == ":":
            raise self.error("bind parameters are not allowed: ':'", start, start + 1)
        if char == "$":
            raise self.error(
                "dollar quoting and positional parameters are not allowed: '$'", start, start + 1
            )
        if char in _FOREIGN_OPERATOR_CHARS:
            raise self.error(f"unknown operator {show(char)}", start, start + 1)
        if char == "\\":
            raise self.error(
                "backslashes are only allowed inside string literals", start, start + 1
            )
        raise self.error(f"unexpected character {describe_char(char)}", start, start + 1)

    def _string(self) -> Token:
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
                        f"invalid character {describe_char(char)} in string literal",
                        offset,
                        offset + 1,
                    )
            self.pos = close + 1
            return Token(Kind.STRING, text[start : self.pos], value, start, self.pos)

    def _quoted_identifier(self) -> Token:
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
        token = Token(Kind.QUOTED, text[start : self.pos], name, start, self.pos)
        self._reject_call(token)
        return token

    def _word(self) -> Token:
        text, start = self.text, self.pos
        end = start + 1
        while end < len(text) and _is_word_char(text[end]):
            end += 1
        word = text[start:end]
        upper = word.upper()
        if end < len(text) and text[end] == "'" and upper in _STRING_PREFIXES:
            raise self.error(
                f"prefixed string literals are not allowed: {show(text[start : end + 1])}",
                start,
                end + 1,
            )
        if upper in _SUBQUERY_WORDS:
            raise self.error(f"subqueries are not allowed: {show(word)}", start, end)
        if upper in _FORBIDDEN_WORDS:
            raise self.error(
                f"SQL keyword {show(word)} is not part of the condition language", start, end
            )
        self.pos = end
        token = Token(Kind.WORD, word, word.lower(), start, end)
        if upper not in KEYWORDS:
            self._reject_call(token)
        return token

    def _reject_call(self, token: Token) -> None:
        """A name followed by '(' can only be a function call: the grammar has none."""
        text, i = self.text, token.end
        while i < len(text) and text[i] in _WHITESPACE:
            i += 1
        if text[i : i + 1] == "(":
            raise self.error(
                f"function calls are not allowed: {show(text[token.start : i + 1])}",
                token.start,
                i + 1,
            )

    def _number(self) -> Token:
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
                f"malformed number {show(text[start:bad_end])} "
                "(numbers are written like 42, -7 or 3.14)",
                start,
                bad_end,
            )
        if end - start > MAX_NUMBER_LENGTH:
            raise self.error(f"number is longer than {MAX_NUMBER_LENGTH} characters", start, end)
        self.pos = end
        return Token(Kind.NUMBER, text[start:end], text[start:end], start, end)

    def _operator(self) -> Token:
        text, start = self.text, self.pos
        end = start
        while end < len(text) and text[end] in _OPERATOR_CHARS:
            end += 1
        op = text[start:end]
        if op not in _COMPARISONS:
            raise self.error(f"unknown operator {show(op)}", start, end)
        self.pos = end
        return Token(Kind.OP, op, op, start, end)
