"""The worker and the Publisher on a real three-node RabbitMQ cluster that loses nodes.

One stream of events (valid ones, duplicates of them, and events from a user
the database does not know) flows from a ``Publisher`` to a worker process,
both given the list of all three nodes, while the test:

1. SIGKILLs the node that leads ``chatstore.events``;
2. stops the node the worker is connected to;
3. stops the node the Publisher is connected to while its buffer holds events;

and lets each node rejoin before the next failure. Then, row by row: every
valid event is stored exactly once, none is dead-lettered, every invalid one
is dead-lettered with its reason, and storing resumed after each failure.
The longest pause in storing around each failure is printed, for the closing
note (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aio_pika
import pytest
from sqlalchemy.engine import URL

from contracts import Publisher, build
from contracts.events import MessageCreated
from tests.db import fetch_all
from tests.harness import (
    WorkerProcess,
    add_users,
    running_worker,
    take_dead_letters,
    wait_for,
    worker_settings,
)
from tests.rabbitmq_cluster import RabbitCluster
from worker import exits, lifecycle, topology
from worker.tools.sandbox import consumer_count, queue_depth
from worker.unavailable import ServiceUnavailableError

KNOWN_USER: Final = "alice"
STRANGER: Final = "mallory"  # not in the users table: dead-lettered as unknown_user
RATE_PER_S: Final = 250
RECOVERY_LIMIT_S: Final = 60.0

# The cluster's first boot counts toward the first test that asks for it.
pytestmark = pytest.mark.timeout(600)


@dataclass
class Stream:
    """What the test published, by kind, and when each failure happened."""

    valid: dict[str, MessageCreated] = field(default_factory=dict)  # by message id
    invalid: dict[str, MessageCreated] = field(default_factory=dict)
    duplicates: int = 0
    published: int = 0
    phase: str = "before any failure"
    phase_of: dict[str, str] = field(default_factory=dict)  # message id -> when published
    published_in: Counter[str] = field(default_factory=Counter)

    def next_event(self) -> MessageCreated:
        """Every 10th event repeats an earlier valid one; every 25th comes from a stranger."""
        self.published += 1
        self.published_in[self.phase] += 1
        if self.published % 10 == 0 and self.valid:
            self.duplicates += 1
            return next(reversed(self.valid.values()))
        stranger = self.published % 25 == 0
        event = build.message_created(
            conversation_id=f"00000000-0000-4000-8000-{self.published % 40:012d}",
            user_id=STRANGER if stranger else KNOWN_USER,
            role="user",
            content=f"event {self.published}",
        )
        (self.invalid if stranger else self.valid)[str(event.data.message_id)] = event
        self.phase_of[str(event.data.message_id)] = self.phase
        return event


async def _publish_steadily(publisher: Publisher, stream: Stream, stop: asyncio.Event) -> None:
    while not stop.is_set():
        accepted = publisher.publish_nowait(stream.next_event())
        assert accepted, "the publisher's buffer overflowed"
        await asyncio.sleep(1 / RATE_PER_S)


class StoreWatch:
    """Samples the number of stored messages every 50 ms, to see how long storing paused."""

    def __init__(self, database_url: URL) -> None:
        self._database_url = database_url
        self.samples: list[tuple[float, int]] = []

    async def run(self) -> None:
        while True:
            rows = await fetch_all(self._database_url, "SELECT count(*) AS n FROM messages")
            self.samples.append((time.monotonic(), int(rows[0]["n"])))
            await asyncio.sleep(0.05)

    def longest_pause_s(self, since: float) -> float:
        """The longest time without a new row, from ``since`` to the latest sample."""
        window = [(t, n) for t, n in self.samples if t >= since]
        changes = [t for (_, before), (t, n) in itertools.pairwise(window) if n > before]
        marks = [since, *changes, window[-1][0]]
        return max(b - a for a, b in itertools.pairwise(marks))

    async def wait_growing(self, within_s: float) -> None:
        """Until a row arrives after this call: storing goes on."""
        start = len(self.samples)

        async def grew() -> bool:
            recent = self.samples[start:]
            return len(recent) > 1 and recent[-1][1] > recent[0][1]

        await wait_for(grew, within_s=within_s, what="storing to resume", every_s=0.05)


@pytest.fixture
async def vhost(rabbit_cluster: RabbitCluster) -> AsyncIterator[str]:
    async with rabbit_cluster.vhost() as name:
        yield name


@pytest.fixture
def worker_log(tmp_path: Path) -> Path:
    return tmp_path / "worker.log"


def _named(urls: str, name: str) -> str:
    """Each node's URL with a connection name, so the broker can say which node has it."""
    return ",".join(f"{url}?name={name}" for url in urls.split(","))


