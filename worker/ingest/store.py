"""Writing a batch of events into PostgreSQL: one transaction, the rules in SQL.

The order of work inside the transaction is what makes concurrent workers safe:

1. Which users exist (an event of an unknown user is refused, not inserted).
2. Which messages are stored already: each is compared with the stored row in
   SQL (jsonb equality, timestamps as instants). Identical is a duplicate,
   anything else a ``conflict``; neither touches its conversation.
3. Every conversation of the remaining events is inserted or, if it exists,
   locked, in one statement in id order. Two workers therefore lock
   conversations in the same order and cannot deadlock, and a conversation new
   to both gets exactly one owner: the second insert waits for the first and
   finds its row.
4. The owners are read back (the rows are ours now); an event of another user
   is ``ownership_mismatch``.
5. Messages are inserted with ``ON CONFLICT (id) DO NOTHING``, in id order. One
   that was not inserted (the same id twice in this batch, or a concurrent
   worker's insert since step 2) is compared like in step 2.
6. Each conversation's timestamps and status are updated from the events that
   were accepted, with ``LEAST``/``GREATEST``, so arrival order cannot matter,
   and an archived conversation stays archived.

The worker never deletes: its database role needs SELECT, INSERT and UPDATE
only. The one leftover this allows is a conversation created in step 3 whose
only event then turned out, in step 5, to conflict with a message another
worker stored at that very moment: it stays, without timestamps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import AnyEvent, MessageCreated, Reason, Rejection

_KNOWN_USERS = text("SELECT id FROM users WHERE id = ANY(CAST(:ids AS varchar[]))")

# DO UPDATE ... WHERE false updates nothing but locks the existing row, so one
# statement takes every conversation's lock, in id order.
_INSERT_OR_LOCK_CONVERSATIONS = text("""
    INSERT INTO conversations AS c (id, user_id)
    SELECT t.id, t.user_id
    FROM unnest(CAST(:ids AS uuid[]), CAST(:user_ids AS varchar[])) AS t(id, user_id)
    ORDER BY t.id
    ON CONFLICT (id) DO UPDATE SET status = c.status WHERE false
""")

_OWNERS = text("SELECT id, user_id FROM conversations WHERE id = ANY(CAST(:ids AS uuid[]))")
# Locks without changing anything: a row lock is written to the WAL, a plain
# read is not (nor is a transaction id alone).
_LOCK_CONVERSATIONS = text("""
    SELECT id FROM conversations WHERE id = ANY(CAST(:ids AS uuid[]))
    ORDER BY id FOR NO KEY UPDATE
""")

# WITH ORDINALITY and the sort on it: of two rows with one id in a batch, the
# earlier one is inserted and the later one compared with it.
# The batch's metadata arrive as one JSON array (one dumps call per batch);
# this turns it back into a jsonb[] in order, a JSON null into SQL NULL.
_METADATA = """ARRAY(
            SELECT NULLIF(m.value, 'null') FROM jsonb_array_elements(CAST(:metadata AS jsonb))
                WITH ORDINALITY AS m(value, n)
            ORDER BY m.n
        )"""

_INSERT_MESSAGES = text(f"""
    INSERT INTO messages (id, conversation_id, user_id, role, content, metadata, created_at)
    SELECT t.id, t.conversation_id, t.user_id, t.role, t.content, t.metadata, t.created_at
    FROM unnest(
        CAST(:ids AS uuid[]), CAST(:conversation_ids AS uuid[]), CAST(:user_ids AS varchar[]),
        CAST(:roles AS varchar[]), CAST(:contents AS text[]),
        {_METADATA},
        CAST(:created_at AS timestamptz[])
    ) WITH ORDINALITY
        AS t(id, conversation_id, user_id, role, content, metadata, created_at, position)
    ORDER BY t.id, t.position
    ON CONFLICT (id) DO NOTHING
    RETURNING id
