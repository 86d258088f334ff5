"""The typed models (contracts.models) against the real database, through the ORM."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import selectinload

from contracts.enums import ConversationStatus, MessageRole
from contracts.history import Repository, reader_engine
from contracts.models import Conversation, Message, User, conversations, messages
from tests.db import fetch_all
from tests.events import conversation_archived, message_created
from tests.harness import publish, running_worker, table_has, wait_for
from worker.settings import Settings

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ARCHIVED = ConversationStatus.ARCHIVED


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
async def engine(database_url: URL) -> AsyncIterator[AsyncEngine]:
    """On this test's database, with users alice and bob (``settings`` may have added them)."""
    engine = create_async_engine(database_url)
    async with new_session(engine) as session, session.begin():
        for user in ("alice", "bob"):
            await session.merge(User(id=user))
    yield engine
    await engine.dispose()


def new_session(engine: AsyncEngine) -> AsyncSession:
    return AsyncSession(engine, expire_on_commit=False)


def message(conversation: Conversation, minutes: int, **fields: Any) -> Message:
    values = {"user_id": conversation.user_id, "role": MessageRole.USER, "content": "hi"}
    return Message(conversation=conversation, created_at=at(minutes), **values | fields)


async def ids_of(engine: AsyncEngine, sql: str, *args: object) -> list[Any]:
    """The ``id`` column of a raw query, on a connection of its own (not the engine's)."""
    return [row["id"] for row in await fetch_all(engine.url, sql, *args)]


async def test_enums_are_the_contracts_values_and_load_back_as_members(engine: AsyncEngine) -> None:
    assert [status.value for status in ConversationStatus] == ["active", "archived"]
    assert [role.value for role in MessageRole] == ["user", "assistant"]
    assert conversations.c.status.type.python_type is ConversationStatus
    assert messages.c.role.type.python_type is MessageRole
    async with new_session(engine) as session, session.begin():
        conversation = Conversation(user_id="alice", status=ARCHIVED)
        session.add(message(conversation, 0, role=MessageRole.ASSISTANT))
    (row,) = await fetch_all(engine.url, "SELECT status, role FROM conversations, messages")
    assert (row["status"], row["role"]) == ("archived", "assistant")  # values, not names
    async with new_session(engine) as session:
        loaded = await session.get_one(Conversation, conversation.id)
        (stored,) = await loaded.awaitable_attrs.messages
        # ``is``: a plain str "archived" would be equal to the member, but not it.
        assert loaded.status is ARCHIVED
        assert stored.role is MessageRole.ASSISTANT


async def test_bare_objects_get_new_ids_status_active_and_timestamps(engine: AsyncEngine) -> None:
    before = datetime.now(UTC)
    async with new_session(engine) as session, session.begin():
        conversation = Conversation(user_id="alice")
        added = Message(conversation=conversation, user_id="alice", role="user", content="hi")
        session.add(added)
    after = datetime.now(UTC)
    (row,) = await fetch_all(engine.url, "SELECT * FROM conversations")
    assert (row["id"], row["status"]) == (conversation.id, "active")
    assert before <= row["created_at"] <= row["updated_at"] <= after
    (stored,) = await fetch_all(engine.url, "SELECT * FROM messages")
    assert (stored["id"], stored["conversation_id"]) == (added.id, conversation.id)
    assert before <= stored["created_at"] <= after


async def test_metadata_is_the_jsonb_column_and_none_stays_sql_null(engine: AsyncEngine) -> None:
    data = {"model": "m", "tokens": [1, 2.5], "nested": {"ok": True, "none": None}}
    async with new_session(engine) as session, session.begin():
        conversation = Conversation(user_id="alice")
        with_data = message(conversation, 0, metadata_=data)
        with_none = message(conversation, 1, metadata_=None)
        left_out = message(conversation, 2)
        session.add_all([with_data, with_none, left_out])
    rows = await fetch_all(engine.url, "SELECT id, metadata FROM messages ORDER BY created_at")
    assert [row["id"] for row in rows] == [with_data.id, with_none.id, left_out.id]
    assert json.loads(rows[0]["metadata"]) == data
    assert [row["metadata"] for row in rows[1:]] == [None, None]  # SQL NULL, not JSON 'null'
    async with new_session(engine) as session:
        loaded = await session.get_one(Conversation, conversation.id)
        stored = {m.id: m.metadata_ for m in await loaded.awaitable_attrs.messages}
        assert stored == {with_data.id: data, with_none.id: None, left_out.id: None}


