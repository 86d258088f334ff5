"""Value types for command-line options, shared by the CLI and the tools' options."""

from __future__ import annotations

import argparse


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
