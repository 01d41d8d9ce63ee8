"""Fuzz target for `schemas.decode`: every input is a model that fits storage, or a poison.

`check(data)` is the property, shared by the hypothesis tests (tests/test_decode_properties.py)
and by the coverage-guided fuzzer. Run the fuzzer with `make fuzz` (atheris, libFuzzer
options after the module):

    python -m tests.fuzz.decode_target tests/fuzz/corpus -max_total_time=600

Any exception other than `PoisonRecord` escaping `decode`, a decoded model that
PostgreSQL or datetime arithmetic could not take, or a record msgspec's fast path decodes
otherwise than pydantic would (schemas/fast_decode.py), is a crash; libFuzzer saves the input.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from schemas import RetentionAck, RetentionEvent, ServiceRegistration, decode, encode
from schemas.codec import MAX_RECORD_BYTES, PoisonRecord, validate
from schemas.fast_decode import fast_decoder
from schemas.models import EARLIEST, LATEST, MAX_BIGINT, MAX_INTEGER, WireModel

__all__ = ["MODELS", "check", "check_fast_path", "check_storable"]

MODELS: tuple[type[WireModel], ...] = (RetentionEvent, RetentionAck, ServiceRegistration)

_LONGEST_INTERVAL = timedelta(days=3650)
"""More than any deadline or reminder interval a reader adds to a decoded timestamp."""


def check_storable(value: object) -> None:
    """Raise AssertionError unless every value in `value` fits PostgreSQL's types."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            check_storable(getattr(value, name))
    elif isinstance(value, str):
        assert "\x00" not in value, "NUL in a decoded string"
        value.encode("utf-8")  # lone surrogates raise UnicodeEncodeError
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        assert -MAX_BIGINT <= value <= MAX_BIGINT, f"int {value} beyond bigint"
    elif isinstance(value, datetime):
        assert value.tzinfo is UTC, "a decoded timestamp not in UTC"
        assert EARLIEST <= value < LATEST, f"timestamp {value} out of bounds"
        _ = value + _LONGEST_INTERVAL, value - _LONGEST_INTERVAL
    elif isinstance(value, list | tuple):
        for item in value:
            check_storable(item)


def check_fast_path(model: type[WireModel], data: bytes) -> bool:
    """What msgspec's path accepts, pydantic's accepts as the same model; True if taken."""
    if len(data) > MAX_RECORD_BYTES:
        return False
    fast = fast_decoder(model)(data)
    if fast is None:
        return False
    try:
        reference = validate(model, data)
    except PoisonRecord as exc:
        raise AssertionError(f"the fast path accepted what pydantic refuses: {exc}") from None
    assert fast == reference, "the fast path decoded other values"
    assert fast.model_fields_set == reference.model_fields_set, "other fields set"
    assert encode(fast) == encode(reference), "other bytes on re-encoding"
    return True


def check(data: bytes) -> None:
    for model in MODELS:
        check_fast_path(model, data)
        try:
            decoded = decode(model, data)
        except PoisonRecord:
            continue
        check_storable(decoded)
        if isinstance(decoded, RetentionAck):
            assert decoded.attempt <= MAX_INTEGER
        # What a reader accepted, a writer can send on: the round trip is exact.
        assert decode(model, encode(decoded)) == decoded


def main() -> None:
    import atheris  # only the fuzz extra installs it

    # Coverage feedback from our decoder and pydantic's Python layer (the JSON parsers
    # are C and Rust: libFuzzer sees their behaviour only through ours).
    atheris.instrument_all()
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
