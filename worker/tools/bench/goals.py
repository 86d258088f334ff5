"""The goals the bench checks (issue 11's table), each from numbers of the same run.

Every goal but memory is a ratio to a floor measured beside it: absolute
numbers swing threefold between machines of one kind, ratios far less.
Pure: the scenarios' results make their goals with these helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Goal:
    """One goal: ``value`` (a ratio to its floor, or MiB) against ``target``."""

    what: str
    target: str
    value: float | None  # None: not measured in this run
    measured: str  # the value, and the numbers it came from
    met: bool | None  # None: not measured in this run


def number(value: float) -> str:
    """A ratio or a size as a report shows it: two decimals at most, no trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def ratio_shown(value: float, scenario: str, floor: str) -> str:
    """A ratio with the two numbers it came from: ``0.71 (12,221 / 17,311 events/s)``."""
    return f"{number(value)} ({scenario} / {floor})"


def at_least(
    what: str, target: str, value: float | None, least: float, shown: str | None = None
) -> Goal:
    if value is None:
        return Goal(what, target, None, "not run", None)
    return Goal(what, target, value, shown or number(value), value >= least)


def at_most(
    what: str, target: str, value: float | None, most: float, shown: str | None = None
) -> Goal:
    if value is None:
        return Goal(what, target, None, "not run", None)
    return Goal(what, target, value, shown or number(value), value <= most)


class Section(Protocol):
    """What a scenario's results give the report: its JSON, its table, its goals.

    ``goals`` of a section that measured nothing gives each goal as not run
    (``value`` and ``met`` None), so the goals table always lists them all.
    """

    def document(self) -> dict[str, Any]: ...

    def table(self) -> list[str]: ...

    def goals(self) -> list[Goal]: ...
