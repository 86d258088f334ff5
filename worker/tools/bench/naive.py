"""Scenario (b), the naive design: what the design documents' repository would do.

One SQLAlchemy session; per message: decode, insert the conversation if it
is new, insert the message, move the conversation's ``updated_at``, commit,
ack. Nothing is wrong with any single step; the cost is one transaction and
one acknowledgement round per event, the baseline chatstore's batching is
measured against.
"""

from __future__ import annotations

import asyncio
import time

import aio_pika
from sqlalchemy import func, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from contracts import MessageCreated, decode
from contracts.models import conversations, messages
from worker import topology
from worker.tools.bench.raw import ConsumeResult
from worker.tools.bench.stats import rate
from worker.tools.sandbox import Sandbox

PREFETCH = 100
"""Enough that the broker never waits for the consumer; the naive design's own cost is the point."""


async def consume_one_by_one(
    environment: Sandbox, events: int, *, timeout_s: float
) -> ConsumeResult:
    """Store ``events`` deliveries one transaction each; clock from first delivery to last ack."""
    engine = create_async_engine(environment.database_url, pool_size=1, max_overflow=0)
    seen = 0
    first = 0.0
    try:
        async with (
            await aio_pika.connect(environment.amqp_url) as connection,
            AsyncSession(engine) as session,
        ):
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await channel.get_queue(topology.QUEUE)
            async with asyncio.timeout(timeout_s), queue.iterator() as deliveries:
                async for delivery in deliveries:
                    if seen == 0:
                        first = time.perf_counter()
                    event = decode(delivery.body)
                    if isinstance(event, MessageCreated):
                        await _store(session, event)
                    await delivery.ack()
                    seen += 1
                    if seen == events:
                        break
        seconds = time.perf_counter() - first
    finally:
        await engine.dispose()
    return ConsumeResult(events, round(seconds, 3), round(rate(events, seconds)))


async def _store(session: AsyncSession, event: MessageCreated) -> None:
    data = event.data
    await session.execute(
        insert(conversations)
        .values(id=data.conversation_id, user_id=data.user_id, created_at=data.created_at)
        .on_conflict_do_nothing(index_elements=["id"])
    )
    await session.execute(
        insert(messages).values(
            id=data.message_id,
            conversation_id=data.conversation_id,
            user_id=data.user_id,
            role=data.role,
            content=data.content,
            metadata=data.metadata,
            created_at=data.created_at,
        )
    )
    await session.execute(
        update(conversations)
        .where(conversations.c.id == data.conversation_id)
        .values(updated_at=func.greatest(conversations.c.updated_at, data.created_at))
    )
    await session.commit()
