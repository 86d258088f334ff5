"""The bench's view of its vhost: purging the queues, the broker's version.

Declaring the topology, queue depths and consumer counts are
:mod:`worker.tools.sandbox`'s."""

from __future__ import annotations

import aio_pika
import aiormq

from worker import topology


async def purge(amqp_url: str) -> None:
    """Empty the work queue and the DLQ between scenarios."""
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        for name in (topology.QUEUE, topology.DLQ):
            queue = await channel.declare_queue(name, passive=True)
            await queue.purge()


async def server_version(amqp_url: str) -> str:
    """The broker's version, as it announces itself when a connection opens."""
    connection = await aiormq.connect(amqp_url)
    try:
        version = connection.server_properties.get("version", "unknown")
    finally:
        await connection.close()
    return version.decode() if isinstance(version, bytes) else str(version)
