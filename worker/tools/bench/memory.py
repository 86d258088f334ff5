"""Scenario (f): the worker's peak memory while a backlog of a million events waits.

The broker holds the backlog; the worker should hold only its prefetch (1,000
deliveries by default) and one batch, whatever the backlog's size. Its peak
resident set (VmHWM in /proc/PID/status, which the kernel keeps for us, so
no sample can miss a spike) is read while it consumes the backlog.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from worker.tools.bench import broker, database
from worker.tools.bench.publisher import publish_all
from worker.tools.bench.stats import mib
from worker.tools.bench.workload import Workload, user_ids
from worker.tools.sandbox import Sandbox, queue_depth, running_workers


@dataclass(frozen=True, slots=True)
class MemoryResult:
    backlog: int
    seconds: float
    consumed: int
    waiting_at_end: int
    peak_rss_mib: float


async def run_memory(
    environment: Sandbox, *, backlog: int, seconds: float, log_dir: Path
) -> MemoryResult:
    dsn = environment.dsn
    await database.reset(dsn, user_ids())
    await broker.purge(environment.amqp_url)
    await publish_all(
        environment.amqp_url, Workload(backlog).bodies(), total=backlog, label="(f) backlog"
    )
    async with running_workers(environment, 1, log_dir) as workers:
        (worker,) = workers
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            worker.check_alive()  # records VmHWM, and fails if the worker died
            await asyncio.sleep(0.5)
        worker.check_alive()
        waiting = await queue_depth(environment.amqp_url)
    consumed = await database.fetch_value(dsn, "SELECT count(*) FROM messages")
    assert isinstance(consumed, int)
    await broker.purge(environment.amqp_url)
    return MemoryResult(backlog, seconds, consumed, waiting, mib(worker.peak_rss_kib))
