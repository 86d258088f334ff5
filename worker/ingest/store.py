"""Writing a batch of events into PostgreSQL: one statement, the rules in SQL.

A batch is one call of the function ``chatstore_write_batch`` (migration
0002), on an asyncpg prepared statement kept per pooled connection: the
batch's columns go as arrays, one element per event in delivery order, and
each event's outcome comes back.
The call is a statement of its own, outside any ``BEGIN``: PostgreSQL runs it
in a transaction of its own and commits it before it answers, so a batch
costs one round trip, commit included, and is atomic like any statement.

Inside the function, the order of work is what makes concurrent workers safe:

1. Which users exist (an event of an unknown user is refused, not inserted).
2. Which messages are stored already: each is compared with the stored row in
   SQL (jsonb equality, timestamps as instants). Identical is a duplicate,
   anything else a ``conflict``; neither touches its conversation.
3. Every conversation of the remaining events is inserted or, if it exists,
   locked, in one statement in id order. Two workers therefore lock
   conversations in the same order and cannot deadlock, and a conversation new
   to both gets exactly one owner, the user of its first event in delivery
   order: the second insert waits for the first and finds its row.
4. The owners are read back (the rows are ours now); an event of another user
   is ``ownership_mismatch``.
5. Messages are inserted with ``ON CONFLICT (id) DO NOTHING``, in id order. One
   that was not inserted (the same id twice in this batch, or a concurrent
   worker's insert since step 2) is compared like in step 2, by a statement
   of its own, whose snapshot sees that row.
6. Each conversation's timestamps and status are updated from the events that
   were accepted, with ``LEAST``/``GREATEST``, so arrival order cannot matter,
   and an archived conversation stays archived.

When nothing is left to write after step 2 but some events were stored
already (a retry of a batch whose commit reached only the primary, its wait
for the synchronous standby cancelled), their conversations are locked
``FOR NO KEY UPDATE``: the lock is written to the WAL, so this commit waits
for the standby too, and the batch is acknowledged only once the standby has
it.

The worker never deletes: its database role needs SELECT, INSERT and UPDATE
on the tables, and EXECUTE on the function, which runs with the caller's
privileges (SECURITY INVOKER). The one leftover this allows is a conversation
created in step 3 whose only event then turned out, in step 5, to conflict
with a message another worker stored at that very moment: it stays, without
timestamps.

Errors are PostgreSQL's own, raised by the statement that failed inside the
function, with their SQLSTATE and constraint name, so ``worker.faults``
classifies them as before and a batch with a refused event is halved to find
it. What SQLAlchemy does on a failed statement of its own, dropping a
connection that is dead or answers read-only, is done here for this one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, cast
from uuid import UUID

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import AnyEvent, MessageCreated, Reason, Rejection
from contracts.history.failover import connection_spoilt

_WRITE_BATCH: Final = "SELECT event, outcome FROM chatstore_write_batch($1, $2, $3, $4, $5, $6, $7)"
WRITE_FUNCTION: Final = (
    "chatstore_write_batch(uuid[], varchar[], uuid[], varchar[], text[], jsonb, timestamptz[])"
)
"""The function every batch calls, as ``has_function_privilege`` names it."""
# Where a pooled connection keeps its prepared _WRITE_BATCH (SQLAlchemy's
# per-connection info, emptied when the pool replaces the connection).
_PREPARED: Final = "chatstore.write_batch"


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
    if not events:
        return WriteResult()
    arguments = _arguments(events)
    async with engine.connect() as connection:
        rows = await _call(connection, arguments)
    return _result(events, rows)


async def _call(connection: AsyncConnection, arguments: list[Any]) -> list[asyncpg.Record]:
    """Run the function on the pooled connection's asyncpg driver, in autocommit.

    SQLAlchemy never begins a transaction on this connection (it runs nothing
    on it), so it sends no BEGIN or ROLLBACK either.
    """
    driver = await _driver(connection)
    if driver.is_closed():  # closed by the server while it sat in the pool
        await connection.invalidate()
        driver = await _driver(connection)
    try:
        statement = await _prepared(connection, driver)
        return await statement.fetch(*arguments)
    except BaseException as error:
        if connection_spoilt(error, driver):
            # As SQLAlchemy does for its own statements (and, for a read-only
            # answer, contracts.history.failover): never pool it again.
            with contextlib.suppress(Exception):
                await connection.invalidate(error)
        raise


async def _driver(connection: AsyncConnection) -> asyncpg.Connection:
    raw = await connection.get_raw_connection()
    return cast(asyncpg.Connection, raw.driver_connection)


async def _prepared(
    connection: AsyncConnection, driver: asyncpg.Connection
) -> asyncpg.prepared_stmt.PreparedStatement[asyncpg.Record]:
    """_WRITE_BATCH prepared on ``driver``, once per connection.

    With asyncpg's statement cache on, ``prepare`` makes a named statement
    that lives as long as the connection: each later batch is one round
    trip. With it off (``CHATSTORE_DATABASE_POOL_MODE=transaction``) it makes
    an unnamed one, which asyncpg parses again in the round trip that runs
    it, so no statement outlives the call on a pooler's server connection;
    keeping the object still spares the round trip that asks for its types.
    """
    cached = connection.info.get(_PREPARED)
    if cached is not None and cached[0] is driver:
        return cast("asyncpg.prepared_stmt.PreparedStatement[asyncpg.Record]", cached[1])
    statement = await driver.prepare(_WRITE_BATCH)
    connection.info[_PREPARED] = (driver, statement)
    return statement


def _arguments(events: Sequence[AnyEvent]) -> list[Any]:
    """The function's arguments: one array per column, an element per event.

    An archive has no message id, role, content or metadata; its time is its
    ``archived_at``. The metadata go as one JSON array (one dumps call per
    batch), which the function turns back into a value per event.
    """
    conversation_ids: list[UUID] = []
    user_ids: list[str] = []
    message_ids: list[UUID | None] = []
    roles: list[str | None] = []
    contents: list[str | None] = []
    metadata: list[dict[str, Any] | None] = []
    ats: list[datetime] = []
    for event in events:
        conversation_ids.append(event.data.conversation_id)
        user_ids.append(event.data.user_id)
        if isinstance(event, MessageCreated):
            message_ids.append(event.data.message_id)
            roles.append(event.data.role)
            contents.append(event.data.content)
            metadata.append(event.data.metadata)
            ats.append(event.data.created_at)
        else:
            message_ids.append(None)
            roles.append(None)
            contents.append(None)
            metadata.append(None)
            ats.append(event.data.archived_at)
    return [
        conversation_ids,
        user_ids,
        message_ids,
        roles,
        contents,
        json.dumps(metadata, ensure_ascii=False, separators=(",", ":")),
        ats,
    ]


def _result(events: Sequence[AnyEvent], rows: Sequence[asyncpg.Record]) -> WriteResult:
    """The function's outcomes (positions counted from 1) as a :class:`WriteResult`."""
    if len(rows) != len(events):
        raise RuntimeError(
            f"chatstore_write_batch returned {len(rows)} outcomes for {len(events)} events"
        )
    result = WriteResult()
    for row in rows:
        position = row[0] - 1
        outcome = row[1]
        if outcome == "inserted":
            result.inserted += 1
        elif outcome == "duplicate":
            result.duplicates += 1
            result.settled.add(position)
        elif outcome == "archived":
            result.archived += 1
        else:
            result.rejections[position] = _rejection(outcome, events[position])
    return result


def _rejection(outcome: str, event: AnyEvent) -> Rejection:
    if outcome == "unknown_user":
        return Rejection(Reason.UNKNOWN_USER, f"user {event.data.user_id[:255]!r} does not exist")
    if outcome == "ownership_mismatch":
        return Rejection(
            Reason.OWNERSHIP_MISMATCH,
            f"conversation {event.data.conversation_id} belongs to another user",
        )
    if outcome == "conflict" and isinstance(event, MessageCreated):
        return Rejection(
            Reason.CONFLICT,
            f"message {event.data.message_id} was stored before with other "
            "content, conversation, user, role, metadata or time",
        )
    raise RuntimeError(f"chatstore_write_batch returned the outcome {outcome!r} for {event.type}")
