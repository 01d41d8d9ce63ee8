"""Due dates of erasure requests (SPEC §11): calendar months clamped, day counts exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from coordinator.erasure.due import Regulation, add_months, due_at


def at(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("received", "due", "extended_due"),
    [
        (at(2026, 1, 31), at(2026, 2, 28), at(2026, 4, 30)),
        (at(2028, 1, 31), at(2028, 2, 29), at(2028, 4, 30)),  # leap year
        (at(2026, 3, 31), at(2026, 4, 30), at(2026, 6, 30)),
        (at(2026, 1, 15), at(2026, 2, 15), at(2026, 4, 15)),
        (at(2026, 11, 30), at(2026, 12, 30), at(2027, 2, 28)),  # across the year
        (at(2026, 12, 31), at(2027, 1, 31), at(2027, 3, 31)),
    ],
)
def test_gdpr_one_calendar_month_clamped_and_three_when_extended(
    received: datetime, due: datetime, extended_due: datetime
) -> None:
    assert due_at(Regulation.GDPR, received, extended=False, default_days=30) == due
    assert due_at(Regulation.GDPR, received, extended=True, default_days=30) == extended_due


def test_ccpa_45_days_and_90_when_extended() -> None:
    received = at(2026, 1, 31)
    assert due_at(Regulation.CCPA, received, extended=False, default_days=30) == at(2026, 3, 17)
    assert due_at(Regulation.CCPA, received, extended=True, default_days=30) == at(2026, 5, 1)


def test_other_uses_the_setting() -> None:
    received = at(2026, 1, 31)
    assert due_at(Regulation.OTHER, received, extended=False, default_days=10) == received + (
        timedelta(days=10)
    )


def test_months_keep_the_time_of_day_and_the_zone() -> None:
    zone = timezone(timedelta(hours=-5))
    moment = datetime(2026, 1, 31, 23, 59, 59, 999999, tzinfo=zone)
    assert add_months(moment, 1) == datetime(2026, 2, 28, 23, 59, 59, 999999, tzinfo=zone)
    assert add_months(moment, 13) == datetime(2027, 2, 28, 23, 59, 59, 999999, tzinfo=zone)
