"""The relay's event encoding: exactly the bytes of `schemas.encode`, exactly the events
`RetentionEvent` accepts, one per entity of an outbox batch."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from coordinator.outbox import events
from coordinator.outbox.events import (
    BATCH_COLUMNS,
    SHARED,
    BatchEncoder,
    event_id,
    event_id_texts,
)
from coordinator.store.tables import outbox_batches
from schemas import EventReason, EventType, RetentionEvent, encode
from schemas.event_json import PER_EVENT, EventTemplate
from tests.native import native_or_skip

# Quotes, backslashes, every control character but NUL, DEL, the JSON-hostile line separators,
# non-ASCII and astral characters: everything whose escaping could differ.
AWKWARD = [
    'quote " and \\ backslash',
    # NUL is not storable, so the model refuses it (schemas.models.STORABLE_TEXT).
    "".join(chr(c) for c in range(1, 0x20)) + "\x7f",
    "line\u2028para\u2029end",
    "Zoë Ærø — 東京 🙂",
    "</script> & 'single'",
    "x" * 255,
]
OFFSETS = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]


def sample_events(count: int) -> list[RetentionEvent]:
    rng = random.Random(7)
    base = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    events = []
    for i in range(count):
        initiated = (base + timedelta(seconds=rng.randrange(10**7), microseconds=i)).astimezone(
            rng.choice(OFFSETS)
        )
        events.append(
            RetentionEvent(
                event_id=uuid.UUID(int=rng.getrandbits(128)),
                type=rng.choice(list(EventType)),
                entity_type=rng.choice(["user", "order", *AWKWARD]),
                entity_id=rng.choice([str(100_000 + i), *AWKWARD]),
                policy=rng.choice(["session_logs", *AWKWARD]),
                legal_basis=rng.choice(["", "GDPR Art. 17", *AWKWARD]),
                initiated_at=initiated,
                # Whole seconds too: isoformat must still print the microseconds.
                deadline=initiated.replace(microsecond=0) + timedelta(days=rng.randrange(90)),
                fields=rng.sample(["email", "name", *AWKWARD], rng.randrange(4)),
                run_id=rng.choice([None, uuid.UUID(int=rng.getrandbits(128))]),
                reason=rng.choice(list(EventReason)),
                request_id=rng.choice([None, uuid.UUID(int=rng.getrandbits(128))]),
                subject=rng.choice([None, "user:42", *(f"user:{a}" for a in AWKWARD)]),
            )
        )
    return events


def shared_of(event: RetentionEvent) -> dict[str, Any]:
    """The outbox columns of `SHARED` for the event's batch."""
    values = {**dict(event), "type": event.type.value, "reason": event.reason.value}
    values["fields"] = list(event.fields)
    return {column: values[name] for name, column in SHARED.items()}


def batch_of(
    events: list[RetentionEvent], *, first: int = 1
) -> tuple[dict[str, Any], list[RetentionEvent]]:
    """An outbox batch row with `events`' entities and the first event's shared fields, and
    the events the relay must make of it (ids computed from the batch)."""
    base = event_id(uuid.uuid4(), 0)
    row = {
        **shared_of(events[0]),
        "seq": 1,
        "id_base": base,
        "id_first": first,
        "entity_ids": [e.entity_id for e in events],
        "subjects": [e.subject for e in events],
    }
    expected = [
        events[0].model_copy(
            update={
                "event_id": event_id(base, first + n),
                "entity_id": e.entity_id,
                "subject": e.subject,
            }
        )
        for n, e in enumerate(events)
    ]
    return row, expected


