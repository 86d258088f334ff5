"""The bench database: resetting it, and a clock that records when rows were written.

Why a trigger: the worker's latency histogram (``chatstore_publish_to_commit_seconds``)
has coarse buckets (10, 20, 50 ms) and needs the HTTP port, and polling
``count(*)`` from outside is both coarse and a load of its own. A bench-only
statement-level ``AFTER INSERT`` trigger on ``messages`` instead records, for
every row, the ``clock_timestamp()`` at the end of the worker's INSERT, in the
worker's transaction. That instant is earlier than the commit by the rest of
the batch's transaction (the conversations UPDATE and the COMMIT itself,
about a millisecond for a batch of a few hundred): the latencies reported are
low by at most that much. Rows rolled back leave no trace, since the side
table is written in the same transaction. The trigger exists only while the
scenarios that read it run.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from worker.tools.sandbox import execute

_INSTALL_CLOCK = """
CREATE TABLE IF NOT EXISTS bench_commits (created_at timestamptz, written_at timestamptz);
CREATE OR REPLACE FUNCTION bench_record_commit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    written timestamptz := clock_timestamp();  -- one instant for the whole batch
BEGIN
    INSERT INTO bench_commits SELECT created_at, written FROM bench_new_rows;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER bench_record_commit AFTER INSERT ON messages
    REFERENCING NEW TABLE AS bench_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bench_record_commit();
"""
_REMOVE_CLOCK = """
DROP TRIGGER IF EXISTS bench_record_commit ON messages;
DROP FUNCTION IF EXISTS bench_record_commit();
DROP TABLE IF EXISTS bench_commits;
"""


@dataclass(frozen=True, slots=True)
class CommitSpan:
    """When the first and last batches were written, and how many rows came after the first."""

    rows: int
    seconds: float
    rows_after_first: int


async def fetch_value(dsn: str, sql: str, *args: object) -> object:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval(sql, *args)
    finally:
        await connection.close()


async def reset(dsn: str, users: list[str]) -> None:
    """Empty the chat tables, keep exactly ``users``, and stop the commit clock."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(_REMOVE_CLOCK)
        await connection.execute("TRUNCATE messages, conversations")
        await connection.execute(
            "INSERT INTO users (id) SELECT unnest($1::varchar[]) ON CONFLICT DO NOTHING", users
        )
    finally:
        await connection.close()


async def start_commit_clock(dsn: str) -> None:
    await execute(dsn, _INSTALL_CLOCK)


async def stop_commit_clock(dsn: str) -> None:
    await execute(dsn, _REMOVE_CLOCK)


async def committed_rows(dsn: str) -> int:
    value = await fetch_value(dsn, "SELECT count(*) FROM bench_commits")
    assert isinstance(value, int)
    return value


async def commit_span(dsn: str, since: float = 0.0) -> CommitSpan:
    """The span of the writes from the first batch written after ``since`` (epoch
    seconds) to the last; that first batch only starts the clock."""
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            """
            WITH start AS (
                SELECT min(written_at) AS at FROM bench_commits
                WHERE written_at > to_timestamp($1::float8)
            )
            SELECT (SELECT count(*) FROM bench_commits) AS rows,
                   extract(epoch FROM max(c.written_at) - min(s.at)) AS seconds,
                   count(*) FILTER (WHERE c.written_at > s.at) AS after_first
            FROM bench_commits AS c, start AS s
            """,
            since,
        )
    finally:
        await connection.close()
    assert row is not None
    return CommitSpan(int(row["rows"]), float(row["seconds"] or 0), int(row["after_first"]))


async def write_latencies(dsn: str, since: str) -> list[float]:
    """Seconds from each event's publish time (its created_at) to its write.

    ``since`` (an ISO timestamp) leaves out the warm-up events published before it.
    """
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT extract(epoch FROM written_at - created_at)::float8 AS s FROM bench_commits"
            " WHERE created_at >= $1::text::timestamptz",
            since,
        )
    finally:
        await connection.close()
    return [row["s"] for row in rows]
