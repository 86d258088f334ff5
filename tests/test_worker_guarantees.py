"""The worker's guarantees (CONTRACT.md section 2), on the real servers."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import URL

from tests.db import fetch_all
from tests.events import body, conversation_archived, message_created
from tests.harness import (
    count,
    publish,
    queue_has,
    running_worker,
    table_has,
    take_dead_letters,
    wait_for,
)
from worker import topology
from worker.settings import Settings


def at(minutes: int) -> str:
    return (datetime(2026, 11, 22, 12, 0, tzinfo=UTC) + timedelta(minutes=minutes)).isoformat()


async def conversation(database_url: URL, conversation_id: str) -> dict[str, object]:
    rows = await fetch_all(
        database_url, "SELECT * FROM conversations WHERE id = $1", uuid.UUID(conversation_id)
    )
    assert len(rows) == 1
    return dict(rows[0])


async def test_a_message_is_stored_with_every_field_and_creates_its_conversation(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    event = message_created(
        user_id="alice",
        role="assistant",
        content="Bonjour — 你好",
        metadata={"model": "m", "tokens": [1, 2.5], "nested": {"ok": True, "none": None}},
        created_at="2026-11-22T13:15:30.123456+01:00",
    )
    async with running_worker(settings):
        await publish(amqp_url, [event])
        await wait_for(table_has(database_url, "messages", 1), what="the message row")

    (row,) = await fetch_all(database_url, "SELECT * FROM messages")
    data = event["data"]
    assert str(row["id"]) == data["message_id"]
    assert str(row["conversation_id"]) == data["conversation_id"]
    assert (row["user_id"], row["role"], row["content"]) == ("alice", "assistant", data["content"])
    assert json.loads(row["metadata"]) == data["metadata"]
    assert row["created_at"] == datetime.fromisoformat(data["created_at"])
    stored = await conversation(database_url, data["conversation_id"])
    assert stored["user_id"] == "alice"
    assert stored["status"] == "active"
    assert stored["created_at"] == stored["updated_at"] == row["created_at"]
    assert await queue_has(amqp_url, topology.QUEUE, 0)()
    assert await take_dead_letters(amqp_url) == []


async def test_an_event_delivered_twice_and_a_resent_copy_are_stored_once(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    event = message_created(user_id="alice")
    resent = json.loads(json.dumps(event)) | {"event_id": str(uuid.uuid4())}
    # jsonb equality: the same metadata with other key order and 1 written as 1.0.
    reordered = json.loads(json.dumps(resent))
    reordered["data"]["metadata"] = {"model": "test"}
    async with running_worker(settings):
        await publish(amqp_url, [event, event, resent, reordered])
        await wait_for(queue_has(amqp_url, topology.QUEUE, 0), what="an empty queue")
    assert await count(database_url, "messages") == 1
    assert await count(database_url, "conversations") == 1
    assert await take_dead_letters(amqp_url) == []


async def test_a_duplicate_across_batches_is_recognised_after_a_worker_restart(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    event = message_created(user_id="alice", metadata={"n": 1})
    async with running_worker(settings):
        await publish(amqp_url, [event])
        await wait_for(table_has(database_url, "messages", 1))
    same_but_float = body(event).replace(b'{"n": 1}', b'{"n": 1.0}')
    async with running_worker(settings):
        await publish(amqp_url, [same_but_float])
        await wait_for(queue_has(amqp_url, topology.QUEUE, 0))
    assert await count(database_url, "messages") == 1
    assert await take_dead_letters(amqp_url) == []


async def test_archive_before_messages_and_messages_after_archive_keep_it_archived(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    conversation_id = str(uuid.uuid4())
    archive = conversation_archived(
        conversation_id=conversation_id, user_id="alice", archived_at=at(30)
    )
    early = message_created(conversation_id=conversation_id, user_id="alice", created_at=at(10))
    late = message_created(conversation_id=conversation_id, user_id="alice", created_at=at(45))
    async with running_worker(settings):
        await publish(amqp_url, [archive])
        await wait_for(table_has(database_url, "conversations", 1))
        first = await conversation(database_url, conversation_id)
        assert first["status"] == "archived"
        assert first["created_at"] == first["updated_at"] == datetime.fromisoformat(at(30))

        await publish(amqp_url, [late])
        await wait_for(table_has(database_url, "messages", 1))
        await publish(amqp_url, [early])
        await wait_for(table_has(database_url, "messages", 2))

    stored = await conversation(database_url, conversation_id)
    assert stored["status"] == "archived"
    assert stored["created_at"] == datetime.fromisoformat(at(10))
    assert stored["updated_at"] == datetime.fromisoformat(at(45))


async def test_updated_at_is_the_latest_whatever_the_arrival_order(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    conversation_id = str(uuid.uuid4())
    minutes = [50, 5, 30, 70, 1, 60]
    events = [
        message_created(conversation_id=conversation_id, user_id="alice", created_at=at(m))
        for m in minutes
    ]
    async with running_worker(settings):
        for event in events:  # one by one: each in a batch of its own
            await publish(amqp_url, [event])
        await wait_for(table_has(database_url, "messages", len(minutes)))
    stored = await conversation(database_url, conversation_id)
    assert stored["created_at"] == datetime.fromisoformat(at(1))
    assert stored["updated_at"] == datetime.fromisoformat(at(70))
    assert stored["status"] == "active"


async def test_messages_of_many_conversations_in_one_batch_are_all_stored(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    conversations = [str(uuid.uuid4()) for _ in range(40)]
    events = [
        message_created(conversation_id=conversations[i % 40], user_id=("alice", "bob")[i % 40 % 2])
        for i in range(1200)
    ]
    await publish(amqp_url, events)  # queued before the worker starts: full batches
    async with running_worker(settings):
        await wait_for(table_has(database_url, "messages", 1200))
    assert await count(database_url, "conversations") == 40
    owners = await fetch_all(
        database_url, "SELECT user_id, count(*) AS n FROM conversations GROUP BY user_id"
    )
    assert {row["user_id"]: row["n"] for row in owners} == {"alice": 20, "bob": 20}
