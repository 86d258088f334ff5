"""Reading chat history back: the query patterns of the design documents.

Every read is scoped by ``user_id``: another user's conversation reads as not
found, so ids cannot be probed. Pages are keyset-paginated on ``(timestamp,
id)`` (ties cannot skip or repeat rows) behind opaque cursors. A NULL
timestamp sorts as the newest: ``DESC NULLS FIRST``, the indexes' own order.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Generic, NamedTuple, TypeVar, cast
from uuid import UUID

import asyncpg
from sqlalchemy import Select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from contracts.enums import ConversationStatus
from contracts.history.cursor import Keyset, encode_cursor
from contracts.history.failover import SERVER_CHANGED, connection_spoilt
from contracts.history.queries import (
    ONE_CONVERSATION,
    compiled,
    conversations_query,
    history_query,
    position,
)

MAX_CONVERSATIONS_PAGE: Final = 200
MAX_MESSAGES_PAGE: Final = 500
_STATUSES: Final = frozenset(status.value for status in ConversationStatus)

T = TypeVar("T")


# Rows become results positionally, so the fields follow the tables' column
# order (tests/test_repository.py checks they do). Named tuples, not frozen
# dataclasses: a page of 50 rows built as frozen dataclasses cost a fifth of
# a read's client CPU (object.__setattr__ per field), as tuples almost none.
class ConversationRow(NamedTuple):
    """A row of ``conversations``."""

    id: UUID
    user_id: str
    status: str  # a ConversationStatus value
    created_at: datetime | None
    updated_at: datetime | None


class MessageRow(NamedTuple):
    """A row of ``messages``."""

    id: UUID
    conversation_id: UUID
    user_id: str
    role: str  # a MessageRole value
    content: str
    metadata: dict[str, Any] | None
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of results; ``next_cursor`` fetches the following page, None at the end."""

    items: tuple[T, ...]
    next_cursor: str | None


def _connection_lost(error: BaseException, driver: asyncpg.Connection) -> bool:
    """The connection went under the statement, rather than the statement failing."""
    if isinstance(error, asyncpg.PostgresError):
        # Class 08 is the connection's own errors (ConnectionDoesNotExistError
        # is 08003); the others, a server shutting down.
        sqlstate = error.sqlstate or ""
        return sqlstate.startswith("08") or sqlstate in SERVER_CHANGED
    if isinstance(error, TimeoutError):  # an OSError too: a slow server, not a lost one
        return False
    return isinstance(error, Exception) and (driver.is_closed() or isinstance(error, OSError))


def _check_limit(limit: int, maximum: int) -> None:
    if not 1 <= limit <= maximum:
        raise ValueError(f"limit must be between 1 and {maximum}, not {limit}")


class Repository:
    """Reads conversations and messages through an async SQLAlchemy engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        if engine.dialect.driver != "asyncpg":
            raise ValueError(
                f"Repository reads through asyncpg: build the engine with "
                f"contracts.history.reader_engine or a postgresql+asyncpg:// URL, "
                f"not {engine.dialect.name}+{engine.dialect.driver}"
            )
        # Each read is one statement, consistent on its own, run straight on
        # the driver (see _run): SQLAlchemy begins no transaction around it.
        self._engine = engine

    async def _fetch(self, query: Select[Any], params: dict[str, Any]) -> list[asyncpg.Record]:
        sql, names = compiled(query, params.get("limit"), self._engine.dialect)
        return await self._run(sql, [params[name] for name in names])

    async def _run(self, sql: str, arguments: list[Any]) -> list[asyncpg.Record]:
        """Run one compiled statement on a pooled connection's asyncpg driver.

        SQLAlchemy builds and compiles each query once (``queries.compiled``); going
        through its ``execute`` for every call cost about 40% of a read's
        client CPU, which 32 concurrent readers on two cores pay in latency, and
        a ``Connection`` around the raw one another 0.1 ms a read. The connection
        still comes from the engine's pool, which replaces one the server closed
        (:mod:`contracts.history.failover`).

        A read whose connection was lost under it (the server went away between
        checkout and answer) is run once more on a new one: it changes nothing,
        so running it twice is safe.
        """
        for attempt in (1, 2):
            pooled = await self._checkout()
            driver = cast(asyncpg.Connection, pooled.driver_connection)
            try:
                return await driver.fetch(sql, *arguments)
            except BaseException as error:
                # Judged before invalidating, which closes the connection.
                lost = _connection_lost(error, driver)
                if connection_spoilt(error, driver):
                    with contextlib.suppress(Exception):  # never pooled again
                        await greenlet_spawn(pooled.invalidate, error)
                if attempt == 2 or not lost:
                    raise
            finally:
                # Pool events and closing a connection the pool no longer keeps
                # await the driver: SQLAlchemy needs its greenlet for them.
                await greenlet_spawn(pooled.close)
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _checkout(self) -> PoolProxiedConnection:
        """A pooled connection; a failure to connect raises SQLAlchemy's ``DBAPIError``
        (``OperationalError`` and so on), as ``engine.connect()`` would."""
        try:
            return await self._engine.raw_connection()
        except self._engine.dialect.loaded_dbapi.Error as error:
            raise DBAPIError.instance(
                None,
                None,
                error,
                self._engine.dialect.loaded_dbapi.Error,
                dialect=self._engine.dialect,
            ) from error

    async def conversation(self, user_id: str, conversation_id: UUID) -> ConversationRow | None:
        """One conversation of ``user_id``; None if it is missing or another user's."""
        rows = await self._fetch(
            ONE_CONVERSATION, {"user_id": user_id, "conversation_id": conversation_id}
        )
        return ConversationRow._make(rows[0]) if rows else None

    async def conversations(
        self,
        user_id: str,
        *,
        status: ConversationStatus | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[ConversationRow]:
        """``user_id``'s conversations, most recently updated first; ``status`` filters,
        ``cursor`` (a page's ``next_cursor``) continues."""
        _check_limit(limit, MAX_CONVERSATIONS_PAGE)
        if status is not None and status not in _STATUSES:
            raise ValueError(f"status must be one of {sorted(_STATUSES)}, not {status!r}")
        shape, after = position(cursor, "conversation")
        label = None if status is None else ConversationStatus(status).value
        params = {"user_id": user_id, "status": label, "limit": limit + 1} | after
        rows = await self._fetch(conversations_query(status is not None, shape), params)
        items = tuple(map(ConversationRow._make, rows[:limit]))
        last = items[-1] if len(rows) > limit else None  # the extra row: there is more
        more = None if last is None else Keyset(last.updated_at, last.id)
        return Page(items, None if more is None else encode_cursor("conversation", more))

    async def history(
        self,
        user_id: str,
        conversation_id: UUID,
        *,
        limit: int = 20,
        before: str | None = None,
    ) -> Page[MessageRow] | None:
        """The last ``limit`` messages of a conversation, oldest first; ``before`` (a
        page's ``next_cursor``) gives the ones just older. None when the conversation
        is missing or another user's; an empty page when it has no messages."""
        _check_limit(limit, MAX_MESSAGES_PAGE)
        shape, after = position(before, "message")
        params = {"user_id": user_id, "conversation_id": conversation_id, "limit": limit + 1}
        rows = await self._fetch(history_query(shape), params | after)
        if not rows:
            return None
        found = [MessageRow._make(row) for row in rows if row[0] is not None]
        oldest = found[limit - 1] if len(found) > limit else None
        more = None if oldest is None else Keyset(oldest.created_at, oldest.id)
        page = tuple(reversed(found[:limit]))
        return Page(page, None if more is None else encode_cursor("message", more))