@pytest.fixture(autouse=True, params=["native", "python"])
def expansion(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both ways of making a batch's records: the C module
    (`coordinator.outbox._expand`) and the Python reference."""
    if request.param == "python":
        monkeypatch.setattr(events, "_expand", None)
    else:
        native_or_skip(events.EXPANSION == "native", "coordinator.outbox._expand")
    return str(request.param)


def test_the_mapping_covers_every_field_of_the_event() -> None:
    # A field added to RetentionEvent needs one line in SHARED (and a column), or is per event.
    assert set(SHARED) | set(PER_EVENT) | {"schema_version"} == set(RetentionEvent.model_fields)
    assert set(SHARED).isdisjoint(PER_EVENT)
    assert set(BATCH_COLUMNS) <= set(outbox_batches.c.keys())


def test_event_ids_are_those_of_the_sql_function() -> None:
    # retention_uuidv7_nth(base, n): the base's first 12 bytes, then n as a signed int4.
    base = uuid.UUID("01890a5d-ac96-7abc-8def-0123456789ab")
    assert event_id(base, 1) == uuid.UUID("01890a5d-ac96-7abc-8def-012300000001")
    assert event_id(base, -1) == uuid.UUID("01890a5d-ac96-7abc-8def-0123ffffffff")
    assert event_id(event_id(base, 77), 0) == event_id(base, 0)


@pytest.mark.parametrize("first", [0, 1, 77, 2**31 - 3, -1, -(2**31)])
def test_event_id_texts_are_the_ids_as_text(first: int) -> None:
    base = uuid.UUID("01890a5d-ac96-7abc-8def-0123456789ab")
    assert event_id_texts(base, first, 3) == [str(event_id(base, first + n)) for n in range(3)]


def test_batch_bytes_equal_encode_on_a_varied_sample() -> None:
    events = sample_events(2000)
    assert {e.run_id is None for e in events} == {True, False}
    assert {bool(e.fields) for e in events} == {True, False}
    assert {e.subject is None for e in events} == {True, False}
    assert {e.reason for e in events} == set(EventReason)
    encoder = BatchEncoder()
    for start in range(0, len(events), 37):
        row, expected = batch_of(events[start : start + 37], first=start)
        encoded = encoder(row)
        assert encoded.event_ids == [str(e.event_id) for e in expected]
        assert encoded.errors == {}
        assert encoded.values == [encode(e) for e in expected]
        assert encoded.keys == [e.key.encode() for e in expected]


def test_a_template_placeholder_in_a_shared_field_falls_back_to_the_model() -> None:
    event = sample_events(1)[0].model_copy(update={"policy": "\ue000entity\ue000"})
    row, expected = batch_of([event, event.model_copy(update={"entity_id": "\ue000entity\ue000"})])
    assert EventTemplate.of({n: getattr(event, n) for n in SHARED}) is None
    assert BatchEncoder()(row).values == [encode(e) for e in expected]


def test_batch_without_subjects_has_null_subjects() -> None:
    events = [e.model_copy(update={"subject": None}) for e in sample_events(3)]
    row, expected = batch_of(events)
    row["subjects"] = None
    assert BatchEncoder()(row).values == [encode(e) for e in expected]


def bad_batches() -> list[tuple[str, dict[str, Any]]]:
    good = sample_events(1)[0].model_copy(update={"fields": ["a", "b", "c"]})
    row, _ = batch_of([good])

    def bad(**change: Any) -> dict[str, Any]:
        return {**row, **change}

    return [
        ("unknown event type", bad(event_type="shred")),
        ("empty entity id", bad(entity_ids=[""])),
        ("entity id too long", bad(entity_ids=["x" * 256])),
        ("entity id not text", bad(entity_ids=[7])),
        ("fields a string spelling the good fields", bad(fields="abc")),
        ("fields an object with the good fields as keys", bad(fields=dict.fromkeys("abc"))),
        ("fields with a number", bad(fields=["a", 1])),
        ("fields with an unhashable item", bad(fields=["a", {"b": 1}])),
        ("naive timestamp", bad(deadline=good.deadline.replace(tzinfo=None))),
        ("empty policy", bad(policy="")),
        ("NUL in the entity id", bad(entity_ids=["4\x002"])),
        ("NUL in the policy", bad(policy="a\x00b")),
        ("timestamp before 1970", bad(deadline=good.deadline.replace(year=1969))),
        ("unknown reason", bad(reason="curiosity")),
        ("request id not a UUID", bad(request_id="42")),
        ("subject without a type", bad(subjects=["42"])),
        ("subject not text", bad(subjects=[42])),
    ]


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "after a good batch"])
def test_encoder_refuses_exactly_what_the_model_refuses(warm: bool) -> None:
    good = sample_events(1)[0]
    for reason, row in bad_batches():
        encoder = BatchEncoder()
        if warm:
            encoder(batch_of([good])[0])
        encoded = encoder(row)
        assert list(encoded.errors) == [0], reason
        assert encoded.values == [b""], reason
        assert encoded.keys == [b""], reason


def test_one_bad_entity_spoils_only_its_own_event() -> None:
    events = sample_events(3)
    row, expected = batch_of(events)
    row["entity_ids"] = [events[0].entity_id, "", events[2].entity_id]
    out = BatchEncoder()(row)
    assert list(out.errors) == [1]
    assert out.values == [encode(expected[0]), b"", encode(expected[2])]
    assert out.event_ids == [str(e.event_id) for e in expected]


def test_subjects_shorter_than_the_entities_are_null_and_longer_are_cut() -> None:
    events = [e.model_copy(update={"subject": "user:1"}) for e in sample_events(3)]
    row, expected = batch_of(events)
    row["subjects"] = ["user:1"]
    expected[1:] = [e.model_copy(update={"subject": None}) for e in expected[1:]]
    assert BatchEncoder()(row).values == [encode(e) for e in expected]
    row["subjects"] = ["user:1"] * 5
    assert BatchEncoder()(row).values == [encode(e) for e in expected[:1]] + [
        encode(e.model_copy(update={"subject": "user:1"})) for e in expected[1:]
    ]


def test_model_validation_is_per_field() -> None:
    # BatchEncoder validates entity_id and subject apart from the rest; a validator
    # across fields would make that unsound.
    decorators = RetentionEvent.__pydantic_decorators__
    assert not decorators.model_validators
    assert set(decorators.field_validators) == {"_known_major"}
