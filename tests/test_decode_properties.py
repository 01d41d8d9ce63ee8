"""`decode` ends every wrong record as `PoisonRecord`, and what it accepts fits storage.

The property (tests/fuzz/decode_target.py `check`) runs here over arbitrary bytes and over
arbitrary JSON shaped like each wire model; `make fuzz` runs it coverage-guided.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import (
    AckStatus,
    EventReason,
    EventType,
    PoisonRecord,
    RetentionAck,
    RetentionEvent,
    ServiceRegistration,
    decode,
    encode,
)
from schemas.codec import DLQ_TEXT_BYTES, clip_text, validate
from schemas.fast_decode import fast_decoder
from schemas.models import MAX_BIGINT, MAX_INTEGER, WireModel
from tests.fuzz.decode_target import MODELS, check, check_fast_path

FUZZ_DIR = Path(__file__).parent / "fuzz"

_offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ),
)
_timestamps = st.datetimes(min_value=datetime.min, max_value=datetime.max, timezones=_offsets).map(
    datetime.isoformat
)
_edge_ints = st.sampled_from(
    [0, -1, 1, MAX_INTEGER, MAX_INTEGER + 1, MAX_BIGINT, MAX_BIGINT + 1, -(2**63) - 1, 10**30]
)
_edge_text = st.sampled_from(["", "a\x00b", "\ud800", "x" * 256, "x" * 5000, "é" * 300])
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
_scalars = (
    _timestamps
    | _edge_ints
    | _edge_text
    | st.uuids().map(str)
    | st.sampled_from([*EventType, *AckStatus]).map(str)
    | st.integers()
    | st.text()
)


def _field_values(depth: int = 2) -> st.SearchStrategy[Any]:
    values = _scalars | _json | st.lists(_scalars, max_size=3)
    if depth:
        # Nested models (handles) get documents shaped like them too.
        values |= st.lists(
            st.fixed_dictionaries(
                {"entity_type": _scalars, "actions": st.lists(_scalars, max_size=3)}
            ),
            max_size=3,
        )
    return values


def _shaped_like(model: type[WireModel]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=dict.fromkeys(model.model_fields, _field_values()))


def _serialised(document: dict[str, Any], ascii_only: bool) -> bytes:
    # ensure_ascii=False leaves lone surrogates raw: surrogatepass turns them into
    # the invalid UTF-8 a hostile producer can send.
    return json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_decode_or_are_poison(data: bytes) -> None:
    check(data)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_json_shaped_like_each_model_decodes_or_is_poison(
    model: type[WireModel], data: st.DataObject
) -> None:
    document = data.draw(_shaped_like(model))
    check(_serialised(document, data.draw(st.booleans())))


def _ack(**overrides: Any) -> bytes:
    ack = RetentionAck(
        event_id=uuid.uuid4(),
        service="billing",
        entity_type="user",
        entity_id="1",
        status=AckStatus.COMPLETED,
        records_affected=1,
        acknowledged_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    document = {**json.loads(encode(ack)), **overrides}
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # Each of these passed validation once and then failed in a reader.
        (_ack(acknowledged_at="0001-01-01T00:00:00+14:00"), "acknowledged_at"),
        (_ack(acknowledged_at="9999-12-31T23:59:59-14:00"), "acknowledged_at"),
        (_ack(entity_id="a\x00b"), "entity_id"),
        (_ack(detail="NUL \x00 in the detail"), "detail"),
        (_ack(records_affected=2**63), "records_affected"),
        (_ack(attempt=2**31), "attempt"),
        (_ack(detail="x" * 100_000), "detail"),
        (_ack(entity_id="é" * 256), "entity_id"),
        (_ack(detail="\ud800"), "Invalid JSON"),
        (b'{"attempt": ' + b"1" * 5000 + b"}", "number too long"),
        (b'{"a":' + b"[" * 300 + b"]" * 300 + b"}", "recursion limit"),
    ],
)
def test_values_a_reader_cannot_store_are_poison(raw: bytes, reason: str) -> None:
    with pytest.raises(PoisonRecord, match=reason):
        decode(RetentionAck, raw)
    check(raw)


def test_fuzz_corpus_still_passes() -> None:
    """Every input the fuzzer kept (tests/fuzz/corpus) is a regression test."""
    corpus = sorted((FUZZ_DIR / "corpus").iterdir())
    assert len(corpus) >= len(MODELS)
    for path in corpus:
        check(path.read_bytes())


def test_fuzz_dictionary_names_every_wire_field() -> None:
    tokens = (FUZZ_DIR / "decode.dict").read_text(encoding="utf-8")
    fields = {name for model in MODELS for name in model.model_fields} | {"actions"}
    assert {name for name in fields if f'"\\"{name}\\":"' not in tokens} == set()


# --- a poison reason never quotes the record ----------------------------------------------
# Reasons go into logs, DLQ headers and metrics labels' neighbours (SPEC §13); the record
# itself may hold personal data. Input here is written in the private-use area, which no
# rule text contains, so any such character in a reason was copied from the input.

_PRIVATE = st.characters(min_codepoint=0xE000, max_codepoint=0xF8FF)
_marked_text = st.text(alphabet=_PRIVATE, min_size=1, max_size=20)
_marked_values = (
    _marked_text
    | st.text(alphabet=_PRIVATE, min_size=300, max_size=3000)
    | st.uuids().map(str).flatmap(lambda u: _PRIVATE.map(lambda c: u[:-1] + c))
    | st.lists(_marked_text, max_size=3)
    | st.dictionaries(_marked_text, _marked_text, max_size=2)
    | st.lists(st.dictionaries(_marked_text, _marked_text, max_size=2), max_size=2)
    | _scalars
)


def _quoted(reason: str) -> str:
    return "".join(c for c in reason if 0xE000 <= ord(c) <= 0xF8FF)


_storable = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
_names = st.text(_storable, min_size=1, max_size=20)
_minute_offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
_valid_timestamps = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(8999, 12, 30), timezones=_minute_offsets
).map(lambda value: value.isoformat(timespec=random_timespec(value)))


def random_timespec(value: datetime) -> str:
    """Writers differ: whole seconds, milliseconds or microseconds, `Z` or an offset."""
    return ("seconds", "milliseconds", "microseconds", "auto")[value.microsecond % 4]


_valid = {
    RetentionEvent: st.fixed_dictionaries(
        {
            "event_id": st.uuids().map(str),
            "type": st.sampled_from([*EventType]).map(str),
            "entity_type": _names,
            "entity_id": _names,
            "policy": _names,
            "legal_basis": st.text(_storable, max_size=50),
            "initiated_at": _valid_timestamps,
            "deadline": _valid_timestamps.map(
                lambda text: text[:-6] + "Z" if text.endswith("+00:00") else text
            ),
        },
        optional={
            "schema_version": st.just(1),
            "fields": st.lists(_names, max_size=4),
            "run_id": st.none() | st.uuids().map(lambda value: value.hex),
            "reason": st.sampled_from([*EventReason]).map(str),
            "request_id": st.none() | st.uuids().map(str),
            "subject": st.none() | st.tuples(_names, _names).map(":".join),
        },
    ),
    RetentionAck: st.fixed_dictionaries(
        {
            "event_id": st.uuids().map(str),
            "service": _names,
            "entity_type": _names,
            "entity_id": _names,
            "status": st.sampled_from([*AckStatus]).map(str),
            "records_affected": st.integers(0, MAX_BIGINT),
            "acknowledged_at": _valid_timestamps,
        },
        optional={
            "detail": st.text(_storable, max_size=50),
            "attempt": st.integers(1, MAX_INTEGER),
            "schema_version": st.just(1),
        },
    ),
    ServiceRegistration: st.fixed_dictionaries(
        {
            "service": _names,
            "handles": st.lists(
                st.fixed_dictionaries(
                    {
                        "entity_type": _names,
                        "actions": st.lists(st.sampled_from([*EventType]).map(str), max_size=2),
                    }
                ),
                max_size=3,
            ),
            "sdk_version": _names,
            "registered_at": _valid_timestamps,
        }
    ),
}


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_poison_reason_never_quotes_the_record(
    model: type[WireModel], data: st.DataObject
) -> None:
    document = data.draw(
        st.fixed_dictionaries({}, optional=dict.fromkeys(model.model_fields, _marked_values))
    )
    reason = ""
    try:
        decode(model, _serialised(document, data.draw(st.booleans())))
    except PoisonRecord as poison:
        reason = poison.reason
    assert _quoted(reason) == "", reason


def test_a_bad_uuid_is_named_by_its_field_not_quoted() -> None:
    # pydantic's own message quotes the offending character ("found `` at 35").
    with pytest.raises(PoisonRecord) as caught:
        decode(RetentionAck, _ack(event_id="6f1c2e4a-0b5d-4c8e-9a7f-3d2b1e0c9a8\ue123"))
    assert caught.value.reason == "invalid RetentionAck: event_id: uuid parsing"


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_valid_records_take_msgspecs_path_and_equal_pydantics(
    model: type[WireModel], data: st.DataObject
) -> None:
    """The fast path is the one genuine records take, and it changes no value (byte-identical
    re-encoding, the same fields set) against pydantic's."""
    document = data.draw(_valid[model])
    raw = _serialised(document, data.draw(st.booleans()))
    # NUL-free, surrogate-free and within every bound by construction.
    assert check_fast_path(model, raw), validate(model, raw)
    check(raw)


