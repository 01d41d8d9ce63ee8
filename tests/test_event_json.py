"""The relay's event encoding: exactly the bytes of `schemas.encode`, exactly the rows
`RetentionEvent` accepts."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from coordinator.outbox.event_json import FIELDS, EventWriter
from coordinator.outbox.events import EVENT_COLUMNS, RecordEncoder, event_from_columns
from schemas import EventReason, EventType, RetentionEvent, encode

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


def test_writer_bytes_equal_encode_on_a_varied_sample() -> None:
    events = sample_events(2000)
    assert {e.run_id is None for e in events} == {True, False}
    assert {bool(e.fields) for e in events} == {True, False}
    assert {e.subject is None for e in events} == {True, False}
    assert {e.reason for e in events} == set(EventReason)
    write = EventWriter()
    for event in events:
        assert write(event) == encode(event), event


def test_writer_follows_the_models_fields_in_wire_order() -> None:
    # A field added to, removed from or moved in RetentionEvent must be added to the writer.
    assert tuple(RetentionEvent.model_fields) == FIELDS
    event = sample_events(1)[0]
    assert tuple(event.model_dump(mode="json")) == FIELDS


def row_of(event: RetentionEvent) -> tuple[Any, ...]:
    values = {**dict(event), "event_type": event.type.value, "fields": list(event.fields)}
    return tuple(values[name] for name in EVENT_COLUMNS)


def test_encoder_matches_the_model_on_rows_sharing_and_not_sharing_their_columns() -> None:
    events = sample_events(300)
    # Rows of one purge batch: the same columns but event_id, entity_id and subject.
    batch = [
        events[0].model_copy(
            update={"event_id": uuid.uuid4(), "entity_id": str(i), "subject": f"user:{i % 7}"}
        )
        for i in range(50)
    ]
    encode_row = RecordEncoder()
    for event in [*events, *batch, *events]:
        key, value = encode_row(row_of(event))
        assert value == encode(event), event
        assert key == event.key.encode()


def bad_rows() -> list[tuple[str, tuple[Any, ...]]]:
    good = sample_events(1)[0].model_copy(update={"fields": ["a", "b", "c"]})
    columns = dict(zip(EVENT_COLUMNS, row_of(good), strict=True))

    def bad(**change: Any) -> tuple[Any, ...]:
        return tuple({**columns, **change}[name] for name in EVENT_COLUMNS)

    return [
        ("unknown event type", bad(event_type="shred")),
        ("empty entity id", bad(entity_id="")),
        ("entity id too long", bad(entity_id="x" * 256)),
        ("entity id not text", bad(entity_id=7)),
        ("event id not a UUID", bad(event_id=str(good.event_id))),
        ("fields a string spelling the good fields", bad(fields="abc")),
        ("fields an object with the good fields as keys", bad(fields=dict.fromkeys("abc"))),
        ("fields with a number", bad(fields=["a", 1])),
        ("fields with an unhashable item", bad(fields=["a", {"b": 1}])),
        ("naive timestamp", bad(deadline=good.deadline.replace(tzinfo=None))),
        ("empty policy", bad(policy="")),
        ("NUL in the entity id", bad(entity_id="4\x002")),
        ("NUL in the policy", bad(policy="a\x00b")),
        ("timestamp before 1970", bad(deadline=good.deadline.replace(year=1969))),
        ("unknown reason", bad(reason="curiosity")),
        ("request id not a UUID", bad(request_id="42")),
        ("subject without a type", bad(subject="42")),
        ("subject not text", bad(subject=42)),
    ]


def refuses(encode_row: Callable[[tuple[Any, ...]], object], row: tuple[Any, ...]) -> bool:
    try:
        encode_row(row)
    except ValueError:  # pydantic's ValidationError included
        return True
    return False


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "after a good row"])
def test_encoder_refuses_exactly_what_the_model_refuses(warm: bool) -> None:
    good = sample_events(1)[0].model_copy(update={"fields": ["a", "b", "c"]})
    for reason, row in bad_rows():
        encode_row = RecordEncoder()
        if warm:
            # The good row's columns are cached: the bad row must still be refused.
            encode_row(row_of(good))
        assert refuses(lambda r: event_from_columns(*r), row), reason
        assert refuses(encode_row, row), reason


def test_model_validation_is_per_field() -> None:
    # RecordEncoder validates event_id, entity_id and subject apart from the rest; a validator
    # across fields would make that unsound.
    decorators = RetentionEvent.__pydantic_decorators__
    assert not decorators.model_validators
    assert set(decorators.field_validators) == {"_known_major"}
