"""Running the demo: publish through the real broker, watch the real worker store it."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Final

import aio_pika
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import MessageCreated, Publisher
from worker import exits, topology
from worker.database import create_engine
from worker.settings import Settings
from worker.tools.demo.stream import DemoPlan, plan
from worker.tools.dlq.inspect import inspect
from worker.tools.progress import Progress
from worker.tools.sandbox import consumer_count, wait_for
from worker.unavailable import rabbitmq_connection, using_postgres

WORKER_WAIT_S: Final = 30
STALL_S: Final = 20


async def _worker_consumes(amqp_url: str) -> bool:
    try:
        return await consumer_count(amqp_url) > 0
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False  # no worker has declared the queue yet


async def _stored(engine: AsyncEngine, demo: DemoPlan) -> int:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT count(*) FROM messages WHERE conversation_id = ANY(:ids)"),
            {"ids": demo.conversation_ids},
        )
        return int(result.scalar_one())


async def _publish(settings: Settings, demo: DemoPlan, rate_per_s: float) -> None:
    progress = Progress(len(demo.events) + len(demo.invalid), "publishing")
    interval = 1 / rate_per_s
    started = time.monotonic()
    async with Publisher(settings.amqp_url, buffer_size=len(demo.events) + 1) as publisher:
        for number, event in enumerate(demo.events):
            publisher.publish_nowait(event)
            progress.advance()
            delay = started + number * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        report = await publisher.close(timeout_s=30)
    if not report.complete:
        raise RuntimeError(f"{len(report.unsent)} demo events could not be sent")
    # A buggy publisher's events go around the contract's models.
    async with rabbitmq_connection(settings.amqp_url) as connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.EXCHANGE, ensure=False)
        for raw in demo.invalid:
            await exchange.publish(aio_pika.Message(raw), routing_key="message.created")
            progress.advance()
    progress.done()


async def _summary(engine: AsyncEngine, demo: DemoPlan, dead: Counter[str]) -> str:
    async with engine.connect() as connection:
        ids = {"ids": demo.conversation_ids}
        stored = (
            await connection.execute(
                text(
                    "SELECT count(*) AS conversations, "
                    "count(*) FILTER (WHERE status = 'archived') AS archived "
                    "FROM conversations WHERE id = ANY(:ids)"
                ),
                ids,
            )
        ).one()
        busiest = (
            await connection.execute(
                text(
                    "SELECT conversation_id FROM messages WHERE conversation_id = ANY(:ids) "
                    "GROUP BY conversation_id ORDER BY count(*) DESC, conversation_id LIMIT 1"
                ),
                ids,
            )
        ).scalar_one()
        last = (
            await connection.execute(
                text(
                    "SELECT role, content, created_at FROM messages WHERE conversation_id = :c "
                    "ORDER BY created_at DESC LIMIT 4"
                ),
                {"c": busiest},
            )
        ).all()
    lines = [
        "",
        f"stored {await _stored(engine, demo):,} messages in {stored.conversations} "
        f"conversations ({stored.archived} archived)",
        "dead-lettered: "
        + (", ".join(f"{reason} {n}" for reason, n in dead.most_common()) or "nothing"),
        f"the last messages of conversation {busiest}:",
    ]
    for row in reversed(last):
        lines.append(f"  {row.created_at:%H:%M:%S} {row.role:>9}: {row.content}")
    return "\n".join(lines)


async def run_demo(
    settings: Settings, *, messages: int, conversations: int, users: int, rate_per_s: float
) -> int:
    """Publish a demo stream and summarise what the worker stored; the exit code."""
    async with rabbitmq_connection(settings.amqp_url):
        pass  # a broker that is down or refuses us is named here, in one line
    try:
        await wait_for(
            lambda: _worker_consumes(settings.amqp_url),
            within_s=WORKER_WAIT_S,
            every_s=0.5,
            what="a worker",
        )
    except TimeoutError:
        print("no worker consumes chatstore.events: start `chatstore worker` (scripts/run does)")
        return exits.FAILURE
    demo = plan(
        messages=messages, conversations=conversations, users=users, seed=random.randrange(2**32)
    )
    engine = create_engine(settings)
    try:
        with using_postgres(settings.sqlalchemy_url):
            async with engine.begin() as connection:
                # The application owns users; the demo brings its own.
                await connection.execute(
                    text(
                        "INSERT INTO users (id) SELECT unnest(CAST(:ids AS varchar[])) "
                        "ON CONFLICT DO NOTHING"
                    ),
                    {"ids": demo.users},
                )
        dead_before = (await inspect(settings.amqp_url)).by_reason
        await _publish(settings, demo, rate_per_s)

        expected = sum(isinstance(event, MessageCreated) for event in demo.events)
        progress = Progress(expected, "stored    ")
        last_change, seen = time.monotonic(), 0
        while seen < expected and time.monotonic() - last_change < STALL_S:
            await asyncio.sleep(0.2)
            now_seen = await _stored(engine, demo)
            if now_seen != seen:
                progress.advance(now_seen - seen)
                seen, last_change = now_seen, time.monotonic()
        progress.done()
        await asyncio.sleep(1)  # the invalid events come last; let them be refused
        dead = (await inspect(settings.amqp_url)).by_reason - dead_before
        print(await _summary(engine, demo, dead))
        return exits.OK if seen == expected else exits.FAILURE
    finally:
        await engine.dispose()
