"""Scenario (d): publish-to-commit latency of one worker at a fixed publish rate.

Each event's ``occurred_at`` (and ``created_at``) is the wall-clock time at
which it was handed to the broker; the commit clock (``worker.tools.bench.database``)
records when the worker's INSERT wrote it. Both clocks are this machine's.
A warm-up burst is written first and left out, so the worker's start does
not count.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiormq
from pamqp.commands import Basic

from worker import topology
from worker.tools.bench import broker, database
from worker.tools.bench.publisher import PROPERTIES, PublishRefusedError, publish_all
from worker.tools.bench.stats import Percentiles, summarise
from worker.tools.bench.workload import ROUTING_KEY, Workload, body, user_ids
from worker.tools.sandbox import Sandbox, running_workers, wait_for

WARM_UP_EVENTS = 20


@dataclass(frozen=True, slots=True)
class LatencyResult:
    target_rate: float
    achieved_rate: float
    events: int
    latency: Percentiles


async def run_latency(
    environment: Sandbox, *, rate: float, seconds: float, log_dir: Path
) -> LatencyResult:
    dsn = environment.dsn
    total = max(1, round(rate * seconds))
    await database.reset(dsn, user_ids())
    await broker.purge(environment.amqp_url)
    await database.start_commit_clock(dsn)
    try:
        async with running_workers(environment, 1, log_dir) as workers:
            warm_up = list(Workload(WARM_UP_EVENTS).bodies())
            await publish_all(environment.amqp_url, warm_up, total=WARM_UP_EVENTS, label="warm-up")

            async def written(count: int) -> bool:
                return await database.committed_rows(dsn) >= count

            await wait_for(
                lambda: written(WARM_UP_EVENTS),
                processes=workers,
                every_s=0.1,  # a count(*) each time: light enough beside the workers
                within_s=60,
                what="the warm-up",
            )
            since = datetime.now(UTC).isoformat()
            achieved = await _publish_at_rate(environment.amqp_url, rate, total)
            await wait_for(
                lambda: written(WARM_UP_EVENTS + total),
                processes=workers,
                every_s=0.1,  # a count(*) each time: light enough beside the workers
                within_s=seconds + 60,
                what=f"{total} events at {rate:g}/s",
            )
        latencies = await database.write_latencies(dsn, since)
    finally:
        await database.stop_commit_clock(dsn)
    return LatencyResult(rate, round(achieved, 1), len(latencies), summarise(latencies))


async def _publish_at_rate(amqp_url: str, rate: float, total: int) -> float:
    """Publish ``total`` events evenly spaced at ``rate``/s; returns the rate achieved.

    Confirms are collected, not awaited one by one: waiting for each would
    hold the next event back and spoil the spacing.
    """
    conversations = Workload(total).conversations()
    loop = asyncio.get_running_loop()
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        confirms: list[asyncio.Task[object]] = []
        started = loop.time()
        for n in range(total):
            # Sleep until this event's slot; a late loop publishes at once.
            delay = started + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            conversation_id, user_id = conversations[n % len(conversations)]
            payload = body(n, conversation_id, user_id, datetime.now(UTC))
            confirms.append(
                asyncio.create_task(
                    channel.basic_publish(
                        payload,
                        exchange=topology.EXCHANGE,
                        routing_key=ROUTING_KEY,
                        properties=PROPERTIES,
                    )
                )
            )
        elapsed = loop.time() - started
        if not all(isinstance(c, Basic.Ack) for c in await asyncio.gather(*confirms)):
            raise PublishRefusedError("the broker refused a publish")
    finally:
        await connection.close()
    # n events span n - 1 intervals.
    return (total - 1) / elapsed if total > 1 and elapsed > 0 else rate