""")

_SAME_AS_STORED = text(f"""
    SELECT t.position,
           m.conversation_id = t.conversation_id
           AND m.user_id = t.user_id
           AND m.role = t.role
           AND m.content = t.content
           AND m.metadata IS NOT DISTINCT FROM t.metadata
           AND m.created_at = t.created_at AS same
    FROM unnest(
        CAST(:positions AS integer[]), CAST(:ids AS uuid[]),
        CAST(:conversation_ids AS uuid[]), CAST(:user_ids AS varchar[]),
        CAST(:roles AS varchar[]), CAST(:contents AS text[]),
        {_METADATA},
        CAST(:created_at AS timestamptz[])
    ) AS t(position, id, conversation_id, user_id, role, content, metadata, created_at)
    JOIN messages AS m ON m.id = t.id
""")

_UPDATE_CONVERSATIONS = text("""
    UPDATE conversations AS c SET
        created_at = LEAST(c.created_at, f.first_at),
        updated_at = GREATEST(c.updated_at, f.last_at),
        status = CASE WHEN f.archived THEN 'archived' ELSE c.status END
    FROM (
        SELECT t.id, min(t.at) AS first_at, max(t.at) AS last_at, bool_or(t.archived) AS archived
        FROM unnest(
            CAST(:ids AS uuid[]), CAST(:ats AS timestamptz[]), CAST(:archived AS boolean[])
        ) AS t(id, at, archived)
        GROUP BY t.id
    ) AS f
    WHERE c.id = f.id
""")


@dataclass(slots=True)
class WriteResult:
    """What one batch did; ``rejections`` maps an event's position to its refusal."""

    inserted: int = 0
    duplicates: int = 0
    archived: int = 0
    rejections: dict[int, Rejection] = field(default_factory=dict)
    # Positions already stored identically: nothing left to do for them.
    settled: set[int] = field(default_factory=set)

    def merge(self, other: WriteResult, offset: int) -> None:
        """Add ``other``, whose positions start at ``offset`` in this result's batch."""
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.archived += other.archived
        for position, rejection in other.rejections.items():
            self.rejections[offset + position] = rejection
        self.settled.update(offset + position for position in other.settled)


async def write_batch(engine: AsyncEngine, events: Sequence[AnyEvent]) -> WriteResult:
    """Store ``events`` in one transaction; returns once it has committed."""
    async with engine.begin() as connection:
        return await _write(connection, events)


async def _write(connection: AsyncConnection, events: Sequence[AnyEvent]) -> WriteResult:
    result = WriteResult()
    user_ids = sorted({event.data.user_id for event in events})
    known_users = set((await connection.execute(_KNOWN_USERS, {"ids": user_ids})).scalars())
    for position, event in enumerate(events):
        if event.data.user_id not in known_users:
            result.rejections[position] = Rejection(
                Reason.UNKNOWN_USER, f"user {event.data.user_id[:255]!r} does not exist"
            )

    messages = [
        (position, event)
        for position, event in enumerate(events)
        if isinstance(event, MessageCreated) and position not in result.rejections
    ]
    if messages:
        await _compare_with_stored(connection, messages, result, settled_only=False)

    # Owner from first sight: the first remaining event (in delivery order).
    first_user: dict[UUID, str] = {}
    for position, event in enumerate(events):
        if position not in result.rejections and position not in result.settled:
            first_user.setdefault(event.data.conversation_id, event.data.user_id)
    if not first_user:
        if result.settled:
            # Stored already, perhaps by an attempt whose commit reached only the
            # primary (its wait for a synchronous standby was cancelled). Writing
            # to the WAL makes this commit wait for the standby as well, so the
            # batch is acknowledged only once the standby has it. Id order: the
            # lock order of every batch.
            stored = sorted({events[position].data.conversation_id for position in result.settled})
            await connection.execute(_LOCK_CONVERSATIONS, {"ids": stored})
        return result

    conversation_ids = list(first_user)
    await connection.execute(
        _INSERT_OR_LOCK_CONVERSATIONS,
        {"ids": conversation_ids, "user_ids": list(first_user.values())},
    )
    owners: dict[UUID, str] = {
        row.id: row.user_id for row in await connection.execute(_OWNERS, {"ids": conversation_ids})
    }

    new_messages: list[tuple[int, MessageCreated]] = []
    accepted: list[tuple[UUID, datetime, bool]] = []
    for position, event in enumerate(events):
        if position in result.rejections or position in result.settled:
            continue
        if event.data.user_id != owners[event.data.conversation_id]:
            result.rejections[position] = Rejection(
                Reason.OWNERSHIP_MISMATCH,
                f"conversation {event.data.conversation_id} belongs to another user",
            )
        elif isinstance(event, MessageCreated):
            new_messages.append((position, event))
        else:
            result.archived += 1
            accepted.append((event.data.conversation_id, event.data.archived_at, True))
    if new_messages:
        accepted += await _insert_messages(connection, new_messages, result)

    if accepted:
        ids, ats, archived = zip(*accepted, strict=True)
        await connection.execute(
            _UPDATE_CONVERSATIONS, {"ids": list(ids), "ats": list(ats), "archived": list(archived)}
        )
    return result


