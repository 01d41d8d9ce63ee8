"""The relay's event writer produces exactly the bytes of `schemas.encode`."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta, timezone

from coordinator.event_json import FIELDS, EventWriter
from schemas import EventType, RetentionEvent, encode

# Quotes, backslashes, every control character, DEL, the JSON-hostile line separators,
# non-ASCII and astral characters: everything whose escaping could differ.
AWKWARD = [
    'quote " and \\ backslash',
    "".join(chr(c) for c in range(0x20)) + "\x7f",
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
            )
        )
    return events


def test_writer_bytes_equal_encode_on_a_varied_sample() -> None:
    events = sample_events(2000)
    assert {e.run_id is None for e in events} == {True, False}
    assert {bool(e.fields) for e in events} == {True, False}
    write = EventWriter()
    for event in events:
        assert write(event) == encode(event), event


def test_writer_follows_the_models_fields_in_wire_order() -> None:
    # A field added to, removed from or moved in RetentionEvent must be added to the writer.
    assert tuple(RetentionEvent.model_fields) == FIELDS
    event = sample_events(1)[0]
    assert tuple(event.model_dump(mode="json")) == FIELDS
