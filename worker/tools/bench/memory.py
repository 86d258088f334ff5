"""Scenario (f): the worker's peak memory while a backlog of a million events waits.

The broker holds the backlog; the worker should hold only its prefetch (1,000
deliveries by default) and one batch, whatever the backlog's size. Its peak
resident set (VmHWM in /proc/PID/status, which the kernel keeps for us, so
no sample can miss a spike) is read while it consumes the backlog. The goal
is absolute, not a ratio: memory does not swing with the machine's load.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from worker.tools.bench import broker, database, workers
from worker.tools.bench.goals import Goal, at_most, number
from worker.tools.bench.publisher import publish_all
from worker.tools.bench.stats import mib
from worker.tools.bench.workload import Workload, user_ids
from worker.tools.sandbox import Sandbox, queue_depth

GOAL_MIB: Final = 150.0
GOAL_BACKLOG: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class MemoryResult:
    backlog: int
    seconds: float
    consumed: int
    waiting_at_end: int
    peak_rss_mib: float


@dataclass
class Memory:
    """Scenario (f), once it ran."""

    result: MemoryResult | None = None

    def document(self) -> dict[str, Any]:
        return {} if self.result is None else dataclasses.asdict(self.result)

    def table(self) -> list[str]:
        if (found := self.result) is None:
            return []
        return [
            "| (f) worker memory | peak RSS | consumed |",
            "| --- | --- | --- |",
            f"| 1 worker, backlog of {found.backlog:,} | {found.peak_rss_mib:g} MiB "
            f"| {found.consumed:,} in {found.seconds:g} s, "
            f"{found.waiting_at_end:,} still waiting |",
        ]

    def goals(self) -> list[Goal]:
        backlog = GOAL_BACKLOG if self.result is None else self.result.backlog
        what = f"worker peak RSS, backlog of {backlog:,}"
        if backlog != GOAL_BACKLOG:
            what += f" (the goal's is {GOAL_BACKLOG:,})"
        peak = None if self.result is None else self.result.peak_rss_mib
        shown = None if peak is None else f"{number(peak)} MiB"
        return [at_most(what, f"<= {GOAL_MIB:g} MiB", peak, GOAL_MIB, shown)]


async def run_memory(
    environment: Sandbox, *, backlog: int, seconds: float, log_dir: Path
) -> MemoryResult:
    dsn = environment.dsn
    await database.reset(dsn, user_ids())
    await broker.purge(environment.amqp_url)
    await publish_all(
        environment.amqp_url, Workload(backlog).bodies(), total=backlog, label="(f) backlog"
    )
    async with workers.running(environment, 1, log_dir) as command:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            command.check_alive()  # records VmHWM, and fails if the worker died
            await asyncio.sleep(0.5)
        command.check_alive()
        waiting = await queue_depth(environment.amqp_url)
    consumed = await database.fetch_value(dsn, "SELECT count(*) FROM messages")
    assert isinstance(consumed, int)
    await broker.purge(environment.amqp_url)
    return MemoryResult(backlog, seconds, consumed, waiting, mib(command.peak()))
