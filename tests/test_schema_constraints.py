"""PostgreSQL itself enforces the contract's rules, whoever writes the rows."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import URL

from tests.db import connect


@pytest.fixture
async def db(database_url: URL) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(database_url)
    await connection.execute("INSERT INTO users (id) VALUES ('alice'), ('bob')")
    try:
        yield connection
    finally:
        await connection.close()


async def new_conversation(db: asyncpg.Connection, user: str = "alice") -> uuid.UUID:
    conversation_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO conversations (id, user_id, created_at, updated_at) "
        "VALUES ($1, $2, now(), now())",
        conversation_id,
        user,
    )
    return conversation_id


async def add_message(
    db: asyncpg.Connection,
    conversation_id: uuid.UUID,
    *,
    role: str = "user",
    content: str = "hi",
    user: str = "alice",
) -> uuid.UUID:
    message_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO messages (id, conversation_id, user_id, role, content, created_at) "
        "VALUES ($1, $2, $3, $4, $5, now())",
        message_id,
        conversation_id,
        user,
        role,
        content,
    )
    return message_id


async def test_a_new_conversation_is_active_by_default(db: asyncpg.Connection) -> None:
    conversation_id = await new_conversation(db)
    assert (
        await db.fetchval("SELECT status FROM conversations WHERE id = $1", conversation_id)
        == "active"
    )


async def test_a_conversation_status_outside_the_two_values_is_refused(
    db: asyncpg.Connection,
) -> None:
    conversation_id = await new_conversation(db)
    with pytest.raises(asyncpg.CheckViolationError, match="ck_conversations_status"):
        await db.execute(
            "UPDATE conversations SET status = 'deleted' WHERE id = $1", conversation_id
        )


async def test_a_role_outside_user_and_assistant_is_refused(db: asyncpg.Connection) -> None:
    conversation_id = await new_conversation(db)
    with pytest.raises(asyncpg.CheckViolationError, match="ck_messages_role"):
        await add_message(db, conversation_id, role="system")


async def test_user_messages_over_1000_characters_are_refused_but_assistant_ones_are_not(
    db: asyncpg.Connection,
) -> None:
    conversation_id = await new_conversation(db)
    await add_message(db, conversation_id, content="é" * 1000)
    with pytest.raises(asyncpg.CheckViolationError, match="ck_messages_user_content_length"):
        await add_message(db, conversation_id, content="é" * 1001)
    await add_message(db, conversation_id, role="assistant", content="é" * 5000)
    assert await db.fetchval("SELECT count(*) FROM messages") == 2


async def test_foreign_keys_refuse_unknown_users_and_conversations(db: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="fk_conversations_user_id_users"):
        await new_conversation(db, user="nobody")
    with pytest.raises(
        asyncpg.ForeignKeyViolationError, match="fk_messages_conversation_id_conversations"
    ):
        await add_message(db, uuid.uuid4())
    conversation_id = await new_conversation(db)
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="fk_messages_user_id_users"):
        await add_message(db, conversation_id, user="nobody")


async def test_deleting_a_conversation_deletes_its_messages(db: asyncpg.Connection) -> None:
    kept, dropped = await new_conversation(db), await new_conversation(db)
    kept_message = await add_message(db, kept)
    await add_message(db, dropped)
    await add_message(db, dropped)
    await db.execute("DELETE FROM conversations WHERE id = $1", dropped)
    assert [row["id"] for row in await db.fetch("SELECT id FROM messages")] == [kept_message]


async def test_deleting_a_user_deletes_their_conversations_and_messages(
    db: asyncpg.Connection,
) -> None:
    alices = await new_conversation(db, user="alice")
    bobs = await new_conversation(db, user="bob")
    await add_message(db, alices)
    bobs_message = await add_message(db, bobs, user="bob")
    await db.execute("DELETE FROM users WHERE id = 'alice'")
    assert [row["id"] for row in await db.fetch("SELECT id FROM conversations")] == [bobs]
    assert [row["id"] for row in await db.fetch("SELECT id FROM messages")] == [bobs_message]
