"""Retention periods: `90d`, `36h`, `30m`, or ISO 8601 durations such as `P90D`, `PT36H`.

Suffixes: `d` days, `h` hours, `m` **minutes** (never months). ISO 8601 accepts weeks,
days, hours, minutes and seconds (`P2W`, `P1DT12H`, `PT90M`). Months and years are
rejected on purpose: they have no fixed length (28–31 days, 365 or 366), and a retention
period that silently means different things in February and in March cannot be audited.
Write days instead: 13 months → `395d`, 7 years → `2557d`.

Periods longer than `MAX_DURATION` (100 years) are rejected too: cutoffs and deadlines
are dates, and a period of millions of days (a unit typo) would overflow them mid-run.
"""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["DURATION_PATTERN", "MAX_DURATION", "format_duration", "parse_duration"]

MAX_DURATION = timedelta(days=36500)

_SHORT = re.compile(r"^(\d+)([dhm])$")
_ISO = re.compile(
    r"^P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$"
)
_ISO_CALENDAR = re.compile(r"^P[^T]*[YM]")
_SHORT_UNITS = {"d": "days", "h": "hours", "m": "minutes"}

DURATION_PATTERN = r"^(\d+[dhm]|P(\d+W)?(\d+D)?(T(\d+H)?(\d+M)?(\d+S)?)?)$"
"""The same grammar as a JSON Schema pattern, for editors."""


def parse_duration(text: str) -> timedelta:
    """Parse a retention period; raise ValueError saying what is wrong and what to write."""
    value = text.strip()
    upper = value.upper()
    short = _SHORT.match(value)
    if short:
        result = _bounded(text, {_SHORT_UNITS[short.group(2)]: int(short.group(1))})
    else:
        iso = _ISO.match(upper)
        if iso and upper != "P" and not upper.endswith("T"):
            parts = {k: int(v) for k, v in iso.groupdict().items() if v is not None}
            result = _bounded(text, parts)
        elif _ISO_CALENDAR.match(upper):
            raise ValueError(
                f"{text!r}: months and years have no fixed length; write days instead "
                "(13 months → 395d, 7 years → 2557d)"
            )
        else:
            raise ValueError(
                f"{text!r} is not a duration: use a number with d (days), h (hours) or "
                "m (minutes), e.g. 90d, or ISO 8601 such as P90D or PT36H"
            )
    if result <= timedelta(0):
        raise ValueError(f"{text!r}: a retention period must be longer than zero")
    return result


def _bounded(text: str, parts: dict[str, int]) -> timedelta:
    too_long = ValueError(
        f"{text!r}: longer than {MAX_DURATION.days} days (100 years); check the unit"
    )
    try:
        result = timedelta(**parts)
    except OverflowError:
        raise too_long from None
    if result > MAX_DURATION:
        raise too_long
    return result


def format_duration(value: timedelta) -> str:
    """The shortest suffix form that round-trips through `parse_duration`."""
    seconds = int(value.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"PT{seconds}S"
