"""Error texts safe to store, send or serve (SPEC §13).

An exception's message can hold bound parameters (a hash key), or the personal data a
statement was about (`invalid input syntax for type integer: "alice@example.com"`, a
duplicate key's value). What leaves the process, or is stored, is the exception's
class and its SQLSTATE, Kafka error code or errno: enough to act on, nothing to leak.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import MutableMapping
from typing import Any

from aiokafka.errors import KafkaError
from sqlalchemy.exc import DBAPIError

__all__ = ["error_text", "format_exc_info", "traceback_text"]


def error_text(exc: BaseException) -> str:
    """`IntegrityError SQLSTATE 23505`, `KafkaTimeoutError Kafka error 7`, `ValueError`."""
    code = _code(exc)
    return f"{type(exc).__name__} {code}" if code else type(exc).__name__


def _code(exc: BaseException) -> str:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.isalnum() and len(sqlstate) == 5:
            return f"SQLSTATE {sqlstate}"
        if isinstance(current, KafkaError):
            errno = getattr(current, "errno", None)
            return f"Kafka error {errno}" if isinstance(errno, int) else ""
        if isinstance(current, OSError) and isinstance(current.errno, int):
            return f"errno {current.errno}"
        current = current.orig if isinstance(current, DBAPIError) else current.__cause__
    return ""


def traceback_text(exc: BaseException) -> str:
    """Where `exc` and the exceptions it chains were raised, each ending in its
    `error_text`: a traceback for an operator without the messages that could leak."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    parts = []
    for each in reversed(chain):
        frames = traceback.StackSummary.extract(traceback.walk_tb(each.__traceback__))
        parts.append(
            "Traceback (most recent call last):\n" + "".join(frames.format()) + error_text(each)
        )
    return "\n\nThe above led to:\n\n".join(parts)


def format_exc_info(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor in place of `format_exc_info`: `exception` via `traceback_text`."""
    exc_info = event_dict.pop("exc_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
    if isinstance(exc, BaseException):
        event_dict["exception"] = traceback_text(exc)
    return event_dict
