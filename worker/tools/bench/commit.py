"""The database's floor for scenario (d): the latency of committing one row.

One asyncpg connection inserts one row at a time into a scratch table, each
INSERT a prepared statement in its own implicit transaction: one round trip
that includes the commit and its WAL flush (what ``pgbench`` measures with a
one-line script). That is the least any writer pays to make an event
durable; the worker's batch adds its statements to it. The table exists
only while this runs.
"""

from __future__ import annotations

import time
from typing import Final

import asyncpg

SAMPLES: Final = 1000
"""Commits timed; about half a second on a quiet 2-core machine, enough for a p99."""
WARM_UP: Final = 20


async def single_row_commits(dsn: str, samples: int = SAMPLES) -> list[float]:
    """Seconds each of ``samples`` one-row INSERT-and-COMMITs took, in a row."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CREATE TABLE IF NOT EXISTS bench_floor_commits (n bigint)")
        statement = await connection.prepare("INSERT INTO bench_floor_commits (n) VALUES ($1)")
        for n in range(WARM_UP):
            await statement.fetch(n)
        latencies = []
        for n in range(samples):
            started = time.perf_counter()
            await statement.fetch(n)
            latencies.append(time.perf_counter() - started)
        await connection.execute("DROP TABLE bench_floor_commits")
    finally:
        await connection.close()
    return latencies
