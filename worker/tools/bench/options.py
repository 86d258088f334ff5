"""The options of ``chatstore bench``: read when the command line is parsed, before the
bench itself is imported (which happens only when ``chatstore bench`` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Final

from worker.arguments import positive_float, positive_int

SCENARIOS: Final = ("raw", "naive", "worker", "latency", "reads", "rss")


def _scenarios(value: str) -> list[str]:
    chosen = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {','.join(SCENARIOS)}; not {unknown}")
    return chosen


# Sizes and durations: (flag, type, default, metavar, what it sets).
_NUMBERS: Final = (
    ("--events", positive_int, 50_000, "N", "events in the pre-filled queue of (a), (b), (c)"),
    ("--rate", positive_float, 1000.0, "PER_S", "publish rate of the latency scenario (d)"),
    ("--latency-seconds", positive_float, 10.0, "S", "how long (d) publishes"),
    ("--messages", positive_int, 1_000_000, "N", "table size of (e); the goal is at 5,000,000"),
    ("--readers", positive_int, 32, "N", "concurrent readers of (e)"),
    ("--reader-processes", positive_int, 2, "N", "processes the readers of (e) share"),
    ("--read-seconds", positive_float, 10.0, "S", "how long (e) reads, alone and together"),
    ("--backlog", positive_int, 1_000_000, "N", "events waiting while (f) watches the worker"),
    ("--rss-seconds", positive_float, 30.0, "S", "how long the worker of (f) consumes"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``chatstore bench``."""
    parser.add_argument(
        "--scenarios",
        type=_scenarios,
        default=list(SCENARIOS),
        metavar="LIST",
        help=f"comma-separated, of {','.join(SCENARIOS)} (default: all)",
    )
    for flag, kind, default, metavar, what in _NUMBERS:
        parser.add_argument(
            flag,
            type=kind,
            default=default,
            metavar=metavar,
            help=f"{what} (default: {default:,.0f})",
        )
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("chatstore-bench.json"),
        metavar="PATH",
        help="where to write the results (default: ./chatstore-bench.json)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the bench database, vhost and worker logs, and print where they are",
    )
