"""Anonymize strategies, registered by name (the shape of Fides' masking strategies).

Each strategy turns a column into the SQL expression that replaces its value, so an
anonymize batch is one `UPDATE … SET col = <expr> WHERE id = ANY(:ids)`: personal data
never travels through Python. A strategy also says which columns it cannot handle, so a
policy that would fail at 3 a.m. fails at load time instead. Add one with `register()`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from sqlalchemy import Column, LargeBinary, String, Text, cast, func, literal, null
from sqlalchemy.sql.elements import ColumnElement

__all__ = [
    "REDACTED",
    "Strategy",
    "StrategyContext",
    "get",
    "hmac_sha256_sql",
    "names",
    "register",
]

REDACTED = "[REDACTED]"
HEX_DIGEST_LENGTH = 64


@dataclass(frozen=True, slots=True)
class StrategyContext:
    """What a strategy may use besides the column: the row's id, the hashing key."""

    id_column: ColumnElement[Any]
    hash_key: bytes


class Strategy(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    needs_secret: ClassVar[bool]

    def incompatible(self, column: Column[Any]) -> str | None:
        """Why this strategy cannot write `column`, or None when it can."""
        ...

    def expression(self, column: Column[Any], context: StrategyContext) -> ColumnElement[Any]:
        """The new value of `column`, as SQL over the row's current values."""
        ...


_REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    if strategy.name in _REGISTRY:
        raise ValueError(f"anonymize strategy {strategy.name!r} is already registered")
    _REGISTRY[strategy.name] = strategy
    return strategy


def get(name: str) -> Strategy:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown anonymize strategy {name!r} (known: {', '.join(names())})"
        ) from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def _text_column_problem(column: Column[Any], min_length: int) -> str | None:
    if not isinstance(column.type, String):
        return f"column {column.name!r} is {column.type}, not a text column"
    length = column.type.length
    if length is not None and length < min_length:
        return (
            f"column {column.name!r} holds {length} characters; this strategy writes {min_length}"
        )
    return None


def hmac_sha256_sql(key: bytes, value: ColumnElement[Any]) -> ColumnElement[str]:
    """HMAC-SHA256 (RFC 2104) of `value::text`, hex, computed by PostgreSQL's `sha256()`.

    The key is padded and xor-ed here and sent as two bound parameters, so neither the
    key nor the values appear in SQL text and no extension (pgcrypto) is needed.
    """
    block = hashlib.sha256(key).digest() if len(key) > 64 else key
    block = block.ljust(64, b"\0")
    inner_pad = bytes(b ^ 0x36 for b in block)
    outer_pad = bytes(b ^ 0x5C for b in block)
    message = func.convert_to(cast(value, Text), "UTF8", type_=LargeBinary)
    inner = func.sha256(
        literal(inner_pad, LargeBinary).op("||", return_type=LargeBinary)(message),
        type_=LargeBinary,
    )
    outer = func.sha256(
        literal(outer_pad, LargeBinary).op("||", return_type=LargeBinary)(inner),
        type_=LargeBinary,
    )
    return func.encode(outer, "hex", type_=Text)


class Redact:
    name: ClassVar[str] = "redact"
    description: ClassVar[str] = f"replace the value with {REDACTED!r}"
    needs_secret: ClassVar[bool] = False

    def incompatible(self, column: Column[Any]) -> str | None:
        return _text_column_problem(column, len(REDACTED))

    def expression(self, column: Column[Any], context: StrategyContext) -> ColumnElement[Any]:
        return literal(REDACTED, column.type)


class Null:
    name: ClassVar[str] = "null"
    description: ClassVar[str] = "set the value to NULL"
    needs_secret: ClassVar[bool] = False

    def incompatible(self, column: Column[Any]) -> str | None:
        return None if column.nullable else f"column {column.name!r} is NOT NULL"

    def expression(self, column: Column[Any], context: StrategyContext) -> ColumnElement[Any]:
        return null()


class Hash:
    name: ClassVar[str] = "hash"
    description: ClassVar[str] = (
        "keyed HMAC-SHA256 of the value, hex (same input → same pseudonym; "
        "key: RETENTION_HASH_SECRET)"
    )
    needs_secret: ClassVar[bool] = True

    def incompatible(self, column: Column[Any]) -> str | None:
        return _text_column_problem(column, HEX_DIGEST_LENGTH)

    def expression(self, column: Column[Any], context: StrategyContext) -> ColumnElement[Any]:
        # NULL stays NULL (there is nothing to pseudonymize).
        return hmac_sha256_sql(context.hash_key, column)


class FakeEmail:
    name: ClassVar[str] = "fake_email"
    description: ClassVar[str] = (
        "anon-<row id>@example.invalid: unique per row (unique indexes keep working), "
        "derived from the id, never from the address"
    )
    needs_secret: ClassVar[bool] = False

    def incompatible(self, column: Column[Any]) -> str | None:
        return _text_column_problem(column, HEX_DIGEST_LENGTH)

    def expression(self, column: Column[Any], context: StrategyContext) -> ColumnElement[Any]:
        return func.concat("anon-", cast(context.id_column, Text), "@example.invalid")


for _strategy in (Redact(), Null(), Hash(), FakeEmail()):
    register(_strategy)
