"""The ack path's rows are positional (tuples and lists, not dicts): each value must sit
under its column's name, and `event_at` sent as milliseconds must be the function's time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from asyncpg.pgproto.pgproto import UUID as PgUUID
from hypothesis import given
from hypothesis import strategies as st

from coordinator.evidence.partitions import EPOCH, LedgerEventMs, ledger_event_at
from coordinator.tracking import ledger
from schemas import AckStatus, PoisonRecord, RetentionAck, decode

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


def _v7(minted: datetime) -> uuid.UUID:
    ms = int(minted.timestamp() * 1000)
    return uuid.UUID(bytes=ms.to_bytes(6, "big") + bytes([0x70]) + bytes(9))


def _ack(event_id: uuid.UUID, **fields: object) -> RetentionAck:
    values: dict[str, object] = {
        "event_id": event_id,
        "service": "billing",
        "entity_type": "user",
        "entity_id": "u-1",
        "status": AckStatus.COMPLETED,
        "records_affected": 1,
        "detail": "",
        "attempt": 1,
        "acknowledged_at": NOW,
    }
    return RetentionAck.model_validate(values | fields)


def test_a_ledger_row_holds_each_value_under_its_column() -> None:
    event_id = _v7(NOW - timedelta(hours=1))
    ack = _ack(
        event_id,
        status=AckStatus.FAILED,
        records_affected=0,
        detail="x" * 2048,
        attempt=3,
        acknowledged_at=NOW - timedelta(minutes=5, microseconds=123_457),
    )
    record = ledger.ConsumedAck("acks", 4, 77, ack, key_id="k1")
    row = dict(zip(ledger.LEDGER_COLUMNS[1:], ledger.ledger_row(record, NOW, None), strict=True))
    assert ledger.LEDGER_COLUMNS[0] == "received_at"  # bound once per insert, not per row
    assert row == {
        "kafka_topic": "acks",
        "kafka_partition": 4,
        "kafka_offset": 77,
        "event_id": event_id,
        "service": "billing",
        "entity_type": "user",
        "entity_id": "u-1",
        "status": "failed",
        "records_affected": 0,
        "attempt": 3,
        "detail": "x" * 2000,
        "acknowledged_us": _us(NOW - timedelta(minutes=5, microseconds=123_457)),
        "accepted": True,
        "reject_reason": None,
        "key_id": "k1",
        "event_ms": _ms(ledger_event_at(event_id, NOW)),
    }
    poison = ledger.ConsumedAck("acks", 0, 1, None, "not json")
    refused = ledger.ledger_row(poison, NOW, ledger.RejectReason.MALFORMED)
    assert dict(zip(ledger.LEDGER_COLUMNS[1:], refused, strict=True)) == {
        **dict.fromkeys(ledger.LEDGER_COLUMNS[1:]),
        "kafka_topic": "acks",
        "kafka_partition": 0,
        "kafka_offset": 1,
        "detail": "not json",
        "accepted": False,
        "reject_reason": "malformed",
        "event_ms": 0,
    }


_PERSONAL = "jane.doe@example.com"
_GOOD = (
    '{"event_id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","service":"billing",'
    '"entity_type":"user","entity_id":"u-1","status":"completed","records_affected":1,'
    '"acknowledged_at":"2026-12-06T12:00:00Z"}'
)


@pytest.mark.parametrize(
    "raw",
    [
        _GOOD.replace('"u-1"', "1").replace('"billing"', f'"{_PERSONAL}", "x": 1'),
        _GOOD.replace('"completed"', f'"{_PERSONAL}"'),
        _GOOD.replace("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", _PERSONAL),
        _GOOD.replace("2026-12-06T12:00:00Z", _PERSONAL),
        _GOOD.replace('"u-1"', '"' + _PERSONAL * 20 + '"'),
        _GOOD.replace('"u-1"', f'"{_PERSONAL}\u0000"'),
        _GOOD.replace("1,", f'"{_PERSONAL}",'),
        _GOOD.replace('"u-1"', "{" + f'"{_PERSONAL}": 1' + "}"),
        f'["{_PERSONAL}"]',
        f'{{"entity_id": "{_PERSONAL}"',
        f'"{_PERSONAL}"',
        _PERSONAL,
    ],
)
def test_a_malformed_acks_row_keeps_its_reason_and_size_not_its_text(raw: str) -> None:
    value = raw.encode()
    with pytest.raises(PoisonRecord) as poison:
        decode(RetentionAck, value)
    record = ledger.malformed("acks", 0, 7, poison.value.reason, value)
    row = ledger.ledger_row(record, NOW, ledger.RejectReason.MALFORMED)
    assert all(_PERSONAL not in str(v) and "jane" not in str(v) for v in row), row
    detail = row[ledger.LEDGER_COLUMNS[1:].index("detail")]
    assert detail == f"{poison.value.reason} ({len(value)} bytes)"


def test_a_malformed_acks_size_outlasts_a_long_reason() -> None:
    record = ledger.malformed("acks", 0, 7, "x" * 5000, None)
    row = ledger.ledger_row(record, NOW, ledger.RejectReason.MALFORMED)
    detail = row[ledger.LEDGER_COLUMNS[1:].index("detail")]
    assert (len(detail), detail[-11:]) == (2000, "x (0 bytes)")


def test_a_ledger_row_names_a_known_event_by_the_id_it_is_given() -> None:
    # `_judge` passes the locked events' ids as asyncpg read them: asyncpg encodes its own
    # UUID by copying its bytes, a stdlib one through the Python property `bytes`.
    known, unknown = _v7(NOW - timedelta(hours=1)), _v7(NOW - timedelta(hours=2))
    read_back = PgUUID(str(known))
    at = ledger.LEDGER_COLUMNS[1:].index("event_id")
    named = {}
    for event_id in (known, unknown):
        record = ledger.ConsumedAck("acks", 0, 1, _ack(event_id))
        row = ledger.ledger_row(record, NOW, None, ids={known.int: read_back})
        assert row == ledger.ledger_row(record, NOW, None)  # the same values
        named[event_id] = row[at]
    assert named[known] is read_back
    assert type(named[unknown]) is uuid.UUID


def test_a_refused_sender_or_a_late_ack_leaves_no_entity_id() -> None:
    # An unverified sender's entity id is anyone's claim, read before any event is: its
    # event may name the entity by its HMAC by now. A mismatch keeps it (the event is
    # locked and known to be in clear).
    record = ledger.ConsumedAck("acks", 0, 1, _ack(_v7(NOW)))
    at = ledger.LEDGER_COLUMNS[1:].index("entity_id")
    kept = {
        reason: ledger.ledger_row(record, NOW, reason)[at]
        for reason in (
            None,
            ledger.RejectReason.BAD_SIGNATURE,
            ledger.RejectReason.UNKNOWN_SERVICE,
            ledger.RejectReason.EVIDENCE_EXPIRED,
            ledger.RejectReason.VERIFICATION_EXPIRED,
            ledger.RejectReason.ENTITY_MISMATCH,
        )
    }
    assert {reason for reason, entity in kept.items() if entity is not None} == {
        None,
        ledger.RejectReason.ENTITY_MISMATCH,
    }


@given(st.lists(st.integers(min_value=-(2**47), max_value=2**48 - 1), max_size=30))
def test_event_ms_is_the_function_in_milliseconds(offsets_ms: list[int]) -> None:
    # Ids minted before, at and after the batch's arrival (a made-up id ahead of it), some
    # sharing a millisecond; and None.
    now_ms = int(NOW.timestamp() * 1000)
    ids = [
        uuid.UUID(int=(((now_ms + d) % 2**48) << 80) | (i << 8)) for i, d in enumerate(offsets_ms)
    ]
    event_ms = LedgerEventMs(NOW)
    for event_id in [*ids, None]:
        assert event_ms(event_id) == _ms(ledger_event_at(event_id, NOW))


def _ms(at: datetime) -> int:
    return (at - EPOCH) // timedelta(milliseconds=1)


def _us(at: datetime) -> int:
    # Whole seconds and the microsecond apart, not the code's timedelta division.
    return round(at.timestamp() - at.microsecond / 1e6) * 1_000_000 + at.microsecond


def test_ids_sorted_by_int_are_sorted() -> None:
    ids = [uuid.uuid4() for _ in range(500)] + [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)]
    assert ledger.sorted_ids(ids) == sorted(ids)
