"""Value types for command-line options, shared by the CLI and the tools' options."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta


def positive_int(value: str) -> int:
    """A whole number of at least 1; ``50_000`` and ``50,000`` are read as 50000."""
    try:
        number = int(value.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return number


def positive_float(value: str) -> float:
    """A number above 0 (NaN is refused)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be above 0, not {value}")
    return number


# A duration is a whole number and one unit: what an operator writes for
# "idle for 90 days". More than a century is a typo, and would overflow
# datetime arithmetic long before it meant anything.
_DURATION = re.compile(r"([0-9][0-9_,]{0,15})([dhms])")
_UNIT_S = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_MAX_DURATION = timedelta(days=36_500)


def duration(value: str) -> timedelta:
    """``90d``, ``12h``, ``30m`` or ``45s``: above 0, at most 100 years."""
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"not a duration: {value!r} (a whole number and d, h, m or s: 90d, 12h, 30m, 45s)"
        )
    span = timedelta(seconds=int(match[1].replace("_", "").replace(",", "")) * _UNIT_S[match[2]])
    if span <= timedelta(0):
        raise argparse.ArgumentTypeError(f"must be above 0, not {value}")
    if span > _MAX_DURATION:
        raise argparse.ArgumentTypeError(f"must be at most 36500d, not {value}")
    return span


def instant(value: str) -> datetime:
    """An ISO 8601 date (midnight) or date and time; UTC unless it has an offset."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO date or date and time: {value!r} (2026-09-01, 2026-09-01T12:00:00+02:00)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def past_instant(value: str) -> datetime:
    """An :func:`instant` that is not later than now."""
    when = instant(value)
    if when > datetime.now(UTC):
        raise argparse.ArgumentTypeError(
            f"{when.isoformat()} is in the future: it would take conversations archived "
            "from now until then too, and a conversation archived a moment ago may still "
            "receive late messages; give a past date"
        )
    return when
