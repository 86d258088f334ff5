"""The read path's pooled connections: replaced when the server closed them (a
local check, not a ping), a read the server cut off run again, one that failed on
its data not.

Against the real PostgreSQL: the server side is ended with
``pg_terminate_backend``, which is what a restart or a failover does to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.history import Repository, reader_engine
from tests.db import fetch_all
from tests.harness import add_users
from tests.test_repository import add_conversation


@pytest.fixture
async def reader(database_url: URL) -> AsyncIterator[AsyncEngine]:
    engine = reader_engine(database_url, pool_size=1, max_overflow=0)
    yield engine
    await engine.dispose()


async def _backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text("SELECT pg_backend_pid()")))


async def _terminate(database_url: URL, pid: int) -> None:
    rows = await fetch_all(database_url, "SELECT pg_terminate_backend($1) AS done", pid)
    assert rows[0]["done"], f"backend {pid} was not there to terminate"


async def _running(database_url: URL, pid: int) -> bool:
    rows = await fetch_all(database_url, "SELECT 1 FROM pg_stat_activity WHERE pid = $1", pid)
    return bool(rows)


async def test_a_read_on_a_connection_the_server_closed_gets_a_new_one_and_succeeds(
    database_url: URL, reader: AsyncEngine
) -> None:
    await add_users(database_url, "alice")
    conversation = await add_conversation(database_url, "alice", None)
    repository = Repository(reader)
    assert await repository.conversation("alice", conversation)
    first = await _backend_pid(reader)
    await _terminate(database_url, first)
    await asyncio.sleep(0.2)  # the pooled connection sees its socket close

    found = await repository.conversation("alice", conversation)

    assert found is not None
    assert found.id == conversation
    second = await _backend_pid(reader)
    assert second != first
    assert not await _running(database_url, first), "the terminated backend still runs"


async def test_a_read_cut_off_by_the_server_is_run_again_on_a_new_connection(
    database_url: URL, reader: AsyncEngine
) -> None:
    repository = Repository(reader)
    first = await _backend_pid(reader)
    # A statement that takes long enough to be cut off in the middle; the
    # repository's own reads are too quick to catch, and take the same path.
    reading = asyncio.create_task(
        repository._run("SELECT pg_sleep(0.5), pg_backend_pid() AS pid, $1::text AS tag", ["t"])
    )
    await asyncio.sleep(0.2)
    await _terminate(database_url, first)

    rows = await asyncio.wait_for(reading, 10)

    assert rows[0]["tag"] == "t"
    assert rows[0]["pid"] != first, "the answer came from the terminated backend"


async def test_a_read_error_on_the_data_keeps_the_connection_and_is_not_run_again(
    reader: AsyncEngine,
) -> None:
    repository = Repository(reader)
    first = await _backend_pid(reader)
    with pytest.raises(asyncpg.DivisionByZeroError):
        await repository._run("SELECT 1 / $1::int", [0])
    rows = await repository._run("SELECT pg_backend_pid() AS pid, $1::text AS tag", ["x"])
    assert [tuple(row) for row in rows] == [(first, "x")], "a clean error spoilt the connection"
