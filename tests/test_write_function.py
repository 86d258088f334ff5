"""chatstore_write_batch (migration 0002) and the one statement store.py sends per batch.

The worker-level rules are tested through a worker elsewhere; these pin down
the function itself: that the migration installs and removes it, who may run
it, that a batch is one statement and nothing else, that each event gets the
right outcome, the races only the function's inner statements can see, and
what a failed batch does to its connection.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from structlog.testing import capture_logs

from contracts import AnyEvent, ConversationArchived, MessageCreated, Reason, decode
from contracts.history import transaction_pooling_args
from tests.db import connect, fetch_all
from tests.events import body, conversation_archived, message_created
from tests.harness import add_users, wait_for, worker_settings
from tests.test_least_privilege import Roles, roles
from worker import exits, lifecycle, migrate
from worker.faults import Fault, classify, constraint_of, sqlstate_of
from worker.ingest.store import write_batch

__all__ = ["roles"]  # the fixture, shared with tests/test_least_privilege.py

SIGNATURE = (
    "chatstore_write_batch(uuid[], varchar[], uuid[], varchar[], text[], jsonb, timestamptz[])"
)
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def at(minutes: int) -> str:
    return (START + timedelta(minutes=minutes)).isoformat()


def decoded(raw: dict[str, Any]) -> AnyEvent:
    result = decode(body(raw))
    assert isinstance(result, MessageCreated | ConversationArchived), result
    return result


@pytest.fixture
async def engine(database_url: URL) -> AsyncIterator[AsyncEngine]:
    """One pooled connection, so every batch reuses the same one unless it is dropped."""
    await add_users(database_url, "alice", "bob")
    engine = create_async_engine(database_url, pool_size=1, max_overflow=0)
    try:
        yield engine
    finally:
        await engine.dispose()


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver: asyncpg.Connection = raw.driver_connection  # type: ignore[assignment]
        return driver.get_server_pid()


async def waiting_for_a_lock(url: URL) -> bool:
    rows = await fetch_all(
        url,
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    return bool(rows[0]["n"] > 0)


# --- the migration and the privileges --------------------------------------


async def test_migration_0002_installs_the_function_and_its_downgrade_removes_it(
    empty_database_url: URL,
) -> None:
    url = empty_database_url
    query = f"SELECT to_regprocedure('{SIGNATURE}') IS NOT NULL AS present"
    await asyncio.to_thread(migrate.upgrade, url)
    (row,) = await fetch_all(
        url,
        "SELECT prosecdef, provolatile::text FROM pg_proc"
        f" WHERE oid = to_regprocedure('{SIGNATURE}')",
    )
    # SECURITY INVOKER, so the caller's own privileges apply; VOLATILE, so each
    # statement inside takes a fresh snapshot.
    assert (row["prosecdef"], row["provolatile"]) == (False, "v")

    await asyncio.to_thread(migrate.downgrade, url, "0001")
    assert (await fetch_all(url, query))[0]["present"] is False
    (version,) = await fetch_all(url, "SELECT version_num FROM alembic_version")
    assert version["version_num"] == "0001"
    assert (await fetch_all(url, "SELECT count(*) AS n FROM messages"))[0]["n"] == 0

    await asyncio.to_thread(migrate.upgrade, url)
    assert (await fetch_all(url, query))[0]["present"] is True


async def test_only_the_worker_role_and_the_owner_may_execute_the_function(
    roles: Roles,
) -> None:
    worker = str(roles.worker.username)
    (row,) = await fetch_all(
        roles.migrator,
        f"SELECT has_function_privilege($1, '{SIGNATURE}', 'EXECUTE') AS worker,"
        " (SELECT array_agg(a.grantee::regrole::text ORDER BY a.grantee::regrole::text)"
        "  FROM pg_proc, aclexplode(proacl) AS a"
        f"  WHERE pg_proc.oid = to_regprocedure('{SIGNATURE}')) AS grantees",
        worker,
    )
    assert row["worker"] is True
    # PUBLIC would be grantee 0, shown as "-".
    assert sorted(row["grantees"]) == sorted([str(roles.migrator.username), worker])

    await add_users(roles.migrator, "alice")
    engine = create_async_engine(roles.worker)
    try:
        result = await write_batch(engine, [decoded(message_created(user_id="alice"))])
    finally:
        await engine.dispose()
    assert result.inserted == 1


async def test_a_worker_on_a_schema_before_0002_stops_at_start_and_names_migrate(
    empty_database_url: URL, amqp_url: str
) -> None:
    # A schema at 0001: `chatstore migrate` was not run after the upgrade.
    await asyncio.to_thread(migrate.upgrade, empty_database_url, "0001")
    with capture_logs() as logs:
        code = await lifecycle.run(
            worker_settings(empty_database_url, amqp_url), handle_signals=False
        )
    (fatal,) = [entry for entry in logs if entry["event"] == "worker.fatal"]
    assert code == exits.FAILURE
    assert 'function "chatstore_write_batch(uuid[]' in fatal["error"]
    assert "does not exist" in fatal["error"]
    assert "did `chatstore migrate` run?" in fatal["error"]


async def test_a_worker_role_that_may_not_run_the_function_stops_at_start_and_names_grants(
    roles: Roles, amqp_url: str
) -> None:
    # The function is there, but the grants were not run again after it.
    connection = await connect(roles.migrator)
    try:
        await connection.execute(
            f'REVOKE EXECUTE ON FUNCTION {SIGNATURE} FROM "{roles.worker.username}"'
        )
    finally:
        await connection.close()
    with capture_logs() as logs:
        code = await lifecycle.run(worker_settings(roles.worker, amqp_url), handle_signals=False)
    (fatal,) = [entry for entry in logs if entry["event"] == "worker.fatal"]
    assert code == exits.FAILURE
    assert fatal["error"] == (
        f"the database role may not EXECUTE {SIGNATURE}; "
        "run deploy/postgres/grants.sql as the tables' owner"
    )


# --- one statement ----------------------------------------------------------


# The server reports each statement it executes to this session's client only:
# log_statement logs every statement, BEGIN and COMMIT included, at LOG level;
# client_min_messages sends LOG to the client, log_min_messages keeps it out of
# the server's log.
STATEMENTS_TO_CLIENT = {
    "log_statement": "all",
    "client_min_messages": "log",
    "log_min_messages": "panic",
}


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
async def test_a_batch_is_one_statement_with_no_begin_or_commit(
    database_url: URL, pool_mode: str
) -> None:
    await add_users(database_url, "alice")
    connect_args: dict[str, Any] = {"server_settings": STATEMENTS_TO_CLIENT}
    if pool_mode == "transaction":  # as CHATSTORE_DATABASE_POOL_MODE=transaction makes it
        connect_args |= transaction_pooling_args()
    engine = create_async_engine(
        database_url, pool_size=1, max_overflow=0, connect_args=connect_args
    )
    executed: list[str] = []
    try:
        conversation_id = str(uuid.uuid4())
        first = [decoded(message_created(conversation_id=conversation_id, user_id="alice"))]
        await write_batch(engine, first)  # prepares the statement on the pooled connection
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver: asyncpg.Connection = raw.driver_connection  # type: ignore[assignment]
            driver.add_log_listener(lambda _, message: executed.append(message.message))
        batches = [
            [
                decoded(message_created(conversation_id=conversation_id, user_id="alice"))
                for _ in range(50)
            ]
            + [decoded(conversation_archived(conversation_id=conversation_id, user_id="alice"))]
            for _ in range(2)
        ]
        results = [await write_batch(engine, batch) for batch in batches]
        await asyncio.sleep(0.1)  # asyncpg calls log listeners soon after, not at once
    finally:
        await engine.dispose()

    assert [(result.inserted, result.archived) for result in results] == [(50, 1)] * 2
    call = "SELECT event, outcome FROM chatstore_write_batch($1, $2, $3, $4, $5, $6, $7)"
    assert [message.split(": ", 1)[1] for message in executed] == [call, call], executed
    assert all(message.startswith("execute ") for message in executed)
    if pool_mode == "transaction":  # unnamed, so nothing outlives the call
        assert all(message.startswith("execute <unnamed>: ") for message in executed)
    rows = await fetch_all(
        database_url,
        "SELECT count(*) AS n FROM messages WHERE conversation_id = $1",
        uuid.UUID(conversation_id),
    )
    assert rows[0]["n"] == 101


async def test_a_refused_batch_leaves_nothing_behind_and_keeps_its_connection(
    engine: AsyncEngine, database_url: URL
) -> None:
    await fetch_all(
        database_url,
        "ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (content <> 'poison')",
    )
    pid = await backend_pid(engine)
    batch = [decoded(message_created(user_id="alice")) for _ in range(5)]
    batch.append(decoded(message_created(user_id="alice", content="poison")))
    with pytest.raises(asyncpg.CheckViolationError) as refused:
        await write_batch(engine, batch)
    assert sqlstate_of(refused.value) == "23514"
    assert constraint_of(refused.value) == "no_poison"
    assert classify(refused.value) is Fault.DATA
    assert await fetch_all(database_url, "SELECT id FROM messages") == []
    assert await fetch_all(database_url, "SELECT id FROM conversations") == []
    # The statement's own transaction was rolled back by the server: the
    # connection is clean, and the halves of the batch reuse it.
    result = await write_batch(engine, batch[:5])
    assert result.inserted == 5
    assert await backend_pid(engine) == pid


async def test_a_nul_in_the_content_is_refused_as_data_by_postgresql(
    engine: AsyncEngine,
) -> None:
    # decode() refuses it first; this is what PostgreSQL says if one got past.
    raw = message_created(user_id="alice")
    event_ = MessageCreated.model_validate(raw | {"data": raw["data"] | {"content": "a\x00b"}})
    with pytest.raises(asyncpg.PostgresError) as refused:
        await write_batch(engine, [event_])
    assert sqlstate_of(refused.value) == "22021"
    assert classify(refused.value) is Fault.DATA


async def test_arrays_of_different_lengths_are_our_bug_not_bad_data(
    database_url: URL,
) -> None:
    connection = await connect(database_url)
    try:
        with pytest.raises(asyncpg.RaiseError) as refused:
            await connection.fetch(
                "SELECT * FROM chatstore_write_batch($1, $2, $3, $4, $5, $6, $7)",
                [uuid.uuid4()],
                ["alice", "bob"],
                [uuid.uuid4()],
                ["user"],
                ["hi"],
                "[null]",
                [START],
            )
    finally:
        await connection.close()
    assert classify(refused.value) is Fault.FATAL


# --- outcomes ---------------------------------------------------------------


async def test_each_event_gets_its_outcome_in_a_mixed_batch(
    engine: AsyncEngine, database_url: URL
) -> None:
    alices, bobs = str(uuid.uuid4()), str(uuid.uuid4())
    stored = message_created(conversation_id=alices, user_id="alice", created_at=at(5))
    await write_batch(engine, [decoded(stored)])
    changed = stored | {"data": stored["data"] | {"content": "changed"}}
    twice = message_created(conversation_id=bobs, user_id="bob", created_at=at(20))
    twice_changed = twice | {"data": twice["data"] | {"role": "assistant"}}
    batch = [
        decoded(message_created(conversation_id=alices, user_id="mallory")),  # 0
        decoded(stored),  # 1: stored before, identical
        decoded(changed),  # 2: stored before, different
        decoded(message_created(conversation_id=alices, user_id="bob")),  # 3: not bob's
        decoded(twice),  # 4: bob's conversation is new: bob owns it
        decoded(twice),  # 5: the same id again in this batch, identical
        decoded(twice_changed),  # 6: the same id again, different
        decoded(conversation_archived(conversation_id=alices, user_id="alice", archived_at=at(30))),
        decoded(message_created(conversation_id=alices, user_id="alice", created_at=at(1))),  # 8
    ]
    result = await write_batch(engine, batch)

    reasons = {position: rejection.reason for position, rejection in result.rejections.items()}
    assert reasons == {
        0: Reason.UNKNOWN_USER,
        2: Reason.CONFLICT,
        3: Reason.OWNERSHIP_MISMATCH,
        6: Reason.CONFLICT,
    }
    assert (result.inserted, result.duplicates, result.archived) == (2, 2, 1)
    assert result.settled == {1, 5}
    rows = await fetch_all(
        database_url, "SELECT id, user_id, status, created_at, updated_at FROM conversations"
    )
    conversations = {str(row["id"]): row for row in rows}
    assert conversations.keys() == {alices, bobs}
    assert conversations[bobs]["user_id"] == "bob"
    alice = conversations[alices]
    assert alice["status"] == "archived"
    assert (alice["created_at"], alice["updated_at"]) == (
        START + timedelta(minutes=1),
        START + timedelta(minutes=30),
    )
    (message,) = await fetch_all(
        database_url,
        "SELECT role FROM messages WHERE id = $1",
        uuid.UUID(twice["data"]["message_id"]),
    )
    assert message["role"] == "user"


# --- what only the inner statements see ------------------------------------


@pytest.mark.parametrize(("content", "outcome"), [("same", "duplicate"), ("other", "conflict")])
async def test_a_message_a_concurrent_worker_stored_since_the_comparison_is_compared_again(
    engine: AsyncEngine, database_url: URL, content: str, outcome: str
) -> None:
    """Step 2 finds no row; while the batch waits for its conversation's lock, another
    transaction stores the same message id and commits; the insert then does nothing,
    and the comparison that follows sees that row."""
    conversation_id = uuid.uuid4()
    await fetch_all(
        database_url,
        "INSERT INTO conversations (id, user_id) VALUES ($1, 'alice')",
        conversation_id,
    )
    raw = message_created(
        conversation_id=str(conversation_id), user_id="alice", content="same", created_at=at(3)
    )
    data = raw["data"]
    other = await connect(database_url)
    try:
        holding = other.transaction()
        await holding.start()
        await other.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", conversation_id)
        writing = asyncio.ensure_future(write_batch(engine, [decoded(raw)]))
        await wait_for(lambda: waiting_for_a_lock(database_url), within_s=10, what="the lock wait")
        await other.execute(
            "INSERT INTO messages (id, conversation_id, user_id, role, content, metadata,"
            " created_at) VALUES ($1, $2, 'alice', 'user', $3, $4::jsonb, $5)",
            uuid.UUID(data["message_id"]),
            conversation_id,
            content,
            '{"model": "test"}',
            START + timedelta(minutes=3),
        )
        await holding.commit()
        result = await asyncio.wait_for(writing, timeout=10)
    finally:
        await other.close()
    if outcome == "duplicate":
        assert (result.inserted, result.duplicates, result.rejections) == (0, 1, {})
    else:
        assert result.inserted == result.duplicates == 0
        assert result.rejections[0].reason is Reason.CONFLICT
    (stored,) = await fetch_all(database_url, "SELECT content FROM messages")
    assert stored["content"] == content


async def test_a_user_deleted_while_the_batch_runs_is_a_foreign_key_refusal_on_users(
    engine: AsyncEngine, database_url: URL
) -> None:
    """Step 1 sees the user; a transaction deleting it commits before the insert's
    foreign key check: the error flush.py turns into unknown_user."""
    await add_users(database_url, "carol")
    other = await connect(database_url)
    try:
        deleting = other.transaction()
        await deleting.start()
        await other.execute("DELETE FROM users WHERE id = 'carol'")
        writing = asyncio.ensure_future(
            write_batch(engine, [decoded(message_created(user_id="carol"))])
        )
        await wait_for(lambda: waiting_for_a_lock(database_url), within_s=10, what="the lock wait")
        await deleting.commit()
        with pytest.raises(asyncpg.ForeignKeyViolationError) as refused:
            await asyncio.wait_for(writing, timeout=10)
    finally:
        await other.close()
    assert sqlstate_of(refused.value) == "23503"
    assert (constraint_of(refused.value) or "").endswith("_users")
    assert classify(refused.value) is Fault.DATA


async def test_a_retried_batch_stored_already_still_locks_its_conversations(
    engine: AsyncEngine, database_url: URL
) -> None:
    """Nothing to write, but the row locks go to the WAL, so the commit waits for a
    synchronous standby: shown here by the batch waiting for a conflicting lock."""
    conversation_id = str(uuid.uuid4())
    batch = [
        decoded(message_created(conversation_id=conversation_id, user_id="alice")) for _ in range(3)
    ]
    await write_batch(engine, batch)
    other = await connect(database_url)
    try:
        holding = other.transaction()
        await holding.start()
        await other.execute(
            "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", uuid.UUID(conversation_id)
        )
        writing = asyncio.ensure_future(write_batch(engine, batch))
        await wait_for(lambda: waiting_for_a_lock(database_url), within_s=10, what="the lock wait")
        assert not writing.done()
        await holding.rollback()
        result = await asyncio.wait_for(writing, timeout=10)
    finally:
        await other.close()
    assert (result.inserted, result.duplicates, result.settled) == (0, 3, {0, 1, 2})


# --- connections ------------------------------------------------------------


async def test_a_connection_that_answers_read_only_is_not_pooled_again(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver: asyncpg.Connection = raw.driver_connection  # type: ignore[assignment]
        await driver.execute("SET SESSION default_transaction_read_only = on")
        first = driver.get_server_pid()
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        await write_batch(engine, [decoded(message_created(user_id="alice"))])
    result = await write_batch(engine, [decoded(message_created(user_id="alice"))])
    assert result.inserted == 1
    assert await backend_pid(engine) != first


async def test_a_pooled_connection_the_server_closed_is_replaced_before_the_batch(
    engine: AsyncEngine, database_url: URL
) -> None:
    first = await backend_pid(engine)
    await fetch_all(database_url, "SELECT pg_terminate_backend($1)", first)

    async def noticed() -> bool:
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            return bool(raw.driver_connection.is_closed())  # type: ignore[union-attr]

    await wait_for(noticed, within_s=10, what="the client to see the connection closed")
    result = await write_batch(engine, [decoded(message_created(user_id="alice"))])
    assert result.inserted == 1
    assert await backend_pid(engine) != first
