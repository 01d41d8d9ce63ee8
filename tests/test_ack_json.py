"""The SDK's ack encoding: exactly the bytes of `schemas.encode(RetentionAck(...))`, and
exactly its refusals."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import AckStatus, RetentionAck, RetentionEvent, encode
from schemas.ack_json import AckEncoder, AckTemplate
from schemas.models import MAX_BIGINT, MAX_INTEGER
from tests.sdk.helpers import event

AWKWARD = [
    'quote " and \\ backslash',
    "".join(chr(c) for c in range(1, 0x20)) + "\x7f",
    "line\u2028para\u2029end",
    "Zoë Ærø — 東京 🙂",
    "</script> & 'single'",
    "x" * 255,
    "\ue000entity\ue000",  # the template's own placeholder, as a real entity id
    "7346519028364519027",
]


def model_bytes(service: str, e: RetentionEvent, **fields: Any) -> tuple[bytes, bytes]:
    ack = RetentionAck(
        event_id=e.event_id,
        service=service,
        entity_type=e.entity_type,
        entity_id=e.entity_id,
        **fields,
    )
    return ack.key.encode(), encode(ack)


def test_acks_are_the_models_bytes_on_a_varied_sample() -> None:
    rng = random.Random(11)
    encoders = {s: AckEncoder(s) for s in ("billing", 'svc "quoted"', "Zoë")}
    base = datetime(2026, 12, 6, 16, 0, tzinfo=UTC)
    # A few time objects, each used for runs of acks (as a batch's acks share one) and
    # taken up again later: the encoder's remembered text must follow every change.
    times = [base + timedelta(microseconds=us) for us in (0, 1, 999_999, 12345)]
    for _ in range(3000):
        service = rng.choice(list(encoders))
        e = event(
            rng.choice([*AWKWARD, f"u{rng.randrange(10**6)}"]),
            entity_type=rng.choice(["user", "o:x"]),
        )
        fields: dict[str, Any] = {
            "status": rng.choice(list(AckStatus)),
            "records_affected": rng.choice([0, 1, 3, 10**9, MAX_BIGINT]),
            "detail": rng.choice(["", "held by h1", *AWKWARD]),
            "attempt": rng.choice([1, 2, MAX_INTEGER]),
            # Whole seconds too: the model still writes six fraction digits.
            "acknowledged_at": rng.choice(times),
        }
        got = encoders[service].encode(
            e,
            fields["status"],
            fields["records_affected"],
            fields["detail"],
            fields["attempt"],
            fields["acknowledged_at"],
        )
        assert got == model_bytes(service, e, **fields)


@pytest.mark.parametrize(
    ("records_affected", "detail", "attempt", "at"),
    [
        (-1, "", 1, datetime(2026, 1, 1, tzinfo=UTC)),
        (MAX_BIGINT + 1, "", 1, datetime(2026, 1, 1, tzinfo=UTC)),
        (True, "", 1, datetime(2026, 1, 1, tzinfo=UTC)),
        (1, "nul \x00", 1, datetime(2026, 1, 1, tzinfo=UTC)),
        (1, "", 0, datetime(2026, 1, 1, tzinfo=UTC)),
        (1, "", 1, datetime(9500, 1, 1, tzinfo=UTC)),
    ],
)
def test_what_the_model_refuses_is_refused(
    records_affected: Any, detail: str, attempt: int, at: datetime
) -> None:
    encoder = AckEncoder("billing")
    e = event("u1")
    with pytest.raises(ValidationError):
        model_bytes(
            "billing",
            e,
            status=AckStatus.COMPLETED,
            records_affected=records_affected,
            detail=detail,
            attempt=attempt,
            acknowledged_at=at,
        )
    with pytest.raises(ValidationError):
        encoder.encode(e, AckStatus.COMPLETED, records_affected, detail, attempt, at)


def test_other_offsets_are_written_as_utc_like_the_model() -> None:
    encoder = AckEncoder("billing")
    e = event("u1")
    at = datetime(2026, 1, 1, 5, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    got = encoder.encode(e, AckStatus.NOT_FOUND, 0, "", 1, at)
    assert got == model_bytes(
        "billing", e, status=AckStatus.NOT_FOUND, records_affected=0, acknowledged_at=at
    )
    assert b'"2026-01-01T00:00:00.000000Z"' in got[1]


def test_a_template_holding_a_placeholder_in_a_shared_field_is_refused() -> None:
    template = AckTemplate.of(
        service="\ue000entity\ue000",
        entity_type="user",
        status=AckStatus.COMPLETED,
        detail="",
        attempt=1,
    )
    assert template is None


def test_details_seen_once_make_no_template_and_leave_the_steady_ones() -> None:
    # A redelivery's detail carries its own processing time: a template for each would
    # cost more than the model's path and push the steady acks' templates out.
    encoder = AckEncoder("billing")
    at = datetime(2026, 12, 6, 16, 0, tzinfo=UTC)
    for i in range(2):
        encoder.encode(event(f"s{i}"), AckStatus.COMPLETED, 1, "", 1, at)
    for i in range(AckEncoder.MAX_TEMPLATES * 2):
        e = event(f"u{i}")
        detail = f"redelivered; processed at {i}"
        assert encoder.encode(e, AckStatus.COMPLETED, 1, detail, 1, at) == model_bytes(
            "billing",
            e,
            status=AckStatus.COMPLETED,
            records_affected=1,
            detail=detail,
            attempt=1,
            acknowledged_at=at,
        )
    assert list(encoder._templates) == [("user", AckStatus.COMPLETED, "", 1)]


@pytest.mark.parametrize(("status", "attempt"), [(AckStatus.COMPLETED, True), ("completed", 1)])
def test_a_value_equal_to_a_templates_but_refused_by_the_model_is_refused(
    status: Any, attempt: Any
) -> None:
    """True == 1 and a status's text == the status, with equal hashes: neither may pass
    through the template of its equal (the model, strict, refuses both), nor spoil it."""
    e = event("u1")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValidationError):
        model_bytes(
            "billing", e, status=status, records_affected=1, attempt=attempt, acknowledged_at=at
        )
    shared = ("user", AckStatus.COMPLETED, "", 1)
    made_first = AckEncoder("billing")
    for _ in range(2):  # the second makes the template
        made_first.encode(e, AckStatus.COMPLETED, 1, "", 1, at)
    with pytest.raises(ValidationError):
        made_first.encode(e, status, 1, "", attempt, at)
    refused_first = AckEncoder("billing")
    refused_first.encode(e, AckStatus.COMPLETED, 1, "", 1, at)
    with pytest.raises(ValidationError):
        refused_first.encode(e, status, 1, "", attempt, at)
    assert refused_first.encode(e, AckStatus.COMPLETED, 1, "", 1, at) == model_bytes(
        "billing", e, status=AckStatus.COMPLETED, records_affected=1, acknowledged_at=at
    )
    for encoder in (made_first, refused_first):
        assert encoder._templates[shared] is not None
