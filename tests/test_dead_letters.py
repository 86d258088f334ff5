"""Every refused event reaches the DLQ with its reason, its body byte for byte,
and its properties; valid events beside it are stored."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aio_pika
import pytest
from sqlalchemy.engine import URL

from contracts import DETAIL_MAX_BYTES
from tests.db import fetch_all
from tests.events import body, conversation_archived, message_created
from tests.harness import (
    DeadLetter,
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


async def dead_letters_after_publishing(
    settings: Settings, amqp_url: str, raw: bytes, routing_key: str = "message.created"
) -> list[DeadLetter]:
    message_id = str(uuid.uuid4())
    async with running_worker(settings):
        await publish(
            amqp_url,
            [raw],
            routing_key=routing_key,
            message_id=message_id,
            type=routing_key,
            content_type="application/json",
            headers={"x-trace": "abc"},
            app_id="chat-runtime",
        )
        await wait_for(queue_has(amqp_url, topology.DLQ, 1), what="one dead letter")
    letters = await take_dead_letters(amqp_url)
    assert len(letters) == 1
    letter = letters[0]
    assert letter.body == raw  # byte for byte
    assert letter.message.message_id == message_id
    assert letter.message.type == routing_key
    assert letter.message.content_type == "application/json"
    assert letter.message.app_id == "chat-runtime"
    assert letter.message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert letter.headers["x-trace"] == "abc"
    detail = letter.headers["x-chatstore-detail"]
    assert isinstance(detail, str)
    assert 0 < len(detail.encode()) <= DETAIL_MAX_BYTES
    assert await queue_has(amqp_url, topology.QUEUE, 0)()
    return letters


async def store_one(settings: Settings, database_url: URL, event: dict[str, Any]) -> None:
    """Let a worker store ``event``, the stored row the next event is judged against."""
    async with running_worker(settings):
        await publish(settings.amqp_url, [event])
        await wait_for(table_has(database_url, "messages", 1))


def with_field(event: dict[str, Any], **envelope: Any) -> bytes:
    return body(event | envelope)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe not utf-8", "malformed"),
        (b"{not json", "malformed"),
        (b"[1, 2, 3]", "malformed"),
        (body(message_created(user_id="alice", content="")), "invalid"),
        (body(message_created(user_id="alice", content="x" * 1001)), "invalid"),
        (
            body(message_created(user_id="alice", content="PLACEHOLDER")).replace(
                b"PLACEHOLDER", b"a\\u0000b"
            ),
            "invalid",
        ),
        (with_field(message_created(user_id="alice"), type="message.deleted"), "unknown_type"),
        (with_field(message_created(user_id="alice"), version=2), "unsupported_version"),
        (body(message_created(user_id="mallory")), "unknown_user"),
    ],
    ids=[
        "not-utf8",
        "not-json",
        "not-an-object",
        "empty-content",
        "long-user-content",
        "nul",
        "unknown-type",
        "version-2",
        "unknown-user",
    ],
)
async def test_a_refused_event_is_dead_lettered_with_its_reason(
    settings: Settings, database_url: URL, amqp_url: str, raw: bytes, reason: str
) -> None:
    (letter,) = await dead_letters_after_publishing(settings, amqp_url, raw)
    assert letter.reason == reason
    assert await count(database_url, "messages") == 0
    assert await count(database_url, "conversations") == 0


async def test_a_message_for_another_users_conversation_is_dead_lettered(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    conversation_id = str(uuid.uuid4())
    await store_one(
        settings, database_url, message_created(conversation_id=conversation_id, user_id="alice")
    )
    intruder = body(message_created(conversation_id=conversation_id, user_id="bob"))
    (letter,) = await dead_letters_after_publishing(settings, amqp_url, intruder)
    assert letter.reason == "ownership_mismatch"
    assert await count(database_url, "messages") == 1


async def test_an_archive_by_another_user_is_dead_lettered_and_changes_nothing(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    conversation_id = str(uuid.uuid4())
    await store_one(
        settings, database_url, message_created(conversation_id=conversation_id, user_id="alice")
    )
    archive = body(conversation_archived(conversation_id=conversation_id, user_id="bob"))
    (letter,) = await dead_letters_after_publishing(
        settings, amqp_url, archive, routing_key="conversation.archived"
    )
    assert letter.reason == "ownership_mismatch"
    (row,) = await fetch_all(database_url, "SELECT status FROM conversations")
    assert row["status"] == "active"


async def test_a_message_id_seen_before_with_other_content_is_a_conflict(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    original = message_created(user_id="alice", content="first")
    await store_one(settings, database_url, original)
    changed = json.loads(json.dumps(original))
    changed["data"]["content"] = "second"
    (letter,) = await dead_letters_after_publishing(settings, amqp_url, body(changed))
    assert letter.reason == "conflict"
    (row,) = await fetch_all(database_url, "SELECT content FROM messages")
    assert row["content"] == "first"


async def test_a_conflict_in_a_new_conversation_leaves_no_empty_conversation(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    original = message_created(user_id="alice")
    await store_one(settings, database_url, original)
    moved = json.loads(json.dumps(original))
    moved["data"]["conversation_id"] = str(uuid.uuid4())
    (letter,) = await dead_letters_after_publishing(settings, amqp_url, body(moved))
    assert letter.reason == "conflict"
    assert await count(database_url, "conversations") == 1


async def test_invalid_events_do_not_block_valid_ones_in_the_same_batch(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    valid = [message_created(user_id="alice") for _ in range(50)]
    mixed: list[dict[str, Any] | bytes] = []
    for number, event in enumerate(valid):
        mixed.append(event)
        if number % 10 == 0:
            mixed.append(b"garbage")
            mixed.append(body(message_created(user_id="nobody")))
    await publish(amqp_url, mixed)  # before the worker starts: one batch
    async with running_worker(settings):
        await wait_for(table_has(database_url, "messages", 50))
        await wait_for(queue_has(amqp_url, topology.DLQ, 10))
    reasons = sorted(letter.reason for letter in await take_dead_letters(amqp_url))
    assert reasons == ["malformed"] * 5 + ["unknown_user"] * 5


async def test_a_row_postgres_refuses_is_dead_lettered_alone_and_the_rest_committed(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    # A rule the contract does not know, added by the database's owner: the
    # worker's validation cannot catch it, PostgreSQL refuses the whole batch.
    await fetch_all(
        database_url,
        "ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (content <> 'poison')",
    )
    events = [message_created(user_id="alice") for _ in range(99)]
    poison = message_created(user_id="alice", content="poison")
    events.insert(37, poison)
    await publish(amqp_url, events)
    async with running_worker(settings):
        await wait_for(table_has(database_url, "messages", 99))
        await wait_for(queue_has(amqp_url, topology.DLQ, 1))
    (letter,) = await take_dead_letters(amqp_url)
    assert letter.reason == "invalid"
    assert letter.body == body(poison)
    assert "23514" in str(letter.headers["x-chatstore-detail"])
    assert "no_poison" in str(letter.headers["x-chatstore-detail"])
    assert await queue_has(amqp_url, topology.QUEUE, 0)()


async def test_a_message_that_keeps_coming_back_is_dead_lettered_by_the_broker(
    amqp_url: str,
) -> None:
    # The delivery limit: a message that crashed too many consumers.
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        await topology.declare(channel, delivery_limit=2)
        raw = body(message_created(user_id="alice"))
        await publish(amqp_url, [raw])
        queue = await channel.get_queue(topology.QUEUE)
        for _ in range(3):
            message = await queue.get(timeout=5)
            await message.nack(requeue=True)
        await wait_for(queue_has(amqp_url, topology.DLQ, 1))
    (letter,) = await take_dead_letters(amqp_url)
    assert letter.body == raw
    (death,) = letter.headers["x-death"]
    assert death["reason"] == "delivery_limit"
    assert death["queue"] == topology.QUEUE
