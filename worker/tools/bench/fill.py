"""Filling the bench database for the read scenario, quickly, with COPY.

The shape: one user per 50 conversations, 20 messages per conversation, a
fifth of the conversations archived, random UUIDs as the worker stores them.
Messages are written round by round (every conversation's first message,
then every second one...), so a conversation's rows are spread over the
table as they are when many chats run at once, not packed into one page.

Bulk-load tricks, each safe because the bench made the data consistent and
the database is its own: the secondary indexes are dropped and rebuilt from
their own definitions after the load (one sort instead of millions of
inserts), and foreign-key triggers are off for the load session
(``session_replication_role = replica``, a superuser setting; without it the
load is just slower).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from worker.tools.progress import Progress

MESSAGES_PER_CONVERSATION = 20
CONVERSATIONS_PER_USER = 50
_START = datetime(2026, 1, 1, tzinfo=UTC)
_SPAN = timedelta(days=90)
_CHUNK = 50_000


def _random_uuid(rng: random.Random) -> UUID:
    return UUID(int=rng.getrandbits(128), version=4)


async def fill(dsn: str, messages: int, *, seed: int = 1) -> None:
    """Replace the chat tables' rows with ``messages`` messages of the shape above."""
    rng = random.Random(seed)
    conversations = max(1, -(-messages // MESSAGES_PER_CONVERSATION))
    users = [f"reader-{n}" for n in range(max(1, conversations // CONVERSATIONS_PER_USER))]
    step = _SPAN / conversations
    owners = [(_random_uuid(rng), users[k % len(users)]) for k in range(conversations)]
    starts = [_START + k * step for k in range(conversations)]
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("TRUNCATE messages, conversations")
        with_foreign_keys = not await _disable_foreign_key_triggers(connection)
        indexes = await connection.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
            " AND tablename IN ('conversations', 'messages') AND indexname NOT LIKE 'pk\\_%'"
        )
        for index in indexes:
            await connection.execute(f'DROP INDEX "{index["indexname"]}"')
        await connection.execute(
            "INSERT INTO users (id) SELECT unnest($1::varchar[]) ON CONFLICT DO NOTHING", users
        )
        # Conversation k holds one message per round it takes part in.
        full, extra = divmod(messages, conversations)
        last = [
            start + (full + (k < extra) - 1) * timedelta(minutes=1)
            for k, start in enumerate(starts)
        ]
        await connection.copy_records_to_table(
            "conversations",
            records=[
                (cid, owner, "archived" if k % 5 == 0 else "active", starts[k], last[k])
                for k, (cid, owner) in enumerate(owners)
            ],
            columns=["id", "user_id", "status", "created_at", "updated_at"],
        )
        progress = Progress(messages, f"filling {messages:,} messages")
        rows = _message_rows(rng, owners, starts, messages)
        while chunk := list(itertools.islice(rows, _CHUNK)):
            await connection.copy_records_to_table(
                "messages",
                records=chunk,
                columns=[
                    "id",
                    "conversation_id",
                    "user_id",
                    "role",
                    "content",
                    "metadata",
                    "created_at",
                ],
            )
            progress.advance(len(chunk))
        progress.done()
        await connection.execute("SET maintenance_work_mem = '512MB'")
        for index in indexes:
            await connection.execute(index["indexdef"])
        if not with_foreign_keys:
            await connection.execute("SET session_replication_role = DEFAULT")
        # VACUUM sets the visibility map as a long-lived table has it (index-only
        # scans), ANALYZE gives the planner the statistics of the real size.
        await connection.execute("VACUUM ANALYZE users, conversations, messages")
    finally:
        await connection.close()


async def _disable_foreign_key_triggers(connection: asyncpg.Connection) -> bool:
    try:
        await connection.execute("SET session_replication_role = replica")
    except asyncpg.InsufficientPrivilegeError:
        return False
    return True


def _message_rows(
    rng: random.Random, owners: list[tuple[UUID, str]], starts: list[datetime], total: int
) -> Iterator[tuple[Any, ...]]:
    minute = timedelta(minutes=1)
    metadata = '{"model": "bench", "tokens": 120}'
    made = 0
    round_ = 0
    while made < total:
        at = round_ * minute
        role = "assistant" if round_ % 2 else "user"
        for k, (conversation_id, owner) in enumerate(owners):
            if made == total:
                return
            content = f"message {round_} of a benchmark conversation " + "lorem ipsum " * 6
            yield (
                _random_uuid(rng),
                conversation_id,
                owner,
                role,
                content,
                metadata,
                starts[k] + at,
            )
            made += 1
        round_ += 1
