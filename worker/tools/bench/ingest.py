"""Scenarios (a), (b) and (c): one pre-filled queue of N events, drained four ways.

Before each scenario the tables are emptied and the same N bodies are
published again, so every consumer starts from the same queue and an empty
database. (a) and (b) run in this process and time themselves from the first
delivery to the last ack; (c) runs real worker processes and is timed by the
commit clock (``worker.tools.bench.database``), from the first batch written once
every process consumes to the last, counting the events after that batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from worker.tools.bench import broker, database, naive, raw
from worker.tools.bench.publisher import publish_all
from worker.tools.bench.stats import mib, rate
from worker.tools.bench.workload import Workload, user_ids
from worker.tools.sandbox import Sandbox, running_workers, wait_for


@dataclass(frozen=True, slots=True)
class IngestResult:
    """``timed`` of the ``events`` fell in the ``seconds`` measured (see the module)."""

    events: int
    timed: int
    seconds: float
    events_per_s: float
    processes: int = 1
    peak_rss_mib: float | None = None


async def _prefill(environment: Sandbox, bodies: list[bytes], label: str) -> None:
    await database.reset(environment.dsn, user_ids())
    await broker.purge(environment.amqp_url)
    await publish_all(environment.amqp_url, bodies, total=len(bodies), label=label)


async def run_raw(environment: Sandbox, bodies: list[bytes]) -> IngestResult:
    await _prefill(environment, bodies, "(a) filling")
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
        environment, len(bodies), timeout_s=60 + len(bodies) / 100
    )
    return IngestResult(result.events, result.events, result.seconds, result.events_per_s)


async def run_workers(
    environment: Sandbox, bodies: list[bytes], processes: int, log_dir: Path
) -> IngestResult:
    await _prefill(environment, bodies, f"(c) filling for {processes}")
    dsn = environment.dsn
    await database.start_commit_clock(dsn)
    try:
        async with running_workers(environment, processes, log_dir) as workers:
            all_consuming = time.time()

            async def all_written() -> bool:
                return await database.committed_rows(dsn) >= len(bodies)

            await wait_for(
                all_written,
                processes=workers,
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
        mib(max(worker.peak_rss_kib for worker in workers)),
    )


def bodies_for(events: int) -> list[bytes]:
    """The one stream every ingest scenario drains."""
    return list(Workload(events).bodies())
