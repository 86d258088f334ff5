"""The read repository against a real, migrated database."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts.history import (
    ConversationRow,
    InvalidCursorError,
    Keyset,
    MessageRow,
    Repository,
    encode_cursor,
)
from contracts.models import conversations, messages
from tests.db import connect, fetch_all
from tests.harness import add_users

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: URL) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


async def add_conversation(
    url: URL, user: str, updated_at: datetime | None, status: str = "active"
) -> uuid.UUID:
    conversation_id = uuid.uuid4()
    await fetch_all(
        url,
        "INSERT INTO conversations (id, user_id, status, created_at, updated_at) "
        "VALUES ($1, $2, $3, $4, $4)",
        conversation_id,
        user,
        status,
        updated_at,
    )
    return conversation_id


async def add_message(
    url: URL, conversation_id: uuid.UUID, user: str, created_at: datetime | None
) -> uuid.UUID:
    message_id = uuid.uuid4()
    await fetch_all(
        url,
        "INSERT INTO messages (id, conversation_id, user_id, role, content, metadata, created_at)"
        " VALUES ($1, $2, $3, 'user', $4, '{\"k\": 1}', $5)",
        message_id,
        conversation_id,
        user,
        f"message {message_id}",
        created_at,
    )
    return message_id


async def test_conversations_come_newest_first_and_pages_cover_ties_exactly_once(
    database_url: URL, engine: AsyncEngine
) -> None:
    await add_users(database_url, "alice", "bob")
    # Three share one instant, one has no time at all, one is bob's.
    times = [T0, T0 + timedelta(hours=1), T0, T0, None, T0 - timedelta(days=1)]
    ids = [await add_conversation(database_url, "alice", at) for at in times]
    await add_conversation(database_url, "bob", T0 + timedelta(days=1))
    repository = Repository(engine)

    seen: list[Any] = []
    cursor = None
    while True:
        page = await repository.conversations("alice", limit=2, cursor=cursor)
        assert len(page.items) <= 2
        seen += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert sorted(c.id for c in seen) == sorted(ids), "each exactly once, and only alice's"
    expected = sorted(
        zip(times, ids, strict=True),
        key=lambda pair: (pair[0] is None, pair[0] or T0, pair[1]),
        reverse=True,
    )
    assert [c.id for c in seen] == [conversation_id for _, conversation_id in expected]
    assert seen[0].updated_at is None, "a conversation without a time sorts as the newest"


async def test_conversations_filter_on_status(database_url: URL, engine: AsyncEngine) -> None:
    await add_users(database_url, "alice")
    active = await add_conversation(database_url, "alice", T0)
    archived = await add_conversation(database_url, "alice", T0, status="archived")
    repository = Repository(engine)

    assert [c.id for c in (await repository.conversations("alice", status="active")).items] == [
        active
    ]
    page = await repository.conversations("alice", status="archived")
    assert [(c.id, c.status) for c in page.items] == [(archived, "archived")]
    with pytest.raises(ValueError, match="status"):
        await repository.conversations("alice", status="deleted")


async def test_another_users_conversation_reads_as_not_found(
    database_url: URL, engine: AsyncEngine
) -> None:
    await add_users(database_url, "alice", "mallory")
    conversation_id = await add_conversation(database_url, "alice", T0)
    await add_message(database_url, conversation_id, "alice", T0)
    repository = Repository(engine)

    assert await repository.conversation("mallory", conversation_id) is None
    assert await repository.history("mallory", conversation_id) is None
    assert (await repository.conversations("mallory")).items == ()
    found = await repository.conversation("alice", conversation_id)
    assert found is not None
    assert (found.user_id, found.status) == ("alice", "active")
    assert await repository.conversation("alice", uuid.uuid4()) is None


async def test_history_pages_backwards_in_chronological_pages_through_ties_and_nulls(
    database_url: URL, engine: AsyncEngine
) -> None:
    await add_users(database_url, "alice")
    conversation_id = await add_conversation(database_url, "alice", T0)
    times = [T0 + timedelta(seconds=n // 3) for n in range(10)] + [None, None]
    stored = [(at, await add_message(database_url, conversation_id, "alice", at)) for at in times]
    # Chronological: oldest first; NULL times are the newest, ids break ties.
    chronological = [
        message_id
        for _, message_id in sorted(stored, key=lambda p: (p[0] is None, p[0] or T0, p[1]))
    ]
    repository = Repository(engine)

    pages: list[list[uuid.UUID]] = []
    before = None
    while True:
        page = await repository.history("alice", conversation_id, limit=5, before=before)
        assert page is not None
        pages.append([m.id for m in page.items])
        if page.next_cursor is None:
            break
        before = page.next_cursor

    assert pages[0] == chronological[-5:], "the first page is the last five, oldest first"
    assert [m for page_ids in reversed(pages) for m in page_ids] == chronological
    first = await repository.history("alice", conversation_id, limit=1)
    assert first is not None
    assert first.items[0].metadata == {"k": 1}


async def test_history_of_an_empty_conversation_is_an_empty_page(
    database_url: URL, engine: AsyncEngine
) -> None:
    await add_users(database_url, "alice")
    conversation_id = await add_conversation(database_url, "alice", None)
    page = await Repository(engine).history("alice", conversation_id)
    assert page is not None
    assert (page.items, page.next_cursor) == ((), None)


@pytest.mark.parametrize(
    "cursor",
    ["", "not base64!", "bm90IGpzb24", encode_cursor("message", Keyset(T0, uuid.uuid4()))],
)
async def test_a_foreign_or_malformed_cursor_is_refused(engine: AsyncEngine, cursor: str) -> None:
    with pytest.raises(InvalidCursorError):
        await Repository(engine).conversations("alice", cursor=cursor)


def test_results_fields_follow_the_tables_column_order() -> None:
    # The repository builds results from rows by position.
    for result, table in ((ConversationRow, conversations), (MessageRow, messages)):
        assert list(result._fields) == [c.name for c in table.columns]


async def test_page_sizes_are_bounded(engine: AsyncEngine) -> None:
    repository = Repository(engine)
    with pytest.raises(ValueError, match="limit"):
        await repository.conversations("alice", limit=0)
    with pytest.raises(ValueError, match="limit"):
        await repository.history("alice", uuid.uuid4(), limit=10_000)


# A realistic shape at a modest size: 400 users with 50 conversations each,
# 10 messages per conversation. On a tiny table every plan is a sequential
# scan whatever the indexes, so the plan test needs rows and fresh statistics.
_FILL = """
    INSERT INTO users (id) SELECT 'user-' || u FROM generate_series(1, 400) AS u;
    INSERT INTO conversations (id, user_id, status, created_at, updated_at)
    SELECT md5('c' || c)::uuid, 'user-' || (c % 400 + 1),
           CASE WHEN c % 5 = 0 THEN 'archived' ELSE 'active' END,
           timestamptz '2026-01-01' + c * interval '1 minute',
           timestamptz '2026-01-01' + c * interval '1 minute'
    FROM generate_series(1, 20000) AS c;
    INSERT INTO messages (id, conversation_id, user_id, role, content, created_at)
    SELECT md5('m' || m)::uuid, md5('c' || (m / 10 + 1))::uuid,
           'user-' || ((m / 10 + 1) % 400 + 1), 'assistant', 'message ' || m,
           timestamptz '2026-01-01' + m * interval '1 second'
    FROM generate_series(0, 199999) AS m;
    ANALYZE users, conversations, messages;