async def test_nodes_failing_one_after_another_lose_and_duplicate_nothing(
    rabbit_cluster: RabbitCluster, vhost: str, database_url: URL, worker_log: Path
) -> None:
    cluster = rabbit_cluster
    await add_users(database_url, KNOWN_USER)
    all_nodes = cluster.amqp_urls(vhost)
    settings = worker_settings(
        database_url, _named(all_nodes, "chatstore-worker"), watchdog_idle_s=10.0
    )
    worker = WorkerProcess(settings, worker_log).start()
    try:
        await worker.wait_consuming(within_s=60)
        await cluster.wait_quorum(vhost, topology.QUEUE)
        stream = Stream()
        stop = asyncio.Event()
        recoveries: dict[str, float] = {}
        async with Publisher(_named(all_nodes, "chatstore-publisher")) as publisher:
            producer = asyncio.create_task(_publish_steadily(publisher, stream, stop))
            watch = StoreWatch(database_url)
            watching = asyncio.create_task(watch.run())
            await asyncio.sleep(2)

            async def fail(what: str, node: int, how: str) -> None:
                stream.phase = what
                started = time.monotonic()
                await (cluster.kill(node) if how == "kill" else cluster.stop(node))
                await watch.wait_growing(within_s=RECOVERY_LIMIT_S)
                recoveries[what] = watch.longest_pause_s(since=started)
                worker.check_alive()
                await cluster.start(node)
                await cluster.wait_quorum(vhost, topology.QUEUE)
                await asyncio.sleep(2)  # some traffic with every node back

            leader = await cluster.leader_of(vhost, topology.QUEUE)
            await fail("SIGKILL of the queue's leader", leader, "kill")

            workers_node = await cluster.node_of_connection(vhost, name="chatstore-worker")
            await fail("stop of the worker's node", workers_node, "stop")

            publishers_node = await cluster.node_of_connection(vhost, name="chatstore-publisher")
            # A burst right before the stop, so the buffer holds events when it goes.
            stream.phase = "stop of the publisher's node"
            for _ in range(2000):
                publisher.publish_nowait(stream.next_event())
            assert publisher.stats.buffered - publisher.stats.sent > 0
            reconnects = publisher.stats.reconnects
            await fail("stop of the publisher's node", publishers_node, "stop")
            assert publisher.stats.reconnects > reconnects, "the publisher never failed over"

            stop.set()
            await producer
            watching.cancel()
        assert publisher.stats.dropped == 0

        valid_ids = set(stream.valid)

        async def all_stored() -> bool:
            rows = await fetch_all(database_url, "SELECT count(*) AS n FROM messages")
            return int(rows[0]["n"]) >= len(valid_ids)

        await wait_for(all_stored, within_s=120, what="every valid event stored", every_s=0.5)

        async def settled() -> bool:
            return await queue_depth(cluster.amqp_url(1, vhost)) == 0

        await wait_for(settled, within_s=60, what="the queue drained")
        await worker.stop(within_s=settings.drain_timeout_s + 10)
    finally:
        worker.kill()

    rows = await fetch_all(database_url, "SELECT id::text AS id, content FROM messages")
    stored = [row["id"] for row in rows]
    letters = await take_dead_letters(cluster.amqp_url(1, vhost))
    # A letter can come twice (the Publisher resends what a lost connection left
    # unconfirmed; the worker may dead-letter a delivery again after a lost ack).
    dead = {json.loads(letter.body)["data"]["message_id"] for letter in letters}

    lost = valid_ids - set(stored)
    duplicated = len(stored) - len(set(stored))
    print(
        f"\n| published during | events published | valid | stored | lost | duplicated "
        f"| dead-lettered | longest pause in storing |\n|{' --- |' * 8}"
    )
    for phase in stream.published_in:
        valid = {i for i in valid_ids if stream.phase_of[i] == phase}
        invalid = {i for i in stream.invalid if stream.phase_of[i] == phase}
        pause = f"{recoveries[phase]:.2f} s" if phase in recoveries else "-"
        print(
            f"| {phase} | {stream.published_in[phase]} | {len(valid)} "
            f"| {len(valid & set(stored))} | {len(valid - set(stored))} "
            f"| {sum(1 for i in stored if i in valid) - len(valid & set(stored))} "
            f"| {len(invalid & dead)} of {len(invalid)} | {pause} |"
        )
    print(
        f"| all | {stream.published} ({stream.duplicates} duplicates) | {len(valid_ids)} "
        f"| {len(stored)} | {len(lost)} | {duplicated} | {len(dead)} of {len(stream.invalid)} "
        f"({len(letters)} letters) | |"
    )
    assert not lost
    # (No duplicate can be stored: the message id is the primary key. Duplicates
    # show as "duplicate" outcomes, not rows; the table prints the 0 anyway.)
    assert set(stored) == valid_ids
    assert {row["id"]: row["content"] for row in rows} == {
        key: event.data.content for key, event in stream.valid.items()
    }
    assert not valid_ids & set(dead), "a valid event was dead-lettered"
    assert dead == set(stream.invalid)
    assert {letter.reason for letter in letters} == {"unknown_user"}
    assert set(recoveries) == {
        "SIGKILL of the queue's leader",
        "stop of the worker's node",
        "stop of the publisher's node",
    }