async def test_messages_load_in_created_at_order_lazily_and_eagerly(engine: AsyncEngine) -> None:
    async with new_session(engine) as session, session.begin():
        conversation = Conversation(user_id="alice")
        # Inserted out of time order, so the table's own order cannot pass for it.
        added = [message(conversation, minutes) for minutes in (30, 10, 20)]
        session.add_all([*added, message(Conversation(user_id="bob"), 15)])
    in_order = [added[1].id, added[2].id, added[0].id]
    async with new_session(engine) as session:
        loaded = await session.get_one(Conversation, conversation.id)
        lazy: list[Message] = await loaded.awaitable_attrs.messages
        assert [m.id for m in lazy] == in_order
    async with new_session(engine) as session:
        query = select(Conversation).options(selectinload(Conversation.messages))
        eager = (await session.scalars(query.where(Conversation.id == conversation.id))).one()
        assert [m.id for m in eager.messages] == in_order
    async with new_session(engine) as session:  # and back, from a message loaded alone
        alone = await session.get_one(Message, added[0].id)
        back: Conversation = await alone.awaitable_attrs.conversation
        assert (back.id, back.user_id) == (conversation.id, "alice")


async def test_unknown_conversations_and_users_fail_the_flush(engine: AsyncEngine) -> None:
    async with new_session(engine) as session:
        session.add(Message(conversation_id=uuid.uuid4(), user_id="alice", role="user", content=""))
        with pytest.raises(IntegrityError, match="fk_messages_conversation_id_conversations"):
            await session.flush()
    async with new_session(engine) as session:
        session.add(conversation := Conversation(user_id="alice"))
        await session.commit()
        kept = [conversation.id]  # the failed flush's rollback expires it
        session.add(message(conversation, 0, user_id="nobody"))
        with pytest.raises(IntegrityError, match="fk_messages_user_id_users"):
            await session.flush()
    assert await ids_of(engine, "SELECT id FROM conversations") == kept
    assert await ids_of(engine, "SELECT id FROM messages") == []


async def test_an_unknown_status_or_role_is_refused_by_python_and_db(engine: AsyncEngine) -> None:
    conversation = Conversation(user_id="alice")
    bad_status = Conversation(user_id="alice", status=cast(ConversationStatus, "deleted"))
    for bad in (bad_status, message(conversation, 0, role=cast(MessageRole, "system"))):
        async with new_session(engine) as session:
            session.add(bad)
            with pytest.raises(StatementError, match="not among the defined enum values") as error:
                await session.flush()
            assert isinstance(
                error.value.orig, LookupError
            )  # refused in Python, not by the database
    async with new_session(engine) as session, session.begin():
        session.add(Conversation(id=conversation.id, user_id="alice"))
    raw = {
        "ck_conversations_status": "UPDATE conversations SET status = 'deleted'",
        "ck_messages_role": "INSERT INTO messages (id, conversation_id, user_id, role, content)"
        " SELECT gen_random_uuid(), id, user_id, 'system', 'hi' FROM conversations",
    }
    for constraint, sql in raw.items():
        async with new_session(engine) as session:
            with pytest.raises(IntegrityError, match=constraint):
                await session.execute(text(sql))
    rows = await fetch_all(engine.url, "SELECT status FROM conversations")
    assert [row["status"] for row in rows] == ["active"]
    assert await ids_of(engine, "SELECT id FROM messages") == []


async def test_a_user_message_over_1000_characters_is_refused(engine: AsyncEngine) -> None:
    async with new_session(engine) as session:
        fits = message(Conversation(user_id="alice"), 0, content="é" * 1000)
        session.add(fits)
        await session.commit()
        kept = [fits.id]
        session.add(message(fits.conversation, 1, content="é" * 1001))
        with pytest.raises(IntegrityError, match="ck_messages_user_content_length"):
            await session.flush()
    assert await ids_of(engine, "SELECT id FROM messages") == kept


async def test_session_delete_leaves_the_messages_to_the_db_cascade(engine: AsyncEngine) -> None:
    async with new_session(engine) as session, session.begin():
        dropped, kept = Conversation(user_id="alice"), Conversation(user_id="alice")
        survivor = message(kept, 2)
        session.add_all([message(dropped, 0), message(dropped, 1), survivor])
    statements: list[str] = []
    async with new_session(engine) as session:
        loaded = await session.get_one(Conversation, dropped.id)
        sync = engine.sync_engine
        event.listen(sync, "before_cursor_execute", lambda *a: statements.append(a[2]))
        await session.delete(loaded)
        await session.commit()
    # passive_deletes: the ORM neither loads nor deletes the messages itself.
    assert [sql for sql in statements if "messages" in sql] == []
    assert await ids_of(engine, "SELECT id FROM conversations") == [kept.id]
    assert await ids_of(engine, "SELECT id FROM messages") == [survivor.id]


