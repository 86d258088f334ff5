"""Scenario (g): 200 concurrent reader connections through PgBouncer in transaction mode.

The design documents' target is 100+ concurrent connections. The bench
starts a PgBouncer of its own (``worker.tools.bench.pgbouncer``) with a pool
of ``--pool-size`` (20) server connections in front of the read data set of
(e), and ``--pooled-readers`` (200) repository readers, each a connection of
its own to PgBouncer, spread over ``--pooled-processes`` (4) processes. They
use ``reader_engine(transaction_pooling=True)``, as an application behind
PgBouncer does: no statement cache, unnamed statements. Only the pool's 20
reach PostgreSQL, whose ``max_connections`` the 200 would otherwise exceed.
Every error is counted and reported; the scenario wants none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from worker.tools.bench import pgbouncer
from worker.tools.bench.goals import Goal
from worker.tools.bench.reads import QUERIES, Readings, read
from worker.tools.sandbox import Sandbox


@dataclass
class Pooled:
    """Scenario (g), or why it did not run."""

    messages: int = 0
    readers: int = 0
    pool_size: int = 0
    readings: Readings | None = None
    skipped: str | None = None

    def document(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def table(self) -> list[str]:
        if self.readings is None and self.skipped is None:
            return []
        title = (
            f"| (g) {self.readers} readers through PgBouncer, transaction mode, "
            f"pool {self.pool_size}, {self.messages:,} messages "
            "| p50 ms | p95 ms | p99 ms | queries/s | errors |"
        )
        lines = [title, "| --- | --- | --- | --- | --- | --- |"]
        if self.readings is None:
            lines.append(f"| skipped: {self.skipped} | | | | | |")
            return lines
        run = self.readings
        for query in QUERIES:
            p = getattr(run, query)
            lines.append(
                f"| {query} (repository, {run.processes} processes) | {p.p50_ms:.2f} "
                f"| {p.p95_ms:.2f} | {p.p99_ms:.2f} | {run.queries_per_s:,.0f} | {run.errors} |"
            )
        for sample in run.error_samples:
            lines.append(f"| error: {sample} | | | | | |")
        return lines

    def goals(self) -> list[Goal]:
        return []  # issue 11's table has none for (g); its errors must be 0, shown above


async def run_pooled(
    environment: Sandbox,
    *,
    messages: int,
    readers: int,
    processes: int,
    pool_size: int,
    seconds: float,
    into: Pooled,
) -> None:
    into.messages, into.readers, into.pool_size = messages, readers, pool_size
    if pgbouncer.binary() is None:
        into.skipped = pgbouncer.INSTALL_HINT
        return
    async with pgbouncer.running(
        environment.database_url, pool_size=pool_size, clients=readers
    ) as through:
        url = through.render_as_string(hide_password=False)
        (into.readings,) = await read(
            url, ("pooled",), readers=readers, processes=processes, seconds=seconds
        )
