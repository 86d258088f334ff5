"""Scenario (a), the raw limit: consume and ack the pre-filled queue, doing nothing else.

The same transport and acknowledgement pattern as the worker (aiormq's
channel, the worker's prefetch, one ``ack(multiple)`` per batch of
``batch_max_size``), minus decoding and PostgreSQL: the most any consumer in
one Python process can hope for on this broker.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiormq
from aiormq.abc import DeliveredMessage

from worker import topology
from worker.ingest.delivery import delivery_tag
from worker.tools.bench.stats import rate


@dataclass(frozen=True, slots=True)
class ConsumeResult:
    events: int
    seconds: float
    events_per_s: float


async def consume_and_ack(
    amqp_url: str, events: int, *, prefetch: int, ack_every: int, timeout_s: float
) -> ConsumeResult:
    """Consume ``events`` deliveries; the clock runs from the first delivery to the last ack."""
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=False)
        await channel.basic_qos(prefetch_count=prefetch)
        done = asyncio.Event()
        seen = 0
        first = 0.0

        async def on_delivery(message: DeliveredMessage) -> None:
            nonlocal seen, first
            seen += 1
            if seen == 1:
                first = time.perf_counter()
            if seen % ack_every == 0 or seen == events:
                await channel.basic_ack(delivery_tag(message), multiple=True)
            if seen == events:
                done.set()

        await channel.basic_consume(topology.QUEUE, on_delivery, no_ack=False)
        await asyncio.wait_for(done.wait(), timeout=timeout_s)
        seconds = time.perf_counter() - first
    finally:
        await connection.close()
    return ConsumeResult(events, round(seconds, 3), round(rate(events, seconds)))
