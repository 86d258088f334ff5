"""The three-node cluster fixture does what failover tests rely on: three running
nodes, quorum queues replicated on all three, and the node of a connection found."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import pytest

from tests.rabbitmq_cluster import SIZE, RabbitCluster

# The first test boots the cluster (about a minute here, more on a loaded runner).
pytestmark = pytest.mark.timeout(600)

QUEUE = "fixture.quorum"


@pytest.fixture
async def vhost(rabbit_cluster: RabbitCluster) -> AsyncIterator[str]:
    async with rabbit_cluster.vhost() as name:
        yield name


async def declare_quorum_queue(url: str, queue: str = QUEUE) -> None:
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})


async def publish_confirmed(url: str, count: int, queue: str = QUEUE) -> None:
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await asyncio.gather(
            *(
                channel.default_exchange.publish(
                    aio_pika.Message(
                        str(n).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                    ),
                    routing_key=queue,
                )
                for n in range(count)
            )
        )


async def ready_messages(url: str, queue: str = QUEUE) -> int:
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def test_three_nodes_run_in_one_cluster(rabbit_cluster: RabbitCluster) -> None:
    for i in range(1, SIZE + 1):
        assert await rabbit_cluster.running_nodes(via=i) == [1, 2, 3]
    assert rabbit_cluster.booted_in_s is not None
    # Every node takes AMQP connections on its own port, none on the system node's.
    ports = {node.amqp_port for node in rabbit_cluster.nodes}
    assert len(ports) == SIZE
    assert 5672 not in ports
    assert rabbit_cluster.amqp_urls("v").split(",") == [
        rabbit_cluster.amqp_url(i, "v") for i in (1, 2, 3)
    ]


async def test_a_quorum_queue_has_every_node_as_member(
    rabbit_cluster: RabbitCluster, vhost: str
) -> None:
    await declare_quorum_queue(rabbit_cluster.amqp_url(1, vhost))
    # No x-quorum-initial-group-size: the default (quorum_cluster_size, 3) takes all three.
    await rabbit_cluster.wait_quorum(vhost, QUEUE)
    assert await rabbit_cluster.members_of(vhost, QUEUE) == [1, 2, 3]


async def test_the_node_of_a_connection_is_found(rabbit_cluster: RabbitCluster, vhost: str) -> None:
    for i in (1, 2, 3):
        url = rabbit_cluster.amqp_url(i, vhost)
        name = f"probe-{i}"
        async with await aio_pika.connect(url, client_properties={"connection_name": name}):
            assert await rabbit_cluster.node_of_connection(vhost, name=name, via=1 + i % 3) == i


# Killing, stopping and restarting nodes is exercised by tests/test_cluster_failover.py,
# with the worker and the Publisher on the cluster.
