"""Failover of PostgreSQL under a running worker: nothing acknowledged is lost, nothing
is dead-lettered, and the worker follows the URL's hosts to the new primary.

The failover test runs against a primary and a synchronous standby of its own
(tests/postgres_pair.py); the read-only tests use a database of their own on
the test server.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from contracts.history import Repository, reader_engine
from tests.db import fetch_all
from tests.events import body, message_created
from tests.harness import (
    WorkerProcess,
    add_users,
    declare_topology,
    publish,
    queue_depth,
    wait_for,
    worker_settings,
)
from tests.postgres_pair import PostgresPair, Server, postgres_pair
from worker import topology
from worker.database import create_engine
from worker.settings import Settings
from worker.tools.sandbox import consumer_count, worker_environment

DATABASE = "chatstore_failover"
USER = "alice"
CONVERSATIONS = [uuid.uuid4() for _ in range(20)]


@pytest.fixture
def pair() -> Iterator[PostgresPair]:
    with postgres_pair() as started:
        yield started


def chatstore(command: str, settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", command],
        env=worker_environment(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass
class Stream:
    """Events published with confirms in chunks, until told to stop."""

    amqp_url: str
    chunk: int = 50
    pause_s: float = 0.02
    published: dict[str, str] = field(default_factory=dict)  # message id -> content
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async with await aio_pika.connect(self.amqp_url) as connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(topology.EXCHANGE)
            while not self._stop.is_set():
                confirmations = []
                for _ in range(self.chunk):
                    n = len(self.published)
                    event = message_created(
                        user_id=USER,
                        conversation_id=str(CONVERSATIONS[n % len(CONVERSATIONS)]),
                        content=f"event {n}",
                    )
                    message = aio_pika.Message(
                        body(event), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                    )
                    confirmations.append(exchange.publish(message, routing_key=event["type"]))
                    self.published[event["data"]["message_id"]] = event["data"]["content"]
                await asyncio.gather(*confirmations)
                await asyncio.sleep(self.pause_s)

    def stop(self) -> None:
        self._stop.set()


@contextlib.asynccontextmanager
async def streaming(amqp_url: str) -> AsyncIterator[Stream]:
    stream = Stream(amqp_url)
    task = asyncio.create_task(stream.run())
    try:
        yield stream
    finally:
        stream.stop()
        await task


@contextlib.asynccontextmanager
async def running(settings: Settings, log_dir: Path) -> AsyncIterator[WorkerProcess]:
    """A worker process, consuming; stopped with SIGTERM (exit 0) at the end.

    When the test fails inside, the worker is killed instead, so the test's
    own failure is the one reported.
    """
    worker = WorkerProcess(settings, log_dir / "worker.log").start()
    try:
        await worker.wait_consuming()
        yield worker
    except BaseException:
        worker.kill()
        raise
    await worker.stop(settings.drain_timeout_s + 10)


async def stored(server: Server) -> dict[str, str]:
    rows = await server.fetch("SELECT id::text AS id, content FROM messages", database=DATABASE)
    return {row["id"]: row["content"] for row in rows}


async def stored_count(server: Server) -> int:
    rows = await server.fetch("SELECT count(*) AS n FROM messages", database=DATABASE)
    return int(rows[0]["n"])


async def until(check: Any, within_s: float, what: str, worker: WorkerProcess) -> None:
    await wait_for(check, within_s=within_s, what=what, every_s=0.02, processes=[worker])


async def test_a_failover_to_the_synchronous_standby_keeps_every_acknowledged_event(
    pair: PostgresPair, amqp_url: str, tmp_path: Path
) -> None:
    settings = worker_settings(pair.url(DATABASE), amqp_url, database_timeout_s=10.0)
    migrated = chatstore("migrate", settings)
    assert migrated.returncode == 0, migrated.stderr
    created = await pair.primary.fetch("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
    assert created, "chatstore migrate did not create the database on the primary"
    await pair.primary.fetch("INSERT INTO users (id) VALUES ($1)", USER, database=DATABASE)
    await declare_topology(amqp_url)

    # Readers built from the same URL: one for the primary, one for a standby.
    primary_reader = reader_engine(pair.url(DATABASE, "read-write"))
    standby_reader = reader_engine(pair.url(DATABASE, "prefer-standby"))
    try:
        async with running(settings, tmp_path) as worker:
            async with streaming(amqp_url) as stream:
                await until(
                    lambda: _more_than(pair.primary, 300), 30, "300 rows on the primary", worker
                )
                async with standby_reader.connect() as connection:
                    assert await connection.scalar(text("SELECT pg_is_in_recovery()")) is True
                assert await Repository(standby_reader).conversation(USER, CONVERSATIONS[0])
                assert await Repository(primary_reader).conversation(USER, CONVERSATIONS[0])

                # Visible on the synchronous primary means confirmed by the standby:
                # this includes every delivery acknowledged so far.
                committed_before = await stored(pair.primary)
                stopped_at = time.monotonic()
                pair.primary.stop("immediate")
                await asyncio.sleep(1.0)  # the outage: the worker retries, holding its batch
                on_standby_at_promotion = await stored_count(pair.standby)
                pair.standby.promote()
                promoted_at = time.monotonic()
                await until(
                    lambda: _more_than(pair.standby, on_standby_at_promotion),
                    30,
                    "the first commit on the new primary",
                    worker,
                )
                first_commit_at = time.monotonic()
                await asyncio.sleep(0.5)  # keep publishing onto the new primary
            published = stream.published

            async def all_stored() -> bool:
                return await stored_count(pair.standby) >= len(published)

            await until(all_stored, 60, f"{len(published)} rows on the new primary", worker)
            await asyncio.sleep(0.3)  # anything extra would show now
            on_new_primary = await stored(pair.standby)
            lost = set(published) - set(on_new_primary)
            extra = set(on_new_primary) - set(published)
            dead_lettered = await queue_depth(amqp_url, topology.DLQ)
            report = {
                "events published": len(published),
                "rows on the primary before the stop": len(committed_before),
                "rows stored on the new primary": len(on_new_primary),
                "lost": len(lost),
                "unexpected": len(extra),
                "dead-lettered": dead_lettered,
                "outage (stop to promote) s": round(promoted_at - stopped_at, 2),
                "recovery (stop to first commit) s": round(first_commit_at - stopped_at, 2),
                "recovery (promote to first commit) s": round(first_commit_at - promoted_at, 2),
            }
            print("failover:", report)

            assert set(committed_before) <= set(on_new_primary), "acknowledged commits were lost"
            assert not lost, f"{len(lost)} published events are not on the new primary"
            assert not extra
            assert on_new_primary == published  # each row as published, row by row
            assert len(on_new_primary) == await stored_count(pair.standby)
            assert dead_lettered == 0
            assert await queue_depth(amqp_url) == 0
            assert await consumer_count(amqp_url) == 1, "the worker stopped consuming"
            worker.check_alive()
            log = worker.log()
            assert "batch.retry" in log or "database.unreachable" in log
            assert "database.recovered" in log
            assert "worker.fatal" not in log

            # The readers follow too: the one for writes reconnects to the new
            # primary on its next read, the one for standbys takes what is left.
            for reader in (primary_reader, standby_reader):
                async with reader.connect() as connection:
                    assert await connection.scalar(text("SELECT inet_server_port()")) == (
                        pair.standby.port
                    )
                assert await Repository(reader).conversation(USER, CONVERSATIONS[0])
    finally:
        await primary_reader.dispose()
        await standby_reader.dispose()


async def _more_than(server: Server, rows: int) -> bool:
    return await stored_count(server) > rows


# --- a server that answers read-only for a while ---------------------------


async def _set_read_only(database_url: URL, on: bool) -> None:
    name = database_url.database
    change = (
        "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
    )
    admin = database_url.set(database="postgres")
    await fetch_all(admin, f'ALTER DATABASE "{name}" {change}')
    # Sessions take the database's settings when they start: end the worker's.
    await fetch_all(
        admin,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = $1 AND pid <> pg_backend_pid()",
        name,
    )


@pytest.mark.parametrize("target_session_attrs", [None, "read-write"])
async def test_a_server_that_answers_read_only_for_a_while_is_waited_out(
    database_url: URL, amqp_url: str, tmp_path: Path, target_session_attrs: str | None
) -> None:
    url = database_url.set(drivername="postgresql")
    if target_session_attrs:
        url = url.update_query_dict({"target_session_attrs": target_session_attrs})
    settings = worker_settings(url, amqp_url, database_timeout_s=10.0)
    await add_users(database_url, USER)
    await declare_topology(amqp_url)

    def events(n: int) -> list[dict[str, Any]]:
        return [message_created(user_id=USER) for _ in range(n)]

    async def rows() -> int:
        return int((await fetch_all(database_url, "SELECT count(*) AS n FROM messages"))[0]["n"])

    async with running(settings, tmp_path) as worker:
        await publish(amqp_url, events(10))
        await until(lambda: _equals(rows, 10), 30, "the first 10 rows", worker)

        await _set_read_only(database_url, on=True)
        await publish(amqp_url, events(10))
        # A read-only server refuses the write (25006) or, asked for read-write,
        # the connection; either way the worker retries and holds the batch.
        expected = "25006" if target_session_attrs is None else "None of the hosts match"

        async def retried() -> bool:
            return expected in worker.log()

        await until(retried, 30, f"a retry on {expected}", worker)
        await asyncio.sleep(1.0)  # several retries, with the server still read-only
        assert await rows() == 10
        assert await queue_depth(amqp_url, topology.DLQ) == 0

        await _set_read_only(database_url, on=False)
        await until(lambda: _equals(rows, 20), 30, "all 20 rows once writable", worker)
        assert await queue_depth(amqp_url, topology.DLQ) == 0
        assert await queue_depth(amqp_url) == 0
        worker.check_alive()
        assert "database.recovered" in worker.log()
        assert "worker.fatal" not in worker.log()


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value() == expected)


async def test_a_read_only_answer_drops_the_pooled_connection(
    database_url: URL, amqp_url: str
) -> None:
    """Without dropping it, the pool would hand the same read-only session back forever."""
    settings = worker_settings(
        database_url.set(drivername="postgresql"), amqp_url, database_timeout_s=10.0
    )
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            first = await connection.scalar(text("SELECT pg_backend_pid()"))
            # Session state that outlives the transaction, as a demoted server's would.
            await connection.execute(text("SET SESSION default_transaction_read_only = on"))
            await connection.commit()
        with pytest.raises(DBAPIError, match="read-only transaction") as refused:
            async with engine.begin() as connection:
                await connection.execute(text("INSERT INTO users (id) VALUES ('x')"))
        assert getattr(refused.value.orig, "sqlstate", None) == "25006"
        async with engine.begin() as connection:
            second = await connection.scalar(text("SELECT pg_backend_pid()"))
            await connection.execute(text("INSERT INTO users (id) VALUES ('x')"))
        assert second != first, "the read-only connection went back into the pool"
    finally:
        await engine.dispose()


# --- a commit whose wait for the synchronous standby was cancelled ----------


async def test_an_event_committed_only_on_the_primary_is_not_acknowledged(
    pair: PostgresPair, amqp_url: str, tmp_path: Path
) -> None:
    """With the synchronous standby away, a commit waits for it; the worker's statement
    timeout cancels the wait, and PostgreSQL keeps the commit on the primary alone
    ("canceling wait for synchronous replication"). The retry must not acknowledge
    the events until the standby has them: a failover to it would lose them."""
    settings = worker_settings(pair.url(DATABASE), amqp_url, database_timeout_s=2.0)
    migrated = chatstore("migrate", settings)
    assert migrated.returncode == 0, migrated.stderr
    await pair.primary.fetch("INSERT INTO users (id) VALUES ($1)", USER, database=DATABASE)
    await declare_topology(amqp_url)
    first = WorkerProcess(settings, tmp_path / "first.log").start()
    try:
        await first.wait_consuming()
        pair.standby.stop("fast")
        events = [message_created(user_id=USER) for _ in range(20)]
        await publish(amqp_url, events)

        async def timed_out_and_retried() -> bool:
            return first.log().count("batch.retry") >= 2

        await until(timed_out_and_retried, 30, "the worker's commits timing out", first)
        await asyncio.sleep(3 * settings.database_timeout_s)  # more attempts
        # Committed there alone: the case this test is about.
        assert await stored_count(pair.primary) > 0
    finally:
        first.kill()  # what it did not acknowledge goes back to the queue
    pair.primary.stop("immediate")
    pair.standby.start()
    pair.standby.promote()
    async with running(settings, tmp_path) as second:

        async def all_on_the_new_primary() -> bool:
            return await stored_count(pair.standby) == len(events)

        await until(all_on_the_new_primary, 20, "every event on the new primary", second)
