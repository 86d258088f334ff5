"""Driving a real worker in tests: publishing, reading queues and tables, waiting on state.

Worker processes, queue probes and waiting come from worker.tools.sandbox,
which the bench uses too; this module adds what only the tests need.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aio_pika
from sqlalchemy.engine import URL

from tests.db import fetch_all
from tests.events import body as encode
from worker import lifecycle, topology
from worker.settings import Settings
from worker.tools.sandbox import (
    WorkerProcess,
    declare_topology,
    queue_depth,
    wait_for,
    worker_environment,
)

__all__ = [
    "DeadLetter",
    "WorkerProcess",
    "add_users",
    "count",
    "declare_topology",
    "free_port",
    "publish",
    "queue_depth",
    "queue_has",
    "running_worker",
    "table_has",
    "take_all",
    "take_dead_letters",
    "wait_for",
    "worker_environment",
    "worker_settings",
]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (at the time of asking)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worker_settings(database_url: URL | str, amqp_url: str, **overrides: Any) -> Settings:
    """Settings for a worker on a test's own database and vhost (a URL as text may
    list several hosts, which a SQLAlchemy URL object cannot hold)."""
    if isinstance(database_url, URL):
        database_url = database_url.render_as_string(hide_password=False)
    values: dict[str, Any] = {
        "database_url": database_url,
        "amqp_url": amqp_url,
        "http_port": 0,
        "retry_initial_ms": 50,
        "retry_max_s": 0.5,
        "watchdog_idle_s": 5.0,
        "drain_timeout_s": 10.0,
    }
    return Settings(**(values | overrides))


async def publish(
    amqp_url: str,
    events: Iterable[dict[str, Any] | bytes],
    *,
    routing_key: str = "message.created",
    **properties: Any,
) -> None:
    """Publish to ``chat.events`` with confirms, routed by each event's type."""
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.EXCHANGE)
        confirmations = []
        for event in events:
            raw = event if isinstance(event, bytes) else encode(event)
            key = routing_key if isinstance(event, bytes) else event["type"]
            message = aio_pika.Message(
                raw, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties
            )
            confirmations.append(exchange.publish(message, routing_key=key))
            if len(confirmations) >= 500:
                await asyncio.gather(*confirmations)
                confirmations.clear()
        await asyncio.gather(*confirmations)


@dataclass(frozen=True)
class DeadLetter:
    body: bytes
    headers: dict[str, Any]
    message: aio_pika.abc.AbstractIncomingMessage

    @property
    def reason(self) -> str:
        return str(self.headers.get("x-chatstore-reason"))


async def take_all(amqp_url: str, queue: str) -> list[DeadLetter]:
    """Every message in ``queue``, removed from it."""
    letters = []
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        while (message := await declared.get(fail=False)) is not None:
            letters.append(DeadLetter(message.body, dict(message.headers or {}), message))
            await message.ack()
    return letters


async def take_dead_letters(amqp_url: str) -> list[DeadLetter]:
    """Every message in the DLQ, removed from it."""
    return await take_all(amqp_url, topology.DLQ)


async def count(database_url: URL, table: str) -> int:
    rows = await fetch_all(database_url, f"SELECT count(*) AS n FROM {table}")
    return int(rows[0]["n"])


async def add_users(database_url: URL, *users: str) -> None:
    await fetch_all(
        database_url,
        "INSERT INTO users (id) SELECT unnest($1::varchar[]) ON CONFLICT DO NOTHING",
        list(users),
    )


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[asyncio.Task[int]]:
    """A worker in this process, stopped (drained) on exit; yields its task."""
    stop = asyncio.Event()
    task = asyncio.create_task(lifecycle.run(settings, stop, handle_signals=False))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=settings.drain_timeout_s + 5)


def table_has(database_url: URL, table: str, rows: int) -> Callable[[], Awaitable[bool]]:
    """A check for :func:`wait_for`: ``table`` holds exactly ``rows`` rows."""

    async def check() -> bool:
        return await count(database_url, table) == rows

    return check


def queue_has(amqp_url: str, queue: str, messages: int) -> Callable[[], Awaitable[bool]]:
    """A check for :func:`wait_for`: ``queue`` holds exactly ``messages`` ready messages."""

    async def check() -> bool:
        return await queue_depth(amqp_url, queue) == messages

    return check
