"""The three-node cluster fixture does what failover tests rely on: three running
nodes, quorum queues replicated on all three, and the node of a connection found."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from tests.rabbitmq_cluster import BOOT_TIMEOUT_S, SIZE, NodeExitedError, RabbitCluster

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


def _processes_naming(text: str) -> list[int]:
    """Pids of this machine's processes whose command line contains ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if text.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
    return found


def test_a_node_that_cannot_boot_fails_at_once_with_its_log_and_leaves_nothing() -> None:
    """A broken node fails the boot with its log, without waiting out the timeout,
    and without a rabbitmqctl left running for a later garbage collection to trip on
    (which once crashed a whole CI run inside pytest's report of the failure)."""
    cluster = RabbitCluster.create()
    first = cluster.nodes[0]
    try:
        (first.directory / "rabbitmq.conf").write_text("this line is no setting\n")
        began = time.monotonic()
        with pytest.raises(NodeExitedError, match="exited while booting") as failed:
            asyncio.run(cluster.boot())
        assert time.monotonic() - began < BOOT_TIMEOUT_S / 2
        assert str(first.console_file) in str(failed.value)  # the log comes with it
        assert first.exited()
        assert _processes_naming(first.name) == [], "a rabbitmqctl outlived the failed boot"
        gc.collect()  # an unreaped rabbitmqctl's transport would raise here
    finally:
        asyncio.run(cluster.close())
    assert not cluster.root.exists()