"""


def _literals(parameters: Any) -> str:
    """SQL literals of the test's own parameters (ints, strings, UUIDs, timestamps)."""
    return ", ".join(
        str(p) if isinstance(p, int) else "'" + str(p).replace("'", "''") + "'" for p in parameters
    )


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _plan_nodes(child))]


async def test_every_query_uses_the_contracts_indexes_on_a_realistic_table(
    database_url: URL, engine: AsyncEngine
) -> None:
    connection = await connect(database_url)
    try:
        await connection.execute(_FILL)
    finally:
        await connection.close()
    statements: list[tuple[str, Any]] = []

    # The statements the repository really ran, explained with their own
    # parameters: no copy of the SQL in the test to drift from the code.
    class Recording(Repository):
        async def _run(self, sql: str, arguments: list[Any]) -> list[asyncpg.Record]:
            statements.append((sql, arguments))
            return await super()._run(sql, arguments)

    repository = Recording(engine)
    conversation_id = uuid.UUID(hashlib.md5(b"c401").hexdigest())
    user = "user-2"
    assert await repository.conversation(user, conversation_id) is not None
    first = await repository.conversations(user, limit=5)
    await repository.conversations(user, status="active", limit=5, cursor=first.next_cursor)
    history = await repository.history(user, conversation_id, limit=3)
    assert history is not None
    assert len(history.items) == 3
    await repository.history(user, conversation_id, limit=3, before=history.next_cursor)
    assert len(statements) == 5

    used: set[str] = set()
    connection = await connect(database_url)
    try:
        for n, (statement, parameters) in enumerate(statements):
            custom = await connection.fetchval(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, *parameters
            )
            # The generic plan too: PostgreSQL switches a prepared statement
            # (asyncpg prepares every one) to it after five runs.
            await connection.execute(f"PREPARE q{n} AS {statement}")
            await connection.execute("SET plan_cache_mode = force_generic_plan")
            generic = await connection.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE q{n}({_literals(parameters)})"
            )
            await connection.execute("RESET plan_cache_mode")
            for plan in (json.loads(custom)[0]["Plan"], json.loads(generic)[0]["Plan"]):
                nodes = _plan_nodes(plan)
                assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], (statement, plan)
                # An index walked in order while filtering on user_id reads
                # the whole table, though it is no sequential scan.
                discarded = sum(n.get("Rows Removed by Filter", 0) for n in nodes)
                assert discarded <= 20, (statement, plan)
                used |= {n["Index Name"] for n in nodes if "Index Name" in n}
    finally:
        await connection.close()
    assert "ix_messages_conversation_id_created_at_desc" in used, used
    assert used & {"ix_conversations_user_id", "ix_conversations_user_id_status"}, used
