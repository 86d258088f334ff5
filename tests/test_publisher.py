"""The chat runtime's publisher, against the real broker."""

from __future__ import annotations

import asyncio
import json
import uuid

import aio_pika
import pytest

from contracts import (
    MessageCreated,
    Publisher,
    WhenFull,
    conversation_archived,
    decode,
    message_created,
)
from tests.harness import declare_topology, free_port, queue_has, take_all, wait_for
from tests.services import Services
from worker import topology


def new_message(number: int = 0) -> MessageCreated:
    return message_created(
        conversation_id=uuid.uuid4(), user_id="alice", role="user", content=f"hello {number}"
    )


def unreachable_url() -> str:
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/"  # nothing listens there


async def test_publish_returns_after_the_broker_confirmed_and_the_body_is_the_wire_format(
    amqp_url: str,
) -> None:
    await declare_topology(amqp_url)
    event = new_message()
    archive = conversation_archived(conversation_id=event.data.conversation_id, user_id="alice")
    async with Publisher(amqp_url) as publisher:
        await publisher.publish(event)
        await publisher.publish(archive)
        # Confirmed means queued: no waiting needed.
        letters = await take_all(amqp_url, topology.QUEUE)
    assert [decode(letter.body) for letter in letters] == [event, archive]
    first = letters[0].message
    assert first.message_id == str(event.event_id)
    assert first.type == "message.created"
    assert first.content_type == "application/json"
    assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert json.loads(letters[0].body)["version"] == 1


async def test_cutting_every_connection_mid_stream_loses_nothing_within_the_buffer(
    services: Services, amqp_url: str
) -> None:
    await declare_topology(amqp_url)
    events = [new_message(n) for n in range(5000)]
    vhost = amqp_url.rsplit("/", 1)[1]
    async with Publisher(amqp_url, buffer_size=10_000) as publisher:
        for number, event in enumerate(events):
            assert publisher.publish_nowait(event)
            if number in (1500, 3500):
                await asyncio.sleep(0.05)  # let some go out first
                await services.rabbitmqctl(["close_all_connections", "-p", vhost, "test"])
        report = await publisher.close(timeout_s=30)
    assert report.complete, f"{len(report.unsent)} unsent"
    assert publisher.stats.reconnects >= 1
    assert publisher.stats.dropped == 0
    received = [decode(letter.body) for letter in await take_all(amqp_url, topology.QUEUE)]
    ids = {event.event_id for event in received if isinstance(event, MessageCreated)}
    assert ids == {event.event_id for event in events}  # copies are allowed, losses are not
    print(f"received {len(received)} for {len(events)} published; {publisher.stats}")


async def test_a_full_buffer_drops_the_newest_and_counts_them() -> None:
    publisher = Publisher(unreachable_url(), buffer_size=100)
    await publisher.start()
    accepted = [publisher.publish_nowait(new_message(n)) for n in range(150)]
    assert accepted == [True] * 100 + [False] * 50
    assert publisher.stats.dropped == 50
    report = await publisher.close(timeout_s=0.3)
    assert len(report.unsent) == 100  # reported, not silently lost
    assert publisher.publish_nowait(new_message()) is False  # closed: refused, no exception


async def test_publish_after_close_raises_and_sends_nothing(amqp_url: str) -> None:
    await declare_topology(amqp_url)
    publisher = Publisher(amqp_url)
    await publisher.publish(new_message(1))
    await publisher.close(timeout_s=5)
    with pytest.raises(RuntimeError, match="after close"):
        await publisher.publish(new_message(2))
    # Only the event published before the close reached the queue.
    letters = await take_all(amqp_url, topology.QUEUE)
    assert [decode(letter.body).data.content for letter in letters] == ["hello 1"]  # type: ignore[union-attr]


async def test_publish_after_a_failed_publish_starts_on_a_new_channel(amqp_url: str) -> None:
    await declare_topology(amqp_url)
    async with Publisher(amqp_url) as publisher:
        await publisher.publish(new_message(1))
        connection = await aio_pika.connect(amqp_url)
        async with connection, connection.channel() as channel:
            await channel.exchange_delete(topology.EXCHANGE)
        # The broker closes the channel of a publish to a missing exchange.
        with pytest.raises(aio_pika.exceptions.ChannelClosed):
            await publisher.publish(new_message(2))
        await declare_topology(amqp_url)
        await publisher.publish(new_message(3))  # not the dead channel again
        letters = await take_all(amqp_url, topology.QUEUE)
    contents = [decode(letter.body).data.content for letter in letters]  # type: ignore[union-attr]
    assert contents == ["hello 1", "hello 3"]


async def test_concurrent_publishes_after_a_failure_share_one_new_channel(amqp_url: str) -> None:
    await declare_topology(amqp_url)
    async with Publisher(amqp_url) as publisher:
        await publisher.publish(new_message(0))
        connects = 0
        connect = publisher._connect

        async def counted_connect() -> aio_pika.abc.AbstractConnection:
            nonlocal connects
            connects += 1
            return await connect()

        publisher._connect = counted_connect  # type: ignore[method-assign]
        connection = await aio_pika.connect(amqp_url)
        async with connection, connection.channel() as channel:
            await channel.exchange_delete(topology.EXCHANGE)
        with pytest.raises(aio_pika.exceptions.ChannelClosed):
            await publisher.publish(new_message(1))
        await declare_topology(amqp_url)
        await asyncio.gather(*(publisher.publish(new_message(n)) for n in range(2, 22)))
        # The connection survived the channel: a new channel, not 20 connections.
        assert connects == 0
        letters = await take_all(amqp_url, topology.QUEUE)
    contents = {decode(letter.body).data.content for letter in letters}  # type: ignore[union-attr]
    assert contents == {f"hello {n}" for n in [0, *range(2, 22)]}


async def test_with_block_enqueue_waits_for_room_instead_of_dropping() -> None:
    publisher = Publisher(unreachable_url(), buffer_size=10, when_full=WhenFull.BLOCK)
    await publisher.start()
    for number in range(10):
        assert await publisher.enqueue(new_message(number))
    waiting = asyncio.create_task(publisher.enqueue(new_message(10)))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # no room: the caller waits
    assert publisher.stats.dropped == 0
    await publisher.close(timeout_s=0.1)
    assert await waiting is False  # closing releases it; the event is refused


async def test_returned_events_are_sent_again_until_a_queue_is_bound(amqp_url: str) -> None:
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        await channel.declare_exchange(topology.EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    events = [new_message(n) for n in range(10)]
    async with Publisher(amqp_url) as publisher:
        for event in events:
            publisher.publish_nowait(event)
        await wait_for(lambda: _reconnected(publisher), what="a returned event retried")
        await declare_topology(amqp_url)  # the worker's queue appears
        await wait_for(queue_has(amqp_url, topology.QUEUE, 10), within_s=20)
    assert publisher.stats.dropped == 0


async def _reconnected(publisher: Publisher) -> bool:
    return publisher.stats.reconnects > 0


def test_constructors_refuse_what_the_contract_refuses() -> None:
    with pytest.raises(ValueError, match="1000"):
        message_created(conversation_id=uuid.uuid4(), user_id="u", role="user", content="x" * 1001)
