"""The RabbitMQ objects chatstore uses (CONTRACT.md section 4), declared as code.

Declaring is idempotent: every worker declares the same objects with the same
arguments at start, so the first one to start creates them.
"""

from __future__ import annotations

from typing import Final

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from pamqp.common import FieldTable

from contracts.routing import EXCHANGE, ROUTING_KEYS

__all__ = [
    "DLQ",
    "DLQ_ARGUMENTS",
    "EXCHANGE",
    "QUEUE",
    "ROUTING_KEYS",
    "declare",
    "queue_arguments",
]

QUEUE: Final = "chatstore.events"
DLQ: Final = "chatstore.events.dlq"


def queue_arguments(delivery_limit: int) -> FieldTable:
    """Arguments of the work queue, each with the reason it is there."""
    return {
        # Quorum: replicated and durable across broker restarts and node loss;
        # the only queue type with a delivery limit.
        "x-queue-type": "quorum",
        # A message that crashes workers (killed mid-batch, again and again)
        # must end somewhere: after this many deliveries the broker
        # dead-letters it. Quorum queues have no default limit before 4.0.
        # Before 4.3 every requeue counts too, so the worker never requeues
        # to retry; it retries inside the process.
        "x-delivery-limit": delivery_limit,
        # Broker-made dead letters go to the DLQ through the default exchange,
        # which routes by queue name: no extra exchange to declare or secure.
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": DLQ,
        # At-least-once dead-lettering: the broker keeps a message until the
        # DLQ has confirmed it, instead of dropping it if the DLQ is down.
        "x-dead-letter-strategy": "at-least-once",
        # Required by at-least-once dead-lettering: when full, refuse new
        # publishes (publishers with confirms see a nack) instead of
        # silently dropping the oldest message.
        "x-overflow": "reject-publish",
    }


DLQ_ARGUMENTS: Final[FieldTable] = {
    # Dead letters are what operators inspect and replay: they must survive a
    # broker restart as well as the work queue does.
    "x-queue-type": "quorum",
}


async def declare(
    channel: AbstractChannel, *, delivery_limit: int
) -> tuple[AbstractExchange, AbstractQueue, AbstractQueue]:
    """Declare the exchange, the work queue, its bindings and the DLQ."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    # The DLQ first: the work queue dead-letters into it from its first message.
    dlq = await channel.declare_queue(DLQ, durable=True, arguments=DLQ_ARGUMENTS)
    queue = await channel.declare_queue(
        QUEUE, durable=True, arguments=queue_arguments(delivery_limit)
    )
    for routing_key in ROUTING_KEYS:
        await queue.bind(exchange, routing_key)
    return exchange, queue, dlq
