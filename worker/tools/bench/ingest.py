"""Scenarios (a), (b) and (c): one pre-filled queue of N events, drained several ways.

Before each drain the tables are emptied and the same N bodies are
published again, so every consumer starts from the same queue and an empty
database. (a) raw and (c) ``chatstore worker`` with 1 and with 2 processes
run in interleaved rounds (a, c1, c2, a, c1, c2, ...): a slow minute of the
machine then lands on every scenario alike instead of on one, and the
ratios are taken from the medians of the rounds. (b) naive runs once, on
the first ``--naive-events`` of the same stream: it is 15x slower, and a
rate needs a few seconds of it, not a minute.

(a) and (b) run in this process and time themselves from the first delivery
to the last ack; (c) is timed by the commit clock
(``worker.tools.bench.database``), from the first batch written once every
process consumes to the last, counting the events after that batch.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from worker.tools.bench import broker, database, naive, raw, workers
from worker.tools.bench.goals import Goal, at_least, ratio_shown
from worker.tools.bench.publisher import publish_all
from worker.tools.bench.stats import Spread, mib, rate, ratio, spread
from worker.tools.bench.workload import Workload, user_ids
from worker.tools.sandbox import Sandbox, wait_for

WORKER_PROCESSES: Final = (1, 2)
"""The process counts of (c): one, and one per core of the project's machine."""
GOAL_RATIO: Final = 0.8
"""Two processes' median at least this fraction of raw's (issue 11's table)."""

LABELS: Final = {
    "raw": "(a) raw: consume + ack, no work",
    "naive": "(b) naive: 1 tx + 1 ack per event",
    "worker_1": "(c) chatstore worker, 1 process",
    "worker_2": "(c) chatstore worker --processes 2",
}


@dataclass(frozen=True, slots=True)
class IngestResult:
    """``timed`` of the ``events`` fell in the ``seconds`` measured (see the module)."""

    events: int
    timed: int
    seconds: float
    events_per_s: float
    processes: int = 1
    peak_rss_mib: float | None = None


@dataclass
class Ingest:
    """Every round of (a) and (c), and the one run of (b)."""

    rounds: dict[str, list[IngestResult]] = field(default_factory=dict)
    naive: IngestResult | None = None

    def spreads(self) -> dict[str, Spread]:
        return {
            name: spread([r.events_per_s for r in results]) for name, results in self.rounds.items()
        }

    def ratios(self) -> dict[str, float | None]:
        """Each worker's median over raw's median, and over naive's one run."""
        spreads = self.spreads()
        raw_median = spreads["raw"].median if "raw" in spreads else None
        naive_rate = self.naive.events_per_s if self.naive else None
        out: dict[str, float | None] = {}
        for name, found in spreads.items():
            if name.startswith("worker"):
                out[f"{name}/raw"] = ratio(found.median, raw_median)
                out[f"{name}/naive"] = ratio(found.median, naive_rate)
        return out

    def document(self) -> dict[str, Any]:
        return {
            "rounds": {k: [dataclasses.asdict(r) for r in v] for k, v in self.rounds.items()},
            "naive": None if self.naive is None else dataclasses.asdict(self.naive),
            "medians": {k: dataclasses.asdict(v) for k, v in self.spreads().items()},
            "ratios": self.ratios(),
        }

    def table(self) -> list[str]:
        if not self.rounds and self.naive is None:
            return []
        rounds = max((len(v) for v in self.rounds.values()), default=0)
        lines = [
            f"| ingest ({rounds} interleaved rounds) | median | spread (min-max) "
            "| vs (a), medians | vs (b) |",
            "| --- | --- | --- | --- | --- |",
        ]
        ratios = self.ratios()
        spreads = self.spreads()
        for name in ("raw", "naive", "worker_1", "worker_2"):
            if name == "naive":
                if self.naive:
                    shown = f"{self.naive.events_per_s:,.0f} events/s"
                    lines.append(
                        f"| {LABELS[name]} | {shown} | 1 run of {self.naive.events:,} | | |"
                    )
                continue
            if name not in spreads:
                continue
            found = spreads[name]
            peak = max((r.peak_rss_mib or 0 for r in self.rounds[name]), default=0)
            rss = f", peak RSS {peak:g} MiB" if peak else ""
            versus_raw = ratios.get(f"{name}/raw")
            versus_naive = ratios.get(f"{name}/naive")
            lines.append(
                f"| {LABELS[name]} | {found.median:,.0f} events/s{rss} "
                f"| {found.low:,.0f}-{found.high:,.0f} "
                f"| {'' if versus_raw is None else f'{versus_raw:.2f}'} "
                f"| {'' if versus_naive is None else f'{versus_naive:.1f}x'} |"
            )
        return lines

    def goals(self) -> list[Goal]:
        spreads = self.spreads()
        value = self.ratios().get("worker_2/raw")
        shown = None
        if value is not None:
            shown = ratio_shown(
                value,
                f"{spreads['worker_2'].median:,.0f}",
                f"{spreads['raw'].median:,.0f} events/s",
            )
        return [
            at_least(
                "ingest, 2 processes, vs (a) raw (medians)",
                f">= {GOAL_RATIO} x raw",
                value,
                GOAL_RATIO,
                shown,
            )
        ]


