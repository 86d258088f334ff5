"""Each test's database and vhost are its own, so tests can run beside a live worker."""

from __future__ import annotations

import aio_pika
import pytest
from sqlalchemy.engine import URL

from tests.db import fetch_all


async def test_each_test_gets_its_own_vhost(amqp_url: str, services_amqp_url: str) -> None:
    assert amqp_url != services_amqp_url
    queue_name = "isolation-probe." + amqp_url.rsplit("/", 1)[1]
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        await channel.declare_queue(queue_name)
        await channel.default_exchange.publish(aio_pika.Message(b"mine"), routing_key=queue_name)
        declared = await channel.declare_queue(queue_name, passive=True)
        assert declared.declaration_result.message_count == 1

    # The broker's default vhost does not see the queue at all.
    async with await aio_pika.connect(services_amqp_url) as connection:
        channel = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(queue_name, passive=True)


async def test_each_test_gets_its_own_database(database_url: URL, template_database: str) -> None:
    assert database_url.database != template_database
    await fetch_all(database_url, "INSERT INTO users (id) VALUES ('only-here')")
    rows = await fetch_all(database_url.set(database=template_database), "SELECT id FROM users")
    assert rows == []