@pytest.mark.parametrize(
    "raw",
    [
        # pydantic accepts each; the fast path leaves them to it (stricter on purpose).
        b'{"service":"s","handles":[],"sdk_version":"1","registered_at":"2026-01-01 00:00:00Z"}',
        b'{"service":"s","handles":[],"sdk_version":"1","registered_at":"2026-01-01T00:00:00z"}',
        b'{"service":"s","handles":[],"sdk_version":"1","registered_at":"2026-01-01T00:00:00Z",'
        b'"unknown":1}',
    ],
)
def test_records_off_the_fast_path_decode_as_before(raw: bytes) -> None:
    assert fast_decoder(ServiceRegistration)(raw) is None
    assert decode(ServiceRegistration, raw) == validate(ServiceRegistration, raw)


def test_a_remembered_timestamp_decodes_as_the_first_time_and_a_refused_one_stays_refused() -> None:
    """Timestamps are remembered by their text (the events of a batch share theirs): the
    second record with the same text decodes to pydantic's value again, and a text out of
    bounds is never remembered."""
    head = b'{"service":"s","handles":[],"sdk_version":"1","registered_at":'
    ok, late = head + b'"2026-01-01T05:30:00+05:30"}', head + b'"9000-01-01T00:00:00Z"}'
    for _ in range(2):
        assert fast_decoder(ServiceRegistration)(ok) == validate(ServiceRegistration, ok)
        assert decode(ServiceRegistration, ok).registered_at.tzinfo is UTC
        assert fast_decoder(ServiceRegistration)(late) is None


