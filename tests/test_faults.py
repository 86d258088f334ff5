"""Faults: database outages, lost broker connections, crashes, signals, fatal errors."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aio_pika
import pytest
import structlog.testing
from sqlalchemy.engine import URL

from tests.db import fetch_all
from tests.events import message_created
from tests.harness import (
    WorkerProcess,
    count,
    free_port,
    publish,
    queue_depth,
    running_worker,
    table_has,
    take_dead_letters,
    wait_for,
    worker_settings,
)
from tests.services import Services
from worker import lifecycle, topology
from worker.ingest.flush import REFUSALS_IN_A_ROW_LIMIT
from worker.settings import Settings

EVENTS = 4000


@pytest.fixture
def prepared(settings: Settings) -> None:
    """Users and topology in place (the tests make settings of their own)."""


def events(total: int) -> list[dict[str, object]]:
    conversations = [str(uuid.uuid4()) for _ in range(max(1, total // 20))]
    return [
        message_created(conversation_id=conversations[n % len(conversations)], user_id="alice")
        for n in range(total)
    ]


def vhost_of(amqp_url: str) -> str:
    return amqp_url.rsplit("/", 1)[1]


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def rows_between(database_url: URL, low: int, high: int) -> bool:
    return low <= await count(database_url, "messages") < high


async def assert_all_stored_once_and_nothing_dead_lettered(
    database_url: URL, amqp_url: str, published: list[dict[str, object]]
) -> None:
    rows = await fetch_all(database_url, "SELECT id::text AS id FROM messages")
    stored = [row["id"] for row in rows]
    assert len(stored) == len(set(stored))  # the primary key makes this so; no doubles
    expected = {event["data"]["message_id"] for event in published}  # type: ignore[index]
    assert set(stored) == expected  # nothing lost, nothing extra
    assert await take_dead_letters(amqp_url) == []
    assert await queue_depth(amqp_url, topology.QUEUE) == 0


@pytest.fixture
async def postgres_back_on(services: Services) -> AsyncIterator[None]:
    """Whatever a test does to PostgreSQL, it runs again afterwards."""
    try:
        yield
    finally:
        await services.postgres_control("start")


@pytest.mark.usefixtures("prepared", "postgres_back_on")
async def test_a_database_outage_holds_the_batch_reports_not_ready_and_loses_nothing(
    services: Services, database_url: URL, amqp_url: str
) -> None:
    port = free_port()
    settings = worker_settings(database_url, amqp_url, http_port=port, http_host="127.0.0.1")
    published = events(EVENTS)
    async with running_worker(settings):
        await publish(amqp_url, published[:1000])
        await wait_for(table_has(database_url, "messages", 1000))
        assert (await asyncio.to_thread(http_get, port, "/readyz"))[0] == 200

        await services.postgres_control("stop")
        await publish(amqp_url, published[1000:])
        for _ in range(200):
            status, _ = await asyncio.to_thread(http_get, port, "/readyz")
            if status == 503:
                break
            await asyncio.sleep(0.05)
        assert status == 503
        assert (await asyncio.to_thread(http_get, port, "/healthz"))[0] == 200
        await asyncio.sleep(1)  # several retries while the database is down
        await services.postgres_control("start")

        await wait_for(table_has(database_url, "messages", EVENTS), within_s=60)
        assert (await asyncio.to_thread(http_get, port, "/readyz"))[0] == 200
        _, metrics = await asyncio.to_thread(http_get, port, "/metrics")
    retried = [
        line
        for line in metrics.splitlines()
        if line.startswith("chatstore_retries_total") and not line.endswith(" 0.0")
    ]
    assert retried, metrics
    await assert_all_stored_once_and_nothing_dead_lettered(database_url, amqp_url, published)


@pytest.mark.usefixtures("prepared")
async def test_cutting_every_broker_connection_mid_stream_loses_and_doubles_nothing(
    services: Services, database_url: URL, amqp_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = worker_settings(database_url, amqp_url, batch_max_size=100, prefetch_count=200)
    # More than the other tests' stream: rabbitmqctl takes a second or two to
    # start, in which a worker writing one statement per batch stores thousands.
    total = 5 * EVENTS
    published = events(total)
    await publish(amqp_url, published)
    async with running_worker(settings) as worker:
        await wait_for(lambda: rows_between(database_url, 200, total), what="a stream under way")
        await services.rabbitmqctl(
            ["close_all_connections", "-p", vhost_of(amqp_url), "test: cut mid-stream"]
        )
        assert await count(database_url, "messages") < total, "the cut came too late"
        await wait_for(table_has(database_url, "messages", total), within_s=60)
        assert not worker.done()
    assert "broker.lost" in capsys.readouterr().out
    await assert_all_stored_once_and_nothing_dead_lettered(database_url, amqp_url, published)


@pytest.mark.usefixtures("prepared")
async def test_a_worker_killed_mid_batch_and_restarted_loses_and_doubles_nothing(
    database_url: URL, amqp_url: str, tmp_path: Path
) -> None:
    settings = worker_settings(database_url, amqp_url, batch_max_size=200, prefetch_count=400)
    published = events(EVENTS)
    await publish(amqp_url, published)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await wait_for(lambda: rows_between(database_url, 400, EVENTS), what="a stream under way")
        worker.send(signal.SIGKILL)
        assert await worker.wait() == -signal.SIGKILL
        assert await count(database_url, "messages") < EVENTS

        worker.start()
        await wait_for(table_has(database_url, "messages", EVENTS), within_s=60)
        worker.send(signal.SIGTERM)
        assert await worker.wait() == 0, worker.log()
    finally:
        worker.kill()
    await assert_all_stored_once_and_nothing_dead_lettered(database_url, amqp_url, published)


@pytest.mark.usefixtures("prepared")
async def test_sigterm_mid_stream_commits_what_it_holds_returns_the_rest_and_exits_0(
    database_url: URL, amqp_url: str, tmp_path: Path
) -> None:
    settings = worker_settings(database_url, amqp_url, batch_max_size=100, prefetch_count=400)
    published = events(EVENTS)
    await publish(amqp_url, published)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await wait_for(lambda: rows_between(database_url, 300, EVENTS), what="a stream under way")
        worker.send(signal.SIGTERM)
        assert await worker.wait(within_s=settings.drain_timeout_s + 5) == 0, worker.log()
    finally:
        worker.kill()
    log_lines = [json.loads(line) for line in worker.log().splitlines() if line.strip()]
    assert log_lines, "the worker logged nothing"
    assert all("event" in line and "level" in line for line in log_lines)  # JSON, not a tty
    assert any(line["event"] == "consumer.drained" for line in log_lines)
    stored = await count(database_url, "messages")
    # Every event is either committed or back in the queue, ready: none is
    # held, none lost, none both.
    assert stored + await queue_depth(amqp_url, topology.QUEUE) == EVENTS
    assert stored < EVENTS

    async with running_worker(settings):
        await wait_for(table_has(database_url, "messages", EVENTS), within_s=60)
    await assert_all_stored_once_and_nothing_dead_lettered(database_url, amqp_url, published)


@pytest.mark.usefixtures("prepared")
async def test_a_missing_privilege_stops_the_worker_without_draining_the_queue(
    services: Services, database_url: URL, amqp_url: str
) -> None:
    role = f"chatstore_test_reader_{uuid.uuid4().hex[:8]}"
    await fetch_all(database_url, f"CREATE ROLE {role} LOGIN")
    await fetch_all(database_url, f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    try:
        reader_url = database_url.set(username=role, password=None)
        settings = worker_settings(reader_url, amqp_url)
        await publish(amqp_url, events(50))
        exit_code = await asyncio.wait_for(
            lifecycle.run(settings, asyncio.Event(), handle_signals=False), timeout=30
        )
        assert exit_code == 1
        assert await queue_depth(amqp_url, topology.QUEUE) == 50
        assert await take_dead_letters(amqp_url) == []
        assert await count(database_url, "messages") == 0
    finally:
        await fetch_all(database_url, f"DROP OWNED BY {role}")
        await fetch_all(database_url, f"DROP ROLE {role}")


@pytest.mark.usefixtures("prepared")
async def test_a_schema_that_was_never_migrated_stops_the_worker_at_start(
    empty_database_url: URL, amqp_url: str
) -> None:
    settings = worker_settings(empty_database_url, amqp_url)
    exit_code = await asyncio.wait_for(
        lifecycle.run(settings, asyncio.Event(), handle_signals=False), timeout=30
    )
    assert exit_code == 1


def _queue_exists(amqp_url: str) -> Callable[[], Awaitable[bool]]:
    async def declared() -> bool:
        try:
            await queue_depth(amqp_url, topology.QUEUE)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False
        return True

    return declared


@pytest.mark.usefixtures("prepared")
async def test_a_cancel_from_the_broker_is_acted_on_at_once_not_at_the_watchdogs_next_look(
    database_url: URL, amqp_url: str
) -> None:
    # Deleting the queue cancels every consumer on it: the broker sends
    # basic.cancel, and the worker consumes again (declaring the queue anew).
    settings = worker_settings(database_url, amqp_url, watchdog_idle_s=600.0)
    with structlog.testing.capture_logs() as logs:
        async with running_worker(settings) as worker:
            await publish(amqp_url, events(10))
            await wait_for(table_has(database_url, "messages", 10))
            async with await aio_pika.connect(amqp_url) as connection:
                channel = await connection.channel()
                await channel.queue_delete(topology.QUEUE)

            # Far within the watchdog's 300 s between looks.
            await wait_for(_queue_exists(amqp_url), within_s=20, what="the queue declared again")
            await publish(amqp_url, events(10))
            await wait_for(table_has(database_url, "messages", 20), within_s=20)
            assert not worker.done()
    assert any(line["event"] == "consumer.cancelled_by_broker" for line in logs)


@pytest.mark.usefixtures("prepared")
async def test_a_database_refusing_every_event_stops_the_worker_before_it_drains_the_queue(
    database_url: URL, amqp_url: str
) -> None:
    # Every insert violates this: it looks like bad data, but it is the schema.
    await fetch_all(
        database_url, "ALTER TABLE messages ADD CONSTRAINT refuse_all CHECK (content = '')"
    )
    await publish(amqp_url, events(300))
    settings = worker_settings(database_url, amqp_url)
    exit_code = await asyncio.wait_for(
        lifecycle.run(settings, asyncio.Event(), handle_signals=False), timeout=60
    )
    assert exit_code == 1
    dead = await queue_depth(amqp_url, topology.DLQ)
    assert dead < REFUSALS_IN_A_ROW_LIMIT
    assert dead + await queue_depth(amqp_url, topology.QUEUE) == 300
