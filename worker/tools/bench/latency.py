"""Scenario (d): publish-to-commit latency of one worker at fixed publish rates, and its floor.

Each event's ``occurred_at`` (and ``created_at``) is the wall-clock time at
which it was handed to the broker; the commit clock (``worker.tools.bench.database``)
records when the worker's INSERT wrote it. Both clocks are this machine's.
A warm-up burst is written first and left out, so the worker's start does
not count.

The floor, measured at each rate just before the worker runs, is the sum at
each percentile of two latencies nothing can avoid:

- the broker's publish-to-deliver: the same publisher at the same rate, on
  the same quorum queue, consumed by a bare consumer in a process of its own
  (``worker.tools.bench.bare_consumer``);
- one single-row commit on the same database (``worker.tools.bench.commit``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiormq
from pamqp.commands import Basic

from worker import topology
from worker.tools.bench import broker, commit, database, workers
from worker.tools.bench.goals import Goal, at_most, number, ratio_shown
from worker.tools.bench.pipes import helpers
from worker.tools.bench.publisher import PROPERTIES, PublishRefusedError, publish_all
from worker.tools.bench.stats import PERCENTILES, Percentiles, added, ratio, summarise
from worker.tools.bench.workload import ROUTING_KEY, Workload, body, user_ids
from worker.tools.sandbox import Sandbox, wait_for

WARM_UP_EVENTS: Final = 20
GOAL_RATES: Final = (1000.0, 5000.0)
"""The rates issue 11 sets goals at; other rates are measured and compared all the same."""
GOAL_P50: Final = 2.0
GOAL_P99: Final = 4.0
"""The worker's p50 at most 2x the floor's, its p99 at most 4x."""
SATURATED_MS: Final = 100.0
"""A bare consumer's median publish-to-deliver above this means the deliveries queued:
unqueued, one takes a millisecond or two. The broker and the machine could not carry
the rate, so a ratio to that floor would say nothing about the worker."""


@dataclass(frozen=True, slots=True)
class Floor:
    """What any consumer that commits pays at this rate: ``deliver`` + ``commit``."""

    achieved_rate: float
    deliver: Percentiles  # publish-to-deliver, bare consumer
    commit: Percentiles  # one single-row INSERT + COMMIT
    total: Percentiles  # the two added, percentile by percentile

    @property
    def saturated(self) -> bool:
        """The bare consumer itself fell behind the publisher: no floor at this rate."""
        return self.deliver.p50_ms > SATURATED_MS


@dataclass(frozen=True, slots=True)
class LatencyResult:
    target_rate: float
    achieved_rate: float
    events: int
    latency: Percentiles  # publish-to-commit, the worker
    floor: Floor

    def ratios(self) -> dict[str, float | None]:
        return {p: ratio(self.latency.at(p), self.floor.total.at(p)) for p in PERCENTILES}


@dataclass
class Latency:
    """Scenario (d) at every rate asked."""

    rates: list[LatencyResult] = dataclasses.field(default_factory=list)

    def document(self) -> dict[str, Any]:
        return {
            "rates": [
                dataclasses.asdict(r) | {"ratios": r.ratios(), "floor_saturated": r.floor.saturated}
                for r in self.rates
            ],
        }

    def table(self) -> list[str]:
        if not self.rates:
            return []
        lines = [
            "| (d) publish-to-commit, 1 worker | p50 ms | p95 ms | p99 ms | max ms |",
            "| --- | --- | --- | --- | --- |",
        ]
        for result in self.rates:
            floor, at = result.floor, f"at {result.target_rate:,.0f}/s"
            rows = (
                (f"{at}: broker publish-to-deliver, bare consumer "
                 f"({floor.achieved_rate:,.0f}/s)", floor.deliver),
                (f"{at}: single-row commit", floor.commit),
                (f"{at}: **floor** = the two added"
                 + (" (saturated: the floor queued)" if floor.saturated else ""), floor.total),
                (f"{at}: **chatstore worker** ({result.achieved_rate:,.0f}/s, "
                 f"{result.events:,} events)", result.latency),
            )  # fmt: skip
            for label, p in rows:
                lines.append(
                    f"| {label} | {p.p50_ms:.2f} | {p.p95_ms:.2f} | {p.p99_ms:.2f} "
                    f"| {p.max_ms:.2f} |"
                )
            ratios = result.ratios()
            lines.append(
                f"| {at}: worker / floor | "
                + " | ".join(_times(ratios[p]) for p in PERCENTILES)
                + " | |"
            )
        return lines

    def goals(self) -> list[Goal]:
        found = []
        measured = {result.target_rate: result for result in self.rates}
        for rate in sorted(set(GOAL_RATES) | set(measured)):
            result = measured.get(rate)
            ratios = result.ratios() if result else {}
            for name, most in (("p50", GOAL_P50), ("p99", GOAL_P99)):
                shown = None
                value = ratios.get(name)
                if result is not None and result.floor.saturated:
                    found.append(
                        Goal(
                            f"publish-to-commit at {rate:,.0f}/s, {name} vs floor",
                            f"<= {number(most)} x floor",
                            None,
                            f"not judged: the floor itself queued (bare consumer p50 "
                            f"{result.floor.deliver.p50_ms:,.0f} ms > {SATURATED_MS:g} ms)",
                            None,
                        )
                    )
                    continue
                if result is not None and value is not None:
                    shown = ratio_shown(
                        value,
                        f"{result.latency.at(name):.2f}",
                        f"{result.floor.total.at(name):.2f} ms",
                    )
                found.append(
                    at_most(
                        f"publish-to-commit at {rate:,.0f}/s, {name} vs floor",
                        f"<= {number(most)} x floor",
                        value,
                        most,
                        shown,
                    )
                )
        return found


def _times(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


async def run_latency(
    environment: Sandbox, *, rates: list[float], seconds: float, log_dir: Path, into: Latency
) -> None:
    for rate in rates:
        floor = await measure_floor(environment, rate=rate, seconds=seconds)
        into.rates.append(await _worker_latency(environment, rate, seconds, log_dir, floor))


async def measure_floor(environment: Sandbox, *, rate: float, seconds: float) -> Floor:
    total = max(1, round(rate * seconds))
    await broker.purge(environment.amqp_url)
    settings = environment.settings
    config = {
        "url": environment.amqp_url,
        "count": WARM_UP_EVENTS + total,
        "warm_up": WARM_UP_EVENTS,
        "prefetch": settings.prefetch_count,
        "ack_every": 50,  # small batches, as the worker's at a moderate rate
        "timeout_s": seconds + 60,
    }
    async with helpers("bare_consumer", [config]) as (consumer,):
        await consumer.expect("ready")
        warm_up = list(Workload(WARM_UP_EVENTS).bodies())
        await publish_all(environment.amqp_url, warm_up, total=WARM_UP_EVENTS, label="warm-up")
        await consumer.expect("warm")
        since = datetime.now(UTC).timestamp()
        achieved = await _publish_at_rate(environment.amqp_url, rate, total)
        output = await consumer.result(within_s=seconds + 120)
    deliver = [
        latency
        for latency, stamp in zip(output["latencies"], output["stamps"], strict=True)
        if stamp >= since
    ]
    # As many commits as events, up to commit.SAMPLES: a p99 needs no more.
    commits = await commit.single_row_commits(environment.dsn, min(commit.SAMPLES, total))
    deliver_p, commit_p = summarise(deliver), summarise(commits)
    return Floor(round(achieved, 1), deliver_p, commit_p, added(deliver_p, commit_p))


async def _worker_latency(
    environment: Sandbox, rate: float, seconds: float, log_dir: Path, floor: Floor
) -> LatencyResult:
    dsn = environment.dsn
    total = max(1, round(rate * seconds))
    await database.reset(dsn, user_ids())
    await broker.purge(environment.amqp_url)
    await database.start_commit_clock(dsn)
    try:
        async with workers.running(environment, 1, log_dir) as command:
            warm_up = list(Workload(WARM_UP_EVENTS).bodies())
            await publish_all(environment.amqp_url, warm_up, total=WARM_UP_EVENTS, label="warm-up")

            async def written(count: int) -> bool:
                command.check_alive()
                return await database.committed_rows(dsn) >= count

            await wait_for(
                lambda: written(WARM_UP_EVENTS),
                every_s=0.1,  # a count(*) each time: light enough beside the workers
                within_s=60,
                what="the warm-up",
            )
            since = datetime.now(UTC).isoformat()
            achieved = await _publish_at_rate(environment.amqp_url, rate, total)
            await wait_for(
                lambda: written(WARM_UP_EVENTS + total),
                every_s=0.1,
                within_s=seconds + 60,
                what=f"{total} events at {rate:g}/s",
            )
        latencies = await database.write_latencies(dsn, since)
    finally:
        await database.stop_commit_clock(dsn)
    return LatencyResult(rate, round(achieved, 1), len(latencies), summarise(latencies), floor)


async def _publish_at_rate(amqp_url: str, rate: float, total: int) -> float:
    """Publish ``total`` events evenly spaced at ``rate``/s; returns the rate achieved.

    Confirms are collected, not awaited one by one: waiting for each would
    hold the next event back and spoil the spacing. Each event is stamped
    when its publish starts, not when it was scheduled: a loop that falls
    behind would otherwise count its own queue of publishes as the broker's
    latency, and the rate achieved is the span of those stamps.
    """
    conversations = Workload(total).conversations()
    loop = asyncio.get_running_loop()
    sent_at: list[float] = []
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)

        async def publish(n: int) -> object:
            conversation_id, user_id = conversations[n % len(conversations)]
            sent_at.append(loop.time())
            payload = body(n, conversation_id, user_id, datetime.now(UTC))
            return await channel.basic_publish(
                payload, exchange=topology.EXCHANGE, routing_key=ROUTING_KEY, properties=PROPERTIES
            )

        confirms: list[asyncio.Task[object]] = []
        started = loop.time()
        for n in range(total):
            # Sleep until this event's slot; a late loop publishes at once.
            delay = started + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            confirms.append(asyncio.create_task(publish(n)))
        if not all(isinstance(c, Basic.Ack) for c in await asyncio.gather(*confirms)):
            raise PublishRefusedError("the broker refused a publish")
    finally:
        await connection.close()
    elapsed = max(sent_at) - min(sent_at) if sent_at else 0.0
    # n events span n - 1 intervals.
    return (total - 1) / elapsed if total > 1 and elapsed > 0 else rate
