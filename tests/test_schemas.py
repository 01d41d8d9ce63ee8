"""Wire models: round trips, bad input, and JSON Schema drift."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from schemas import (
    MAX_RECORD_BYTES,
    AckStatus,
    EventType,
    HandledEntity,
    PoisonRecord,
    RetentionAck,
    RetentionEvent,
    ServiceRegistration,
    Topics,
    dead_letter,
    decode,
    encode,
)
from schemas.export import JSON_DIR, render

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def make_event(**overrides: object) -> RetentionEvent:
    fields: dict[str, object] = {
        "event_id": uuid.uuid4(),
        "type": EventType.ANONYMIZE,
        "entity_type": "order",
        "entity_id": "1001",
        "policy": "purchase_records",
        "legal_basis": "Legal obligation (tax records)",
        "initiated_at": NOW,
        "deadline": NOW + timedelta(days=30),
        "fields": ["customer_name", "email"],
        "run_id": uuid.uuid4(),
    }
    fields.update(overrides)
    return RetentionEvent.model_validate(fields)


def as_dict(model: RetentionEvent) -> dict[str, object]:
    return dict(json.loads(encode(model)))


def test_event_round_trip() -> None:
    event = make_event()
    assert decode(RetentionEvent, encode(event)) == event
    assert event.key == "order:1001"


def test_ack_and_registration_round_trip() -> None:
    ack = RetentionAck(
        event_id=uuid.uuid4(),
        service="billing",
        entity_type="order",
        entity_id="1001",
        status=AckStatus.NOT_FOUND,
        records_affected=0,
        acknowledged_at=NOW,
    )
    assert decode(RetentionAck, encode(ack)) == ack
    assert ack.key == str(ack.event_id)
    registration = ServiceRegistration(
        service="billing",
        handles=[HandledEntity(entity_type="order", actions=[EventType.ANONYMIZE])],
        sdk_version="0.1.0",
        registered_at=NOW,
    )
    assert decode(ServiceRegistration, encode(registration)) == registration


def test_timestamps_are_rfc3339_utc() -> None:
    event = make_event(initiated_at=datetime(2026, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2))))
    assert as_dict(event)["initiated_at"] == "2026-01-01T00:00:00.000000Z"
    assert decode(RetentionEvent, encode(event)).initiated_at.tzinfo == UTC


def test_naive_timestamp_is_rejected() -> None:
    document = as_dict(make_event())
    document["initiated_at"] = "2026-01-01T00:00:00"
    with pytest.raises(PoisonRecord, match="initiated_at"):
        decode(RetentionEvent, json.dumps(document).encode())


def test_unknown_fields_are_ignored() -> None:
    document = as_dict(make_event())
    document["added_in_a_later_minor"] = {"x": 1}
    assert decode(RetentionEvent, json.dumps(document).encode()).entity_id == "1001"


def test_missing_field_is_poison_naming_the_field() -> None:
    document = as_dict(make_event())
    del document["entity_id"]
    with pytest.raises(PoisonRecord, match="entity_id: Field required") as info:
        decode(RetentionEvent, json.dumps(document).encode())
    assert info.value.raw is not None


def test_wrong_type_is_poison() -> None:
    document = as_dict(make_event())
    document["entity_id"] = 1001  # strict: a number is not an id string
    with pytest.raises(PoisonRecord, match="entity_id"):
        decode(RetentionEvent, json.dumps(document).encode())


def test_higher_schema_version_is_poison() -> None:
    document = as_dict(make_event())
    document["schema_version"] = 2
    with pytest.raises(
        PoisonRecord, match="schema_version is newer than the highest this reader knows"
    ):
        decode(RetentionEvent, json.dumps(document).encode())


@pytest.mark.parametrize(
    "raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000]
)
def test_deeply_nested_json_is_poison_not_a_crash(raw: bytes) -> None:
    # Found by fault scenario 5: a RecursionError escaped decode and stalled the consumer.
    with pytest.raises(PoisonRecord, match="nested too deeply"):
        decode(RetentionEvent, raw)


def test_unknown_event_type_is_poison() -> None:
    document = as_dict(make_event())
    document["type"] = "shred"
    with pytest.raises(PoisonRecord, match="type"):
        decode(RetentionEvent, json.dumps(document).encode())


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json at all", "not JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[1, 2, 3]", "not a JSON object but list"),
        (None, "tombstone"),
        (b"{" + b" " * 1_000_001 + b"}", "exceeds"),
    ],
)
def test_undecodable_bytes_are_poison(raw: bytes | None, reason: str) -> None:
    with pytest.raises(PoisonRecord, match=reason) as info:
        decode(RetentionEvent, raw)
    assert info.value.raw == raw


def test_topics_derive_from_one_prefix() -> None:
    assert Topics().all() == (
        "data.retention",
        "data.retention.acks",
        "data.retention.services",
        "data.retention.dlq",
        "data.retention.holds",
        "data.retention.erased",
        "data.retention.audit",
    )
    assert Topics().compacted == (
        "data.retention.services",
        "data.retention.holds",
        "data.retention.erased",
        "data.retention.audit",
    )
    assert Topics("staging.retention").acks == "staging.retention.acks"


def test_committed_json_schemas_match_the_models() -> None:
    committed = {p.name: p.read_text(encoding="utf-8") for p in JSON_DIR.glob("*.json")}
    assert committed == render(), "schemas/json drifted from the models: run `make schemas`"


def test_dead_letter_copy_fits_the_dlq_whatever_the_record() -> None:
    # Found by fault scenario 5: a 2 MB record (its topic allowed it) could not be
    # dead-lettered, so every consumer re-read its batch forever.
    whole = dead_letter(b"user:1", b"x" * MAX_RECORD_BYTES, [("h", b"v")])
    assert (whole.key, len(whole.value), whole.headers, whole.truncated) == (
        b"user:1",
        MAX_RECORD_BYTES,
        [("h", b"v")],
        "",
    )
    cut = dead_letter(b"k" * 5000, b"y" * 2_000_000, [("big", b"z" * 20_000)])
    assert len(cut.value) == MAX_RECORD_BYTES
    assert cut.key == b"k" * 1024
    assert cut.headers == []
    assert cut.truncated == "value 2000000 bytes, key 5000 bytes, headers 20003 bytes"
    assert dead_letter(None, None).value == b""
