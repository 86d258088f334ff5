"""Scenario (e): read latency at a realistic table size, against its floor, per reader count.

For each count of readers (``--readers``, 1 and 32 by default) the bench runs
the repository's readers, then the floor: the same SQL texts, taken from
``contracts.history.queries`` as the repository compiles them, on asyncpg
prepared statements, with as many readers over as many processes. Both
report the SQL they ran, and the bench stops if the texts differ: a floor
of other statements would compare nothing.

The readers run in processes of their own (``worker.tools.bench.reader``),
spread evenly: one Python process driving 32 readers would measure its own
event loop's queue, not the database. Every reader loops without pause, so
with 32 readers on 2 cores the latencies include waiting for a core; the
report gives the throughput beside them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

from worker.tools.bench.goals import Goal, at_most, ratio_shown
from worker.tools.bench.pipes import helpers
from worker.tools.bench.stats import Percentiles, ratio, summarise
from worker.tools.sandbox import Sandbox

QUERIES: Final = ("history", "conversations")
GOAL_RATIO: Final = 1.25
"""The repository's p95 at most 1.25x the floor's (issue 11's table)."""
GOAL_READERS: Final = (1, 32)


class ReadsFailedError(Exception):
    """Not one read succeeded: there is no latency to report, only the errors."""


class FloorMismatchError(Exception):
    """The floor ran other SQL than the repository: its ratio would mean nothing."""


@dataclass(frozen=True, slots=True)
class Readings:
    """One run of readers: per query latencies, the throughput, and what failed."""

    mode: str
    readers: int
    processes: int
    seconds: float
    queries_per_s: float
    conversations: Percentiles
    history: Percentiles
    errors: int
    error_samples: list[str]
    sql: list[str]


@dataclass(frozen=True, slots=True)
class ReadPair:
    repository: Readings
    floor: Readings

    def ratios(self) -> dict[str, float | None]:
        return {
            query: ratio(getattr(self.repository, query).p95_ms, getattr(self.floor, query).p95_ms)
            for query in QUERIES
        }


@dataclass
class Reads:
    """Scenario (e) for every reader count asked."""

    messages: int = 0
    pairs: list[ReadPair] = dataclasses.field(default_factory=list)

    def document(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "runs": [dataclasses.asdict(p) | {"p95_ratios": p.ratios()} for p in self.pairs],
        }

    def table(self) -> list[str]:
        if not self.pairs:
            return []
        lines = [
            f"| (e) reads, {self.messages:,} messages | p50 ms | p95 ms | p99 ms "
            "| queries/s | errors |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for pair in self.pairs:
            readers = pair.repository.readers
            who = f"{readers} reader{'s' if readers > 1 else ''}"
            for query in QUERIES:
                for label, run in (("repository", pair.repository), ("asyncpg floor", pair.floor)):
                    p: Percentiles = getattr(run, query)
                    lines.append(
                        f"| {who}, {query}: {label} | {p.p50_ms:.2f} | {p.p95_ms:.2f} "
                        f"| {p.p99_ms:.2f} | {run.queries_per_s:,.0f} | {run.errors} |"
                    )
                value = pair.ratios()[query]
                shown = "" if value is None else f"{value:.2f}x"
                lines.append(f"| {who}, {query}: repository / floor | | {shown} | | | |")
        return lines

    def goals(self) -> list[Goal]:
        found = []
        measured = {pair.repository.readers: pair for pair in self.pairs}
        for readers in sorted(set(GOAL_READERS) | set(measured)):
            pair = measured.get(readers)
            for query in QUERIES:
                value = pair.ratios()[query] if pair else None
                shown = None
                if pair is not None and value is not None:
                    shown = ratio_shown(
                        value,
                        f"{getattr(pair.repository, query).p95_ms:.2f}",
                        f"{getattr(pair.floor, query).p95_ms:.2f} ms",
                    )
                found.append(
                    at_most(
                        f"reads, {readers} reader{'s' if readers > 1 else ''}, "
                        f"{query} p95 vs asyncpg floor",
                        f"<= {GOAL_RATIO} x floor",
                        value,
                        GOAL_RATIO,
                        shown,
                    )
                )
        return found


async def run_reads(
    environment: Sandbox, *, readers: list[int], processes: int, seconds: float, into: Reads
) -> None:
    """For each reader count: the repository, then its asyncpg floor (the table is filled)."""
    url = environment.database_url.render_as_string(hide_password=False)
    for count in readers:
        repository, floor = await read(
            url, ("repository", "asyncpg"), readers=count, processes=processes, seconds=seconds
        )
        if repository.sql != floor.sql:
            raise FloorMismatchError(
                f"the asyncpg floor ran {floor.sql}, the repository {repository.sql}"
            )
        into.pairs.append(ReadPair(repository, floor))


async def read(
    url: str, modes: tuple[str, ...], *, readers: int, processes: int, seconds: float
) -> list[Readings]:
    """``readers`` over ``processes`` in each of ``modes`` in turn (see
    ``worker.tools.bench.reader``), all the processes' readers at once."""
    processes = max(1, min(processes, readers))
    shares = [readers // processes + (n < readers % processes) for n in range(processes)]
    configs = [
        {"url": url, "readers": share, "seconds": seconds, "seed": n, "modes": list(modes)}
        for n, share in enumerate(shares)
    ]
    found = []
    async with helpers("reader", configs) as children:
        for mode in modes:
            for child in children:
                await child.expect("ready")
            for child in children:
                await child.send("go")
            outputs = [await child.result(within_s=seconds + 120) for child in children]
            found.append(_readings(mode, outputs, readers, processes, seconds))
    return found


def _readings(
    mode: str, outputs: list[dict[str, Any]], readers: int, processes: int, seconds: float
) -> Readings:
    listing = [s for output in outputs for s in output["conversations"]]
    history = [s for output in outputs for s in output["history"]]
    samples = [s for output in outputs for s in output["error_samples"]]
    if not listing or not history:
        raise ReadsFailedError(
            f"no {mode} read succeeded in {seconds:g} s: {samples or 'no error'}"
        )
    return Readings(
        mode,
        readers,
        processes,
        seconds,
        round((len(listing) + len(history)) / seconds),
        summarise(listing),
        summarise(history),
        sum(int(output["errors"]) for output in outputs),
        list(dict.fromkeys(samples))[:5],
        sorted({sql for output in outputs for sql in output["sql"]}),
    )