class _WrittenOrder(random.Random):
    """A shuffle that keeps the list as written, to choose which node comes first."""

    def shuffle(self, x: Any) -> None:
        pass


async def test_a_node_refusing_the_vhost_is_passed_over_for_the_next(
    rabbit_cluster: RabbitCluster,
    vhost: str,
    database_url: URL,
    services_amqp_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The machine's own broker has no such vhost: it refuses to open it, as a
    # restarting node may for a while. Only every node refusing is configuration.
    refusing = services_amqp_url.rstrip("/") + f"/{vhost}"
    monkeypatch.setattr("contracts.brokers.random.Random", _WrittenOrder)
    settings = worker_settings(database_url, f"{refusing},{rabbit_cluster.amqp_url(2, vhost)}")
    await add_users(database_url, KNOWN_USER)
    async with running_worker(settings) as worker:

        async def consuming() -> bool:
            try:
                return await consumer_count(rabbit_cluster.amqp_url(2, vhost)) == 1
            except aio_pika.exceptions.ChannelNotFoundEntity:  # not declared yet
                return False

        await wait_for(consuming, within_s=30, what="the worker consuming on node 2")
        assert not worker.done()

    # Every node refusing (here: the same node twice): a configuration error.
    only_refusing = worker_settings(database_url, f"{refusing},{refusing}")
    with pytest.raises(ServiceUnavailableError) as refused:
        await asyncio.wait_for(
            lifecycle.run(only_refusing, asyncio.Event(), handle_signals=False), timeout=60
        )
    assert refused.value.exit_code == exits.USAGE
    assert "refused to open the vhost" in str(refused.value)
