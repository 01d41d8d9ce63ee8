"""A consumed record's headers: aiokafka's tuple kept when it can be, nulls made empty."""

from __future__ import annotations

from coordinator.kafka.clients import _headers


def test_headers_without_null_or_empty_values_are_kept_as_they_are() -> None:
    headers = (("retention-signature", b"sig"), ("retention-proof", b"p"))
    assert _headers(headers) is headers
    assert _headers(()) == ()
    assert _headers(None) == ()


def test_a_null_header_value_reads_as_empty() -> None:
    assert _headers((("a", b"x"), ("b", None))) == (("a", b"x"), ("b", b""))
    assert _headers((("a", b""),)) == (("a", b""),)
    assert _headers([("a", None)]) == (("a", b""),)
