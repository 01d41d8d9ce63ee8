"""Encoding and decoding of wire records; every decoding failure is a `PoisonRecord`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from schemas.fast_decode import fast_decoder
from schemas.models import WireModel

__all__ = [
    "MAX_RECORD_BYTES",
    "DeadLetter",
    "PoisonRecord",
    "clip_text",
    "dead_letter",
    "decode",
    "encode",
]

M = TypeVar("M", bound=WireModel)

MAX_RECORD_BYTES = 1_000_000
"""Larger values are refused before parsing: no legitimate record comes near this."""


DLQ_KEY_BYTES = 1024
"""Record keys we write are `type:id`, at most ~512 bytes; longer ones are cut here."""
DLQ_HEADERS_BYTES = 16 * 1024
DLQ_TEXT_BYTES = 2048


class PoisonRecord(ValueError):
    """A record that can never be processed: it goes to the DLQ with `reason`."""

    def __init__(self, reason: str, raw: bytes | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


def encode(model: WireModel) -> bytes:
    return model.model_dump_json().encode("utf-8")


def decode(model: type[M], raw: bytes | None) -> M:
    """Parse `raw` as `model`, or raise `PoisonRecord` saying why not.

    Records shaped exactly like the model take msgspec's path (schemas/fast_decode.py);
    everything else, and every refusal, takes pydantic's (`validate`).
    """
    if raw is None:
        raise PoisonRecord("empty value (tombstone)", raw)
    if len(raw) > MAX_RECORD_BYTES:
        raise PoisonRecord(f"record of {len(raw)} bytes exceeds {MAX_RECORD_BYTES}", raw)
    decoded = fast_decoder(model)(raw)
    if decoded is not None:
        return decoded
    return validate(model, raw)


def validate(model: type[M], raw: bytes) -> M:
    """pydantic's path of `decode`: the reference for what is accepted and why not."""
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
    except ValueError:
        # Python's int() limit (sys.get_int_max_str_digits): `{"a": 1111…}` with thousands
        # of digits is valid JSON that json.loads refuses with a plain ValueError.
        raise PoisonRecord("JSON number too long", raw) from None
    if not isinstance(document, dict):
        raise PoisonRecord(f"not a JSON object but {type(document).__name__}", raw)
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors(include_url=False))
        raise PoisonRecord(f"invalid {model.__name__}: {problems}", raw) from None


_RULE_MESSAGES = frozenset(
    {
        "missing",
        "string_type",
        "int_type",
        "bool_type",
        "dict_type",
        "list_type",
        "model_type",
        "datetime_type",
        "uuid_type",
        "enum",
        "literal_error",
        "int_parsing",
        "int_from_float",
        "string_too_short",
        "string_too_long",
        "string_pattern_mismatch",
        "too_short",
        "too_long",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "timezone_aware",
        "datetime_parsing",
        "datetime_from_date_parsing",
        "json_invalid",
        "value_error",
    }
)
"""pydantic error types whose message states only the field's rule (its type, bounds,
pattern, allowed values), a parser's fixed text (where a datetime or the JSON broke), or
our own validators' text, which never quotes the value.
Any other type is reported by its name alone: `uuid_parsing`'s message, for one, quotes
the offending character, and a reason goes into logs and DLQ headers (SPEC §13)."""


def _problem(error: ErrorDetails) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "<root>"
    kind = error["type"]
    return f"{where}: {error['msg'] if kind in _RULE_MESSAGES else kind.replace('_', ' ')}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What of a record fits a dead-letter record, and what had to be cut to fit."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    truncated: str
    """Empty, or what was cut (e.g. `value 2105096 bytes`): goes into a header."""


def dead_letter(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
) -> DeadLetter:
    """The record's key, value and headers, cut so the copy fits any DLQ topic.

    A record the broker accepted on a topic with a raised `max.message.bytes` can be
    larger than the DLQ (or the producer) takes; sending it whole fails every time and
    wedges the partition. Values up to MAX_RECORD_BYTES stay whole, larger ones keep
    their first MAX_RECORD_BYTES; key and original headers are bounded too, so the
    whole copy stays under the broker's default limit (1,048,588 bytes).
    """
    cut = []
    raw = value or b""
    if len(raw) > MAX_RECORD_BYTES:
        cut.append(f"value {len(raw)} bytes")
        raw = raw[:MAX_RECORD_BYTES]
    if key is not None and len(key) > DLQ_KEY_BYTES:
        cut.append(f"key {len(key)} bytes")
        key = key[:DLQ_KEY_BYTES]
    kept = list(headers)
    size = sum(len(k) + len(v) for k, v in kept)
    if size > DLQ_HEADERS_BYTES:
        cut.append(f"headers {size} bytes")
        kept = []
    return DeadLetter(key, raw, kept, ", ".join(cut))


def clip_text(text: str) -> bytes:
    """A header value from free text (an error message), bounded, and still UTF-8: a cut
    through a character drops that character's first bytes too."""
    return text.encode("utf-8")[:DLQ_TEXT_BYTES].decode("utf-8", "ignore").encode("utf-8")
