"""The read path's pooled connections: replaced when the server closed them (a
local check, not a ping), a read the server cut off run again, one that failed on
its data not.

Against the real PostgreSQL: the server side is ended with
``pg_terminate_backend``, which is what a restart or a failover does to it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.history import Repository, reader_engine
from tests.db import fetch_all
from tests.harness import add_users, wait_for
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


async def test_a_connection_the_server_closed_is_replaced_at_checkout(
    database_url: URL, reader: AsyncEngine
) -> None:
    await add_users(database_url, "alice")
    conversation = await add_conversation(database_url, "alice", None)
    first = await _backend_pid(reader)
    await _terminate(database_url, first)

    async def gone() -> bool:
        return not await _running(database_url, first)

    await wait_for(gone, within_s=10, what=f"backend {first} to end", every_s=0.02)
    await asyncio.sleep(0.1)  # the event loop reads the closed socket

    # Through SQLAlchemy's own Connection, which would raise on the closed one
    # (it retries nothing): only the checkout's check can have replaced it.
    second = await _backend_pid(reader)
    assert second != first
    found = await Repository(reader).conversation("alice", conversation)
    assert found is not None
    assert found.id == conversation


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


@pytest.mark.parametrize(
    ("sql", "argument", "error"),
    [
        ("SELECT 1 / $1::int", 0, asyncpg.DivisionByZeroError),  # the server refuses it
        ("SELECT $1::int", "x", asyncpg.DataError),  # asyncpg cannot encode it
        # A client-side error that spoils the connection (it is then closed),
        # which must not pass for a lost one.
        ("SELECT $1::int, $2::int", 1, asyncpg.InterfaceError),
    ],
)
async def test_a_read_that_fails_on_its_statement_or_arguments_runs_once(
    reader: AsyncEngine, sql: str, argument: object, error: type[Exception]
) -> None:
    checkouts: list[int] = []
    event.listen(reader.sync_engine, "checkout", lambda *_: checkouts.append(1))
    with pytest.raises(error):
        await Repository(reader)._run(sql, [argument])
    assert len(checkouts) == 1, "the read ran again"


async def test_a_failure_to_connect_is_sqlalchemys_dbapi_error(database_url: URL) -> None:
    engine = reader_engine(database_url.set(database=f"missing_{uuid.uuid4().hex[:8]}"))
    try:
        with pytest.raises(DBAPIError, match="does not exist"):
            await Repository(engine).conversations("alice")
    finally:
        await engine.dispose()


async def test_a_server_error_on_the_data_keeps_the_pooled_connection(
    reader: AsyncEngine,
) -> None:
    repository = Repository(reader)
    first = await _backend_pid(reader)
    with pytest.raises(asyncpg.DivisionByZeroError):
        await repository._run("SELECT 1 / $1::int", [0])
    rows = await repository._run("SELECT pg_backend_pid() AS pid, $1::text AS tag", ["x"])
    assert [tuple(row) for row in rows] == [(first, "x")], "a clean error spoilt the connection"
