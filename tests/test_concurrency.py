"""Concurrent workers on the same conversations: one owner, no deadlock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts import AnyEvent, ConversationArchived, MessageCreated, Reason, decode
from tests.db import fetch_all
from tests.events import body, conversation_archived, message_created
from tests.harness import add_users
from worker.ingest.store import write_batch


def event(raw: dict[str, object]) -> AnyEvent:
    decoded = decode(body(raw))
    assert isinstance(decoded, MessageCreated | ConversationArchived), decoded
    return decoded


@pytest.fixture
async def engines(database_url: URL) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    await add_users(database_url, "alice", "bob")
    first, second = create_async_engine(database_url), create_async_engine(database_url)
    try:
        yield first, second
    finally:
        await first.dispose()
        await second.dispose()


async def test_two_workers_racing_on_a_new_conversation_give_it_exactly_one_owner(
    engines: tuple[AsyncEngine, AsyncEngine], database_url: URL
) -> None:
    first, second = engines
    for _ in range(25):
        conversation_id = str(uuid.uuid4())
        alices = [event(message_created(conversation_id=conversation_id, user_id="alice"))]
        bobs = [event(message_created(conversation_id=conversation_id, user_id="bob"))]
        results = await asyncio.gather(write_batch(first, alices), write_batch(second, bobs))
        refusals = [r.rejections.get(0) for r in results]
        winners = [index for index, refusal in enumerate(refusals) if refusal is None]
        assert len(winners) == 1, refusals
        loser = refusals[1 - winners[0]]
        assert loser is not None
        assert loser.reason is Reason.OWNERSHIP_MISMATCH
        (owner,) = await fetch_all(
            database_url,
            "SELECT user_id FROM conversations WHERE id = $1",
            uuid.UUID(conversation_id),
        )
        assert owner["user_id"] == ("alice", "bob")[winners[0]]
        rows = await fetch_all(
            database_url,
            "SELECT user_id FROM messages WHERE conversation_id = $1",
            uuid.UUID(conversation_id),
        )
        assert [row["user_id"] for row in rows] == [owner["user_id"]]


async def test_batches_touching_the_same_conversations_in_opposite_orders_never_deadlock(
    engines: tuple[AsyncEngine, AsyncEngine], database_url: URL
) -> None:
    first, second = engines
    conversations = [str(uuid.uuid4()) for _ in range(30)]
    for round_ in range(15):
        forward = [
            event(message_created(conversation_id=c, user_id="alice")) for c in conversations
        ] + [event(conversation_archived(conversation_id=conversations[round_], user_id="alice"))]
        backward = [
            event(message_created(conversation_id=c, user_id="alice"))
            for c in reversed(conversations)
        ]
        # write_batch does not retry: a deadlock (40P01) would raise here.
        await asyncio.gather(write_batch(first, forward), write_batch(second, backward))
    (row,) = await fetch_all(database_url, "SELECT count(*) AS n FROM messages")
    assert row["n"] == 30 * 2 * 15
    (archived,) = await fetch_all(
        database_url, "SELECT count(*) AS n FROM conversations WHERE status = 'archived'"
    )
    assert archived["n"] == 15
