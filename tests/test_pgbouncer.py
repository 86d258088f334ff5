"""Three workers through a real PgBouncer in transaction mode, with a pool of two.

Debian's PgBouncer 1.18 knows nothing of prepared statements: consecutive
transactions of one client land on whichever server connection is free, so a
statement prepared in one and run in another, or two clients preparing the
same name on one server connection, fails. ``CHATSTORE_DATABASE_POOL_MODE=
transaction`` must make the worker immune to that (worker/database.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from tests.db import dsn
from tests.events import message_created
from tests.harness import (
    WorkerProcess,
    add_users,
    count,
    declare_topology,
    free_port,
    publish,
    queue_has,
    table_has,
    take_dead_letters,
    wait_for,
    worker_settings,
)
from worker import topology
from worker.database import create_engine
from worker.settings import Settings
from worker.tools.bench import pgbouncer

POOL_SIZE = 2
WORKERS = 3
CONVERSATIONS = 300
MESSAGES_PER_CONVERSATION = 10
RESENT = 300  # identical copies, so the compare-with-stored statement runs too


def _pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.fail(
            "pgbouncer is not installed; this test needs a real one (apt-get install pgbouncer)",
            pytrace=False,
        )
    return found


@contextlib.contextmanager
def _running_pgbouncer(upstream: URL) -> Iterator[URL]:
    binary = _pgbouncer_binary()
    directory = Path(tempfile.mkdtemp(prefix="chatstore-pgbouncer-"))
    port = free_port()
    # The bench's own configuration: transaction mode, a pool of POOL_SIZE.
    (directory / "pgbouncer.ini").write_text(
        pgbouncer.config(upstream, port=port, pool_size=POOL_SIZE, clients=80, directory=directory)
    )
    (directory / "userlist.txt").write_text(f'"{upstream.username}" ""\n')
    command = [binary, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        account = pwd.getpwnam("postgres" if _has_user("postgres") else "nobody")
        for path in [directory, *directory.iterdir()]:
            os.chown(path, account.pw_uid, account.pw_gid)
        command[1:1] = ["--user", account.pw_name]
    with (directory / "output.log").open("wb") as output:  # what it says before its log opens
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, process, directory)
        yield upstream.set(host="127.0.0.1", port=port)
    finally:
        process.send_signal(signal.SIGTERM)  # immediate shutdown
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _wait_for_port(port: int, process: subprocess.Popen[bytes], directory: Path) -> None:
    for _ in range(200):
        if process.poll() is not None:
            logs = [directory / "output.log", directory / "pgbouncer.log"]
            text = "".join(log.read_text(errors="replace") for log in logs if log.exists())
            pytest.fail(f"pgbouncer exited with {process.returncode}:\n{text}", pytrace=False)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
            return
        time.sleep(0.05)
    pytest.fail("pgbouncer did not listen within 10 s", pytrace=False)


@pytest.fixture
def pgbouncer_url(database_url: URL) -> Iterator[URL]:
    """The test's own database, reached through a PgBouncer of this test's own."""
    with _running_pgbouncer(database_url) as url:
        yield url


def _events() -> list[dict[str, object]]:
    events = []
    for n in range(CONVERSATIONS):
        conversation_id = str(uuid.uuid4())
        for m in range(MESSAGES_PER_CONVERSATION):
            events.append(
                message_created(
                    conversation_id=conversation_id,
                    user_id=f"user-{n % 7}",
                    content=f"message {m} of conversation {n}",
                    created_at=f"2026-11-22T12:{m:02d}:00+00:00",
                )
            )
    return events


async def _server_side_prepared_statements(url: URL) -> int:
    """Named statements left on PgBouncer's server connections (all of them at once)."""
    connections = [
        await asyncpg.connect(dsn(url), statement_cache_size=0) for _ in range(POOL_SIZE)
    ]
    try:
        transactions = [connection.transaction() for connection in connections]
        for transaction in transactions:  # each holds one server connection
            await transaction.start()
        counts = [
            await connection.fetchval("SELECT count(*) FROM pg_prepared_statements")
            for connection in connections
        ]
        for transaction in transactions:
            await transaction.rollback()
        return int(sum(counts))
    finally:
        for connection in connections:
            await connection.close()


async def test_three_workers_behind_transaction_pooling_store_every_row_once(
    pgbouncer_url: URL, database_url: URL, amqp_url: str, tmp_path: Path
) -> None:
    await add_users(database_url, *(f"user-{n}" for n in range(7)))
    await declare_topology(amqp_url)
    events = _events()
    settings = worker_settings(pgbouncer_url, amqp_url, database_pool_mode="transaction")
    workers = [
        WorkerProcess(settings, tmp_path / f"worker-{n}.log").start() for n in range(WORKERS)
    ]
    try:
        # All three consuming before the stream starts: each gets a share,
        # and none is still starting (no signal handlers yet) at SIGTERM.
        for worker in workers:
            await worker.wait_consuming()
        await publish(amqp_url, events + events[:RESENT])
        await wait_for(
            table_has(database_url, "messages", len(events)), within_s=60, what="every message"
        )
        await wait_for(queue_has(amqp_url, topology.QUEUE, 0), what="an empty work queue")
        for worker in workers:
            worker.send(signal.SIGTERM)
        codes = await asyncio.gather(*(worker.wait() for worker in workers))
    finally:
        for worker in workers:
            worker.kill()

    logs = "\n".join(worker.log() for worker in workers)
    assert codes == [0] * WORKERS, logs[-3000:]
    assert "prepared statement" not in logs.lower()
    assert "worker.fatal" not in logs
    assert await count(database_url, "messages") == len(events)
    assert await count(database_url, "conversations") == CONVERSATIONS
    assert await take_dead_letters(amqp_url) == []
    # Nothing was left behind on the server connections for the next client.
    assert await _server_side_prepared_statements(pgbouncer_url) == 0


async def _switch_server_connection_between_statements(settings: Settings) -> None:
    """Run one statement twice, on different server connections, as PgBouncer may.

    The pool starts empty: the first run opens the only server connection,
    another client then holds it in a transaction, so the second run gets a
    new one, where nothing prepared by the first exists.
    """
    statement = text("SELECT CAST(:n AS integer) + 1")
    client, other = create_engine(settings), create_engine(settings)
    try:
        async with client.connect() as connection:
            await connection.execute(statement, {"n": 1})
        async with other.begin() as holding:
            await holding.execute(text("SELECT 1"))
            async with client.connect() as connection:
                await connection.execute(statement, {"n": 2})
    finally:
        await client.dispose()
        await other.dispose()


async def test_the_transaction_pool_mode_survives_a_change_of_server_connection(
    pgbouncer_url: URL, amqp_url: str
) -> None:
    settings = worker_settings(pgbouncer_url, amqp_url, database_pool_mode="transaction")
    await _switch_server_connection_between_statements(settings)


async def test_the_session_pool_mode_breaks_behind_transaction_pooling(
    pgbouncer_url: URL, amqp_url: str
) -> None:
    """The control experiment: the same steps with the default setting fail."""
    settings = worker_settings(pgbouncer_url, amqp_url, database_pool_mode="session")
    with pytest.raises(DBAPIError, match=r"prepared statement .* does not exist"):
        await _switch_server_connection_between_statements(settings)
