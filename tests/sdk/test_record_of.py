"""An aiokafka record as the SDK's `Record`: the same fields, null header values as empty bytes."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord

from consumer_sdk._internal.transport import Record, record_of


def consumed(headers: object) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("t", 2, 41, 0, 0, b"k", b"v", None, 1, 1, headers)


def test_a_record_keeps_every_field_and_its_headers_in_order() -> None:
    got = record_of(consumed([("event_id", b"e"), ("retention-signature", b"s")]))
    assert got == Record(
        "t", 2, 41, b"k", b"v", (("event_id", b"e"), ("retention-signature", b"s"))
    )
    assert isinstance(got.headers, tuple)


def test_a_null_header_value_becomes_empty_bytes_wherever_it_is() -> None:
    for headers, expected in [
        ([("a", None)], (("a", b""),)),
        ([("a", b"x"), ("b", None)], (("a", b"x"), ("b", b""))),
        ([("a", None), ("b", b"y")], (("a", b""), ("b", b"y"))),
        ([["a", b"x"]], (("a", b"x"),)),
        (None, ()),
        ([], ()),
    ]:
        got = record_of(consumed(headers))
        assert got.headers == expected, headers
        assert all(type(h) is tuple and type(h[1]) is bytes for h in got.headers)
