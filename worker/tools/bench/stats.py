"""Pure statistics for the bench: rates, percentiles, medians of rounds, ratios.
No I/O, no clocks."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Latency percentiles in milliseconds, and how many samples they summarise."""

    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    def at(self, name: str) -> float:
        """One percentile by its name: ``p50``, ``p95``, ``p99`` or ``max``."""
        value: float = getattr(self, f"{name}_ms")
        return value


PERCENTILES = ("p50", "p95", "p99")
"""The percentiles every latency is reported at, and floors are added at."""


@dataclass(frozen=True, slots=True)
class Spread:
    """The rounds of one measurement: their median and their range (min to max).

    The range, not the IQR: with 3 to 5 rounds a quartile is little more than
    a neighbour of the median, and the whole range says plainly how far the
    rounds scattered.
    """

    rounds: int
    median: float
    low: float
    high: float


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (``fraction`` in 0..1).

    Nearest rank, not interpolation: the answer is a latency that some request
    really saw, and p99 of 100 samples is the worst but one, not a blend.
    """
    if not sorted_values:
        raise ValueError("no samples")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be within 0..1, not {fraction}")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def summarise(seconds: Sequence[float]) -> Percentiles:
    """Percentiles of latencies given in seconds."""
    ordered = sorted(seconds)
    return Percentiles(
        count=len(ordered),
        p50_ms=round(percentile(ordered, 0.50) * 1000, 3),
        p95_ms=round(percentile(ordered, 0.95) * 1000, 3),
        p99_ms=round(percentile(ordered, 0.99) * 1000, 3),
        max_ms=round(ordered[-1] * 1000, 3),
    )


def added(first: Percentiles, second: Percentiles) -> Percentiles:
    """Two latencies one after the other, percentile by percentile.

    Not the distribution of a sum (which would need the samples paired), but
    the floor the issue defines: each percentile of the one plus the same
    percentile of the other. ``count`` is the smaller of the two.
    """
    return Percentiles(
        count=min(first.count, second.count),
        p50_ms=round(first.p50_ms + second.p50_ms, 3),
        p95_ms=round(first.p95_ms + second.p95_ms, 3),
        p99_ms=round(first.p99_ms + second.p99_ms, 3),
        max_ms=round(first.max_ms + second.max_ms, 3),
    )


def spread(values: Sequence[float]) -> Spread:
    """The median and range of rounds (an even count's median is the mean of the middle two)."""
    if not values:
        raise ValueError("no rounds")
    return Spread(len(values), statistics.median(values), min(values), max(values))


def rate(count: int, seconds: float) -> float:
    """Events per second; a span of zero (a single batch) has no rate."""
    if seconds <= 0:
        raise ValueError("the span must be positive to give a rate")
    return count / seconds


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` rounded for a report; None when either is unknown."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, 2)


def mib(kib: int) -> float:
    """KiB (as /proc reports them) to MiB."""
    return round(kib / 1024, 1)
