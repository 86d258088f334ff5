"""Filling the bench queue fast: publisher confirms pipelined a window at a time.

One Python process publishes about 8,000 events/s through aio-pika with
confirms awaited 1,000 at a time (FIELD-NOTES.md); aiormq directly, with a
window of 1,000 confirms in flight, did about 15,000/s here. More connections
in the one process were slower (13,000/s with two, 10,500/s with four): the
process's CPU is the limit, not the socket, so one connection is the default.
Every publish is confirmed before the bench goes on, so a scenario never
starts on a queue still filling, and a nack (a full queue) stops the bench.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Iterator

import aiormq
from pamqp.commands import Basic

from worker import topology
from worker.tools.bench.workload import ROUTING_KEY
from worker.tools.progress import Progress

WINDOW = 1000
"""Publishes in flight per connection: enough to keep the socket busy."""

PROPERTIES = Basic.Properties(
    delivery_mode=2, content_type="application/json", message_type=ROUTING_KEY
)


class PublishRefusedError(Exception):
    """The broker nacked a publish (a full queue): the bench's numbers would be wrong."""


async def publish_all(
    amqp_url: str,
    bodies: Iterable[bytes],
    *,
    total: int,
    connections: int = 1,
    label: str = "publishing",
) -> None:
    """Publish every body to ``chat.events`` and wait for all confirms."""
    progress = Progress(total, label)
    shared = iter(bodies)  # the connections take turns at one generator
    try:
        await asyncio.gather(*(_publisher(amqp_url, shared, progress) for _ in range(connections)))
    finally:
        progress.done()


async def _publisher(amqp_url: str, bodies: Iterator[bytes], progress: Progress) -> None:
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        while chunk := list(itertools.islice(bodies, WINDOW)):
            confirms = await asyncio.gather(
                *(
                    channel.basic_publish(
                        body,
                        exchange=topology.EXCHANGE,
                        routing_key=ROUTING_KEY,
                        properties=PROPERTIES,
                    )
                    for body in chunk
                )
            )
            if not all(isinstance(confirm, Basic.Ack) for confirm in confirms):
                raise PublishRefusedError("the broker refused a publish; is the queue full?")
            progress.advance(len(chunk))
    finally:
        await connection.close()
