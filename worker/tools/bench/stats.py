"""Pure statistics for the bench: rates, percentiles, ratios. No I/O, no clocks."""

from __future__ import annotations

import math
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
