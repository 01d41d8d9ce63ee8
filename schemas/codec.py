"""Encoding and decoding of wire records; every decoding failure is a `PoisonRecord`."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import ValidationError

from schemas.models import WireModel

__all__ = ["MAX_RECORD_BYTES", "PoisonRecord", "decode", "encode"]

M = TypeVar("M", bound=WireModel)

MAX_RECORD_BYTES = 1_000_000
"""Larger values are refused before parsing: no legitimate record comes near this."""


class PoisonRecord(ValueError):
    """A record that can never be processed: it goes to the DLQ with `reason`."""

    def __init__(self, reason: str, raw: bytes | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


def encode(model: WireModel) -> bytes:
    return model.model_dump_json().encode("utf-8")


def decode(model: type[M], raw: bytes | None) -> M:
    """Parse `raw` as `model`, or raise `PoisonRecord` saying why not."""
    if raw is None:
        raise PoisonRecord("empty value (tombstone)", raw)
    if len(raw) > MAX_RECORD_BYTES:
        raise PoisonRecord(f"record of {len(raw)} bytes exceeds {MAX_RECORD_BYTES}", raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PoisonRecord(f"not UTF-8: {exc.reason} at byte {exc.start}", raw) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PoisonRecord(
            f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", raw
        ) from None
    except RecursionError:
        # `[[[[…` a few hundred KB deep: the parser's recursion limit, not our bug to crash on.
        raise PoisonRecord("JSON nested too deeply", raw) from None
    if not isinstance(document, dict):
        raise PoisonRecord(f"not a JSON object but {type(document).__name__}", raw)
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise PoisonRecord(f"invalid {model.__name__}: {problems}", raw) from None