async def test_a_deleted_users_conversations_and_messages_go_too(engine: AsyncEngine) -> None:
    async with new_session(engine) as session, session.begin():
        alices, bobs = Conversation(user_id="alice"), Conversation(user_id="bob")
        bobs_message = message(bobs, 1)
        session.add_all([message(alices, 0), bobs_message])
    async with new_session(engine) as session, session.begin():
        await session.delete(await session.get_one(User, "alice"))
    assert await ids_of(engine, "SELECT id FROM users") == ["bob"]
    assert await ids_of(engine, "SELECT id FROM conversations") == [bobs.id]
    assert await ids_of(engine, "SELECT id FROM messages") == [bobs_message.id]


async def test_the_worker_keeps_timestamps_spanning_messages_and_archive_and_stays_archived(
    settings: Settings, database_url: URL, amqp_url: str, engine: AsyncEngine
) -> None:
    # ``ends``: archived after its messages; ``middle``: messages come after the archive.
    ends, middle = uuid.uuid4(), uuid.uuid4()

    def says(conversation: uuid.UUID, minutes: int, archive: bool = False) -> dict[str, Any]:
        of = {"conversation_id": str(conversation), "user_id": "alice"}
        if archive:
            return conversation_archived(**of, archived_at=at(minutes).isoformat())
        return message_created(**of, created_at=at(minutes).isoformat())

    async def archived() -> bool:
        sql = "SELECT id FROM conversations WHERE status = 'archived'"
        return len(await ids_of(engine, sql)) == 2

    async with running_worker(settings):
        await publish(amqp_url, [says(ends, 20), says(ends, 10), says(middle, 10)])
        await wait_for(table_has(database_url, "messages", 3), what="the first messages")
        await publish(amqp_url, [says(ends, 30, archive=True), says(middle, 30, archive=True)])
        await wait_for(archived, what="the archive")
        await publish(amqp_url, [says(middle, 45), says(middle, 5)])
        await wait_for(table_has(database_url, "messages", 5), what="the later messages")

    expected = {ends: (10, 30, [10, 20]), middle: (5, 45, [5, 10, 45])}
    async with new_session(engine) as session:
        for conversation_id, (first, last, times) in expected.items():
            conversation = await session.get(Conversation, conversation_id)
            assert conversation is not None
            assert conversation.status is ARCHIVED
            assert (conversation.created_at, conversation.updated_at) == (at(first), at(last))
            stored: list[Message] = await conversation.awaitable_attrs.messages
            assert [m.created_at for m in stored] == [at(minutes) for minutes in times]


async def test_status_filters_give_exactly_the_archived_ones(engine: AsyncEngine) -> None:
    async with new_session(engine) as session, session.begin():
        mine = [Conversation(user_id="alice", status=ARCHIVED, updated_at=at(m)) for m in (1, 2)]
        others = [Conversation(user_id="alice"), Conversation(user_id="bob", status=ARCHIVED)]
        session.add_all(mine + others)
    expected = {c.id for c in mine}
    async with new_session(engine) as session:
        query = select(Conversation.id).where(Conversation.status == ARCHIVED)
        assert set(await session.scalars(query.where(Conversation.user_id == "alice"))) == expected
    reader = reader_engine(engine.url)
    try:
        for status in (ARCHIVED, "archived"):
            page = await Repository(reader).conversations("alice", status=status)
            assert {row.id for row in page.items} == expected
            assert {row.status for row in page.items} == {"archived"}
    finally:
        await reader.dispose()


class StandInDialect(PGDialect_asyncpg):
    """An async engine not on asyncpg: no other async driver is installed here."""

    driver = "stand_in"
    supports_statement_cache = True


async def test_the_read_side_refuses_drivers_other_than_asyncpg_in_one_line() -> None:
    registry.register("postgresql.stand_in", __name__, "StandInDialect")
    other = create_async_engine("postgresql+stand_in://nobody@127.0.0.1:1/none")
    try:
        assert other.dialect.is_async
        with pytest.raises(ValueError, match="stand_in") as refused:
            Repository(other)
        assert "\n" not in str(refused.value)
    finally:
        await other.dispose()
