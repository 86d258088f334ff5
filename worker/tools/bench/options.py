"""The options of ``chatstore bench``: read when the command line is parsed, before the
bench itself is imported (which happens only when ``chatstore bench`` runs)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from worker.arguments import positive_float, positive_int

SCENARIOS: Final = (
    "raw",
    "naive",
    "worker",
    "latency",
    "reads",
    "pgbouncer",
    "rss",
    "tracing",
)
"""Every scenario, in the order the bench runs them (``worker.tools.bench.scenarios``)."""

T = TypeVar("T")


def _scenarios(value: str) -> list[str]:
    chosen = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {','.join(SCENARIOS)}; not {unknown}")
    return chosen


def _list_of(kind: Callable[[str], T]) -> Callable[[str], list[T]]:
    """A comma-separated list of ``kind``, in the order given, without repeats."""

    def parse(value: str) -> list[T]:
        items = [kind(item.strip()) for item in value.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"a comma-separated list, not {value!r}")
        return list(dict.fromkeys(items))

    return parse


# Sizes and durations: (flag, type, default, metavar, what it sets).
_NUMBERS: Final = (
    ("--rounds", positive_int, 3, "N", "interleaved rounds of (a), (c) 1 and (c) 2 processes"),
    ("--events", positive_int, 50_000, "N", "events in the pre-filled queue of (a) and (c)"),
    ("--naive-events", positive_int, 5_000, "N", "events (b) drains, the first of the same queue"),
    (
        "--latency-seconds",
        positive_float,
        10.0,
        "S",
        "how long (d) and its floor publish, per rate",
    ),
    ("--messages", positive_int, 1_000_000, "N", "table size of (e) and (g)"),
    ("--reader-processes", positive_int, 2, "N", "processes the readers of (e) share"),
    ("--read-seconds", positive_float, 10.0, "S", "how long each run of readers of (e), (g) reads"),
    ("--pooled-readers", positive_int, 200, "N", "reader connections of (g), through PgBouncer"),
    ("--pooled-processes", positive_int, 4, "N", "processes the readers of (g) share"),
    ("--pool-size", positive_int, 20, "N", "PgBouncer's server connections in (g)"),
    ("--backlog", positive_int, 1_000_000, "N", "events waiting while (f) watches the worker"),
    ("--rss-seconds", positive_float, 30.0, "S", "how long the worker of (f) consumes"),
    (
        "--tracing-events",
        positive_int,
        5_000,
        "N",
        "events timed per round of the tracing cost, off and on (--rounds rounds)",
    ),
)
# Lists: (flag, type of an item, default, metavar, what it sets).
_LISTS: Final = (
    ("--rates", positive_float, [1000.0, 5000.0], "PER_S,...", "publish rates of (d)"),
    ("--readers", positive_int, [1, 32], "N,...", "counts of concurrent readers of (e)"),
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
    for flag, item, defaults, metavar, what in _LISTS:
        shown = ",".join(f"{value:g}" for value in defaults)
        parser.add_argument(
            flag,
            type=_list_of(item),
            default=defaults,
            metavar=metavar,
            help=f"{what}, comma-separated (default: {shown})",
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
