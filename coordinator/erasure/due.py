"""Legal due dates of erasure requests (SPEC §11)."""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from enum import StrEnum

__all__ = ["LEGAL_BASIS", "Regulation", "add_months", "due_at"]


class Regulation(StrEnum):
    GDPR = "gdpr"
    CCPA = "ccpa"
    OTHER = "other"


LEGAL_BASIS = {
    Regulation.GDPR: "GDPR Art. 17",
    Regulation.CCPA: "CCPA § 1798.105",
    Regulation.OTHER: "Erasure request",
}
"""What the subject event's `legal_basis` says, per regulation."""


def add_months(moment: datetime, months: int) -> datetime:
    """`moment` + calendar months, clamped to the last day of a shorter month
    (31 January + 1 month = 28 or 29 February), time of day and zone kept."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def due_at(
    regulation: Regulation, received_at: datetime, *, extended: bool, default_days: int
) -> datetime:
    """GDPR: 1 calendar month (extended: 3); CCPA: 45 days (extended: 90); other:
    `default_days` (extended: twice that)."""
    if regulation is Regulation.GDPR:
        return add_months(received_at, 3 if extended else 1)
    if regulation is Regulation.CCPA:
        return received_at + timedelta(days=90 if extended else 45)
    return received_at + timedelta(days=default_days * (2 if extended else 1))