def _message_columns(messages: Sequence[tuple[int, MessageCreated]]) -> dict[str, Any]:
    return {
        "ids": [event.data.message_id for _, event in messages],
        "conversation_ids": [event.data.conversation_id for _, event in messages],
        "user_ids": [event.data.user_id for _, event in messages],
        "roles": [event.data.role for _, event in messages],
        "contents": [event.data.content for _, event in messages],
        "metadata": json.dumps(
            [event.data.metadata for _, event in messages],
            ensure_ascii=False,
            separators=(",", ":"),
        ),
        "created_at": [event.data.created_at for _, event in messages],
    }


async def _insert_messages(
    connection: AsyncConnection,
    messages: list[tuple[int, MessageCreated]],
    result: WriteResult,
) -> list[tuple[UUID, datetime, bool]]:
    """Insert; classify the ones not inserted; return the accepted ones' facts."""
    inserted_ids = set(
        (await connection.execute(_INSERT_MESSAGES, _message_columns(messages))).scalars()
    )
    # Of two events with one message id in this batch, only the first can be
    # "inserted"; the second is compared with it like any earlier row.
    fresh: set[UUID] = set()
    collided: list[tuple[int, MessageCreated]] = []
    for position, event in messages:
        message_id = event.data.message_id
        if message_id in inserted_ids and message_id not in fresh:
            fresh.add(message_id)
        else:
            collided.append((position, event))
    result.inserted += len(fresh)
    if collided:
        await _compare_with_stored(connection, collided, result, settled_only=True)
    return [
        (event.data.conversation_id, event.data.created_at, False)
        for position, event in messages
        if position not in result.rejections
    ]


async def _compare_with_stored(
    connection: AsyncConnection,
    messages: list[tuple[int, MessageCreated]],
    result: WriteResult,
    *,
    settled_only: bool,
) -> None:
    """Mark messages whose id is stored already as duplicates or conflicts.

    With ``settled_only``, every message is known to be stored (its insert did
    nothing), and one missing from the join is a conflict all the same.
    """
    rows = await connection.execute(
        _SAME_AS_STORED,
        {"positions": [position for position, _ in messages]} | _message_columns(messages),
    )
    same = {row.position: row.same for row in rows}
    for position, event in messages:
        if position not in same and not settled_only:
            continue  # not stored yet: a new message
        if same.get(position):
            result.duplicates += 1
            result.settled.add(position)
        else:
            result.rejections[position] = Rejection(
                Reason.CONFLICT,
                f"message {event.data.message_id} was stored before with other "
                "content, conversation, user, role, metadata or time",
            )
