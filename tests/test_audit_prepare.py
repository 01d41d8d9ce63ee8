"""An entry serialized before the chain lock hashes exactly as `canonical` says."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from coordinator.evidence import audit
from coordinator.tracking import ledger
from schemas import AckStatus, RetentionAck

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.uuids(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(
    data=st.dictionaries(st.text(), json_values, max_size=5),
    seq=st.integers(min_value=1, max_value=2**62),
    offset_s=st.integers(min_value=-(10**8), max_value=10**8),
)
def test_prepared_bytes_are_canonical(data: dict[str, object], seq: int, offset_s: int) -> None:
    at = T0 + timedelta(seconds=offset_s, microseconds=offset_s % 1_000_000)
    [prepared] = audit.prepare([audit.AuditEntry("acks_accepted", "tracker", data)], at=at)
    assert prepared.head + b'"seq":%d}' % seq == audit.canonical(seq, at, prepared.entry)


def test_prepared_data_is_what_is_stored() -> None:
    event = uuid.uuid4()
    [prepared] = audit.prepare(
        [audit.AuditEntry("events_completed", "tracker", {"events": [event]})], at=T0
    )
    assert prepared.entry.data == {"events": [str(event)]}


@given(st.lists(st.uuids() | st.none(), max_size=50))
def test_id_texts_are_what_prepare_stores(ids: list[uuid.UUID | None]) -> None:
    assert audit.id_texts(ids) == [None if i is None else str(i) for i in ids]


def test_an_ack_batch_entries_are_json_native() -> None:
    """The ledger prepares its entries with `json_native=True`: what it builds must come
    back from JSON unchanged, or the stored entry would not be what was hashed."""
    event = uuid.uuid4()
    acks = [
        RetentionAck(
            event_id=event,
            service="billing",
            entity_type="user",
            entity_id="7",
            status=status,
            records_affected=0 if status is AckStatus.NOT_FOUND else 2,
            detail="",
            attempt=1,
            acknowledged_at=T0,
        )
        for status in (AckStatus.COMPLETED, AckStatus.NOT_FOUND)
    ]
    outcome = ledger.LedgerOutcome(records=3, accepted=acks)
    outcome.rejected = [
        (ledger.ConsumedAck("acks", 0, 9, acks[0]), ledger.RejectReason.BAD_SIGNATURE),
        (ledger.ConsumedAck("acks", 0, 10, None, "not JSON"), ledger.RejectReason.MALFORMED),
    ]
    transitions = [
        ledger.Transition(event, "completed", 1, T0),
        ledger.Transition(uuid.uuid4(), "failed", 1, None),
    ]
    entries = ledger._audit_entries(outcome, transitions)
    assert [e.action for e in entries] == [
        "acks_accepted",
        "acks_rejected",
        "events_completed",
        "events_failed",
    ]
    for entry in entries:
        assert json.loads(json.dumps(entry.data)) == entry.data
        [prepared] = audit.prepare([entry], at=T0, json_native=True)
        [round_tripped] = audit.prepare([entry], at=T0)
        assert prepared == round_tripped


native_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(
    data=st.dictionaries(st.text(), native_values, max_size=5),
    seq=st.integers(min_value=1, max_value=2**62),
)
def test_json_native_data_hashes_and_stores_as_canonical(data: dict[str, object], seq: int) -> None:
    """The msgspec path (and its fallback on text `json.dumps` escapes, or ints msgspec
    cannot hold) gives `canonical`'s bytes, and the text stored is the data hashed."""
    entry = audit.AuditEntry("acks_accepted", "tracker", data)
    [prepared] = audit.prepare([entry], at=T0, json_native=True)
    assert prepared.head + b'"seq":%d}' % seq == audit.canonical(seq, T0, entry)
    assert json.loads(prepared.data_json) == data


def test_json_native_text_json_escapes_takes_the_canonical_path() -> None:
    for text in ("é", "\x7f", "\n", 'a"b', "\\", "\u2028", "\ud800"):
        data = {"k": [text], text: 2**70}
        [prepared] = audit.prepare([audit.AuditEntry("a", "t", data)], at=T0, json_native=True)
        assert prepared.data_json == json.dumps(data, sort_keys=True, separators=(",", ":"))