async def _prefill(environment: Sandbox, bodies: list[bytes], label: str) -> None:
    await database.reset(environment.dsn, user_ids())
    await broker.purge(environment.amqp_url)
    await publish_all(environment.amqp_url, bodies, total=len(bodies), label=label)


async def run_rounds(
    environment: Sandbox,
    bodies: list[bytes],
    *,
    rounds: int,
    with_raw: bool,
    with_workers: bool,
    log_dir: Path,
    into: Ingest,
) -> None:
    """``rounds`` of (a), (c) 1 process, (c) 2 processes, in that order each round."""
    for n in range(1, rounds + 1):
        if with_raw:
            into.rounds.setdefault("raw", []).append(await run_raw(environment, bodies, n))
        if with_workers:
            for processes in WORKER_PROCESSES:
                result = await run_workers(environment, bodies, processes, log_dir, n)
                into.rounds.setdefault(f"worker_{processes}", []).append(result)


async def run_raw(environment: Sandbox, bodies: list[bytes], round_: int = 1) -> IngestResult:
    await _prefill(environment, bodies, f"(a) filling, round {round_}")
    settings = environment.settings
    result = await raw.consume_and_ack(
        environment.amqp_url,
        len(bodies),
        prefetch=settings.prefetch_count,
        ack_every=settings.batch_max_size,
        timeout_s=60 + len(bodies) / 1000,
    )
    return IngestResult(result.events, result.events, result.seconds, result.events_per_s)


async def run_naive(environment: Sandbox, bodies: list[bytes]) -> IngestResult:
    await _prefill(environment, bodies, "(b) filling")
    result = await naive.consume_one_by_one(
        environment, len(bodies), timeout_s=60 + len(bodies) / 50
    )
    return IngestResult(result.events, result.events, result.seconds, result.events_per_s)


async def run_workers(
    environment: Sandbox, bodies: list[bytes], processes: int, log_dir: Path, round_: int = 1
) -> IngestResult:
    await _prefill(environment, bodies, f"(c) filling for {processes}, round {round_}")
    dsn = environment.dsn
    await database.start_commit_clock(dsn)
    try:
        async with workers.running(environment, processes, log_dir) as command:
            all_consuming = time.time()

            async def all_written() -> bool:
                command.check_alive()
                return await database.committed_rows(dsn) >= len(bodies)

            await wait_for(
                all_written,
                every_s=0.1,  # a count(*) each time: light enough beside the workers
                within_s=60 + len(bodies) / 500,
                what=f"{len(bodies)} events written by {processes} worker(s)",
            )
        # From the first batch written once every process consumed: the
        # processes start one after the other, and a head start of one would
        # count as the rate of two. A queue too small to outlast the start
        # (a smoke run) is timed from its first batch instead.
        span = await database.commit_span(dsn, since=all_consuming)
        if span.rows_after_first < span.rows // 2:
            span = await database.commit_span(dsn)
    finally:
        await database.stop_commit_clock(dsn)
    events_per_s = rate(span.rows_after_first, span.seconds) if span.seconds > 0 else 0.0
    return IngestResult(
        span.rows,
        span.rows_after_first,
        round(span.seconds, 3),
        round(events_per_s),
        processes,
        mib(command.peak()),
    )


def bodies_for(events: int) -> list[bytes]:
    """The one stream every ingest scenario drains."""
    return list(Workload(events).bodies())
