"""`coordinator.outbox._expand` (the relay's ids, keys and values of a valid outbox batch
in C) gives what the Python rule path of `BatchEncoder` gives, byte for byte: over random
text (every escape JSON has, non-ASCII, astral), subjects or None, id ranges that wrap
32 bits, and it refuses malformed arguments instead of writing anything.
tests/test_event_json.py runs the encoder's own tests on both paths."""

from __future__ import annotations

import uuid
from json.encoder import encode_basestring
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.outbox import events
from coordinator.outbox.events import BatchEncoder, event_id_texts
from schemas.event_json import EventTemplate
from tests.native import native_or_skip
from tests.test_event_json import batch_of, sample_events

if events.EXPANSION != "native":
    native_or_skip(False, "coordinator.outbox._expand", whole_module=True)

from coordinator.outbox import _expand

BASE = uuid.UUID("01890a5d-ac96-7abc-8def-0123456789ab")
PIECES = (b'{"a":1,"event_id":', b',"entity_id":', b',"subject":', b',"z":"\\u00e9"}')
TEMPLATE = EventTemplate(*(piece.decode() for piece in PIECES))

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


def python(first: int, key_prefix: str, entities: list[str], subjects: list[str | None]) -> Any:
    ids = event_id_texts(BASE, first, len(entities))
    return (
        ids,
        [f"{key_prefix}{e}".encode() for e in entities],
        [TEMPLATE.render(*event) for event in zip(ids, entities, subjects, strict=True)],
    )


def native(first: int, key_prefix: str, entities: list[str], subjects: list[str | None]) -> Any:
    ids, keys, values = _expand.expand(
        str(BASE)[:28], first, key_prefix.encode(), entities, subjects, *PIECES, encode_basestring
    )
    return ids, keys, values


@settings(max_examples=300, deadline=None)
@given(
    first=st.one_of(st.integers(-(2**63), 2**63 - 64), st.integers(2**32 - 30, 2**32 + 2)),
    key_prefix=text,
    pairs=st.lists(st.tuples(text, st.one_of(st.none(), text)), max_size=40),
)
def test_expand_equals_the_python_rule(
    first: int, key_prefix: str, pairs: list[tuple[str, str | None]]
) -> None:
    entities = [e for e, _ in pairs]
    subjects = [s for _, s in pairs]
    assert native(first, key_prefix, entities, subjects) == python(
        first, key_prefix, entities, subjects
    )


def test_a_valid_batch_is_expanded_in_c(monkeypatch: pytest.MonkeyPatch) -> None:
    # The encoder's tests pass on either path; this one shows the C path is taken.
    calls = []

    def counted(*args: Any) -> Any:
        calls.append(len(args[3]))
        return _expand.expand(*args)

    monkeypatch.setattr(events, "_expand", type("Spy", (), {"expand": staticmethod(counted)}))
    row, _ = batch_of(sample_events(5))
    assert BatchEncoder()(row).errors == {}
    assert calls == [5]
    row["entity_ids"] = ["", *row["entity_ids"][1:]]
    assert list(BatchEncoder()(row).errors) == [0]
    assert calls == [5]


def test_a_str_subclass_takes_the_python_rule_with_the_same_bytes() -> None:
    row, _ = batch_of(sample_events(3))
    expected = BatchEncoder()(row)
    row["entity_ids"] = [Text(e) for e in row["entity_ids"]]
    row["subjects"] = [None if s is None else Text(s) for s in row["subjects"] or ()] or None
    encoded = BatchEncoder()(row)
    assert encoded.errors == {}
    assert (encoded.event_ids, encoded.keys, encoded.values) == (
        expected.event_ids,
        expected.keys,
        expected.values,
    )


def test_unicode_the_utf8_encoder_refuses_fails_as_in_python() -> None:
    with pytest.raises(UnicodeEncodeError):
        python(1, "user:", ["\ud800"], [None])
    with pytest.raises(UnicodeEncodeError):
        native(1, "user:", ["\ud800"], [None])


class Text(str):
    __slots__ = ()


def not_str(_: str) -> Any:
    return b"escaped"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("é" * 28, 1, b"u:", ["a"], [None], *PIECES, encode_basestring), ValueError),
        ((b"x" * 28, 1, b"u:", ["a"], [None], *PIECES, encode_basestring), TypeError),
        (("x" * 28, 2**63, b"u:", ["a"], [None], *PIECES, encode_basestring), OverflowError),
        (("x" * 28, 1, "u:", ["a"], [None], *PIECES, encode_basestring), TypeError),
        (("x" * 28, 1, b"u:", ["a"], [None, None], *PIECES, encode_basestring), ValueError),
        (("x" * 28, 1, b"u:", [7], [None], *PIECES, encode_basestring), TypeError),
        (("x" * 28, 1, b"u:", ["a"], [7], *PIECES, encode_basestring), TypeError),
        (("x" * 28, 1, b"u:", [Text("a")], [None], *PIECES, encode_basestring), TypeError),
        (("x" * 28, 1, b"u:", ["a"], [None], "h", *PIECES[1:], encode_basestring), TypeError),
        (("x" * 28, 1, b"u:", ["a\\"], [None], *PIECES, not_str), TypeError),
        (("x" * 28, 1, b"u:", 5, [None], *PIECES, encode_basestring), TypeError),
    ],
)
def test_refuses_malformed_arguments(args: tuple[Any, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        _expand.expand(*args)