def test_a_record_with_every_field_and_one_leaving_some_out_equal_pydantics() -> None:
    """Both shapes of the fast path: every field given (what our writers send, decoded
    without a look for left-out fields) and optional fields left out (their defaults
    filled in, and not counted as set)."""
    event = RetentionEvent(
        event_id=uuid.uuid4(),
        type=EventType.DELETE,
        entity_type="user",
        entity_id="42",
        policy="p",
        legal_basis="b",
        initiated_at=datetime(2026, 1, 1, tzinfo=UTC),
        deadline=datetime(2026, 2, 1, tzinfo=UTC),
        run_id=uuid.uuid4(),
    )
    whole = encode(event)
    document = json.loads(whole)
    for name in ("fields", "run_id", "reason", "request_id", "subject", "schema_version"):
        del document[name]
    partial = json.dumps(document).encode()
    for raw, fields_set in ((whole, set(RetentionEvent.model_fields)), (partial, set(document))):
        assert check_fast_path(RetentionEvent, raw)
        assert fast_decoder(RetentionEvent)(raw).model_fields_set == fields_set


@given(st.text(min_size=0, max_size=1500))
def test_a_clipped_header_text_is_valid_utf8_within_the_bound(text: str) -> None:
    """An error message cut to the DLQ header's bound never ends inside a character:
    readers in any language take header values as UTF-8."""
    clipped = clip_text(text)
    assert len(clipped) <= DLQ_TEXT_BYTES
    assert text.startswith(clipped.decode("utf-8"))
    assert len(clipped) > DLQ_TEXT_BYTES - 4 or clipped == text.encode("utf-8")


def test_a_cut_through_a_character_drops_it_whole() -> None:
    clipped = clip_text("a" + "€" * 999)
    assert clipped.decode("utf-8") == "a" + "€" * ((DLQ_TEXT_BYTES - 1) // 3)
