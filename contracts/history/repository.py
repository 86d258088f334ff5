"""Reading chat history back: the query patterns of the design documents.

Every read is scoped by ``user_id``: another user's conversation reads as not
found, so ids cannot be probed. Pages are keyset-paginated on ``(timestamp,
id)`` (ties cannot skip or repeat rows) behind opaque cursors. A NULL
timestamp sorts as the newest: ``DESC NULLS FIRST``, the indexes' own order.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Generic, Literal, NamedTuple, TypeVar, cast
from uuid import UUID

import asyncpg
from sqlalchemy import ColumnElement, Integer, Select, and_, bindparam, or_, select, true
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.models import conversations, messages

MAX_CONVERSATIONS_PAGE: Final = 200
MAX_MESSAGES_PAGE: Final = 500
STATUSES: Final = frozenset({"active", "archived"})

T = TypeVar("T")
CursorKind = Literal["conversation", "message"]


class InvalidCursorError(ValueError):
    """A cursor that this repository did not make, or made for another query."""


@dataclass(frozen=True, slots=True)
class Keyset:
    """The position of a row in ``timestamp DESC NULLS FIRST, id DESC`` order."""

    at: datetime | None
    id: UUID


def encode_cursor(kind: CursorKind, key: Keyset) -> str:
    # The kind is inside, so a message cursor handed to the conversation list
    # is refused instead of silently paging somewhere odd.
    payload = [kind, None if key.at is None else key.at.isoformat(), str(key.id)]
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, kind: CursorKind) -> Keyset:
    try:
        found, at, id_ = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        key = Keyset(None if at is None else datetime.fromisoformat(at), UUID(id_))
        if key.at is not None and key.at.tzinfo is None:
            raise ValueError("a naive timestamp")
    except (binascii.Error, AttributeError, TypeError, ValueError):
        raise InvalidCursorError("malformed cursor") from None
    if found != kind:
        raise InvalidCursorError(f"not a {kind} cursor")
    return key


# Rows become results positionally, so the fields follow the tables' column
# order (tests/test_repository.py checks they do). Named tuples, not frozen
# dataclasses: a page of 50 rows built as frozen dataclasses cost a fifth of
# a read's client CPU (object.__setattr__ per field), as tuples almost none.
class Conversation(NamedTuple):
    """A row of ``conversations``."""

    id: UUID
    user_id: str
    status: str
    created_at: datetime | None
    updated_at: datetime | None


class Message(NamedTuple):
    """A row of ``messages``."""

    id: UUID
    conversation_id: UUID
    user_id: str
    role: str
    content: str
    metadata: dict[str, Any] | None
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of results; ``next_cursor`` fetches the following page, None at the end."""

    items: tuple[T, ...]
    next_cursor: str | None


def _check_limit(limit: int, maximum: int) -> None:
    if not 1 <= limit <= maximum:
        raise ValueError(f"limit must be between 1 and {maximum}, not {limit}")


After = Literal["start", "null", "time"]  # from the top, after a NULL time, after a time


def _position(cursor: str | None, kind: CursorKind) -> tuple[After, dict[str, Any]]:
    """The query shape and parameters that continue after ``cursor``."""
    if cursor is None:
        return "start", {}
    key = decode_cursor(cursor, kind)
    return ("null" if key.at is None else "time"), {"after_at": key.at, "after_id": key.id}


def _after(column: ColumnElement[datetime | None], id_column: Any, shape: After) -> Any:
    """Rows after the cursor in the order ``column DESC NULLS FIRST, id DESC``."""
    at = bindparam("after_at", type_=TIMESTAMP(timezone=True))
    after_id = bindparam("after_id", type_=PG_UUID(as_uuid=True))
    if shape == "start":
        return true()
    if shape == "null":
        # Within the NULL group, smaller ids; then every row that has a time.
        return or_(and_(column.is_(None), id_column < after_id), column.is_not(None))
    # ``column <= at`` is a plain range condition an index can use; the OR
    # then drops the rows at that instant that came before the cursor.
    return and_(column <= at, or_(column < at, id_column < after_id))


# The page size is written into the SQL: with ``LIMIT $n`` the generic plan
# (which a prepared statement switches to after five runs) walks the whole
# (updated_at DESC) index filtering on user_id, 15x slower at 10,000
# conversations and worse as they grow. A few page sizes, a few statements.
_LIMIT: Final = bindparam("limit", type_=Integer, literal_execute=True)


_ONE_CONVERSATION: Final = select(conversations).where(
    conversations.c.id == bindparam("conversation_id"),
    conversations.c.user_id == bindparam("user_id"),
)


# Each query is built once per shape and reused with new parameters: building
# the lateral join anew cost about 1 ms a call, more than running it.
@functools.cache
def _conversations_query(with_status: bool, shape: After) -> Select[Any]:
    c = conversations.c
    query = select(conversations).where(
        c.user_id == bindparam("user_id"), _after(c.updated_at, c.id, shape)
    )
    if with_status:
        query = query.where(c.status == bindparam("status"))
    return query.order_by(c.updated_at.desc().nulls_first(), c.id.desc()).limit(_LIMIT)


@functools.cache
def _history_query(shape: After) -> Select[Any]:
    m = messages.c
    page = (
        select(messages)
        .where(
            m.conversation_id == conversations.c.id,
            # Redundant while the worker enforces ownership; it keeps another
            # writer's stray row out of this user's history all the same.
            m.user_id == bindparam("user_id"),
            _after(m.created_at, m.id, shape),
        )
        .order_by(m.created_at.desc().nulls_first(), m.id.desc())
        .limit(_LIMIT)
        .lateral("page")
    )
    # The outer join keeps one row for a conversation without messages; no
    # row at all means "not found", all in one round trip.
    return (
        select(*page.c)
        .select_from(conversations.outerjoin(page, true()))
        .where(
            conversations.c.id == bindparam("conversation_id"),
            conversations.c.user_id == bindparam("user_id"),
        )
        .order_by(page.c.created_at.desc().nulls_first(), page.c.id.desc())
    )


@functools.cache
def _compiled(
    query: Select[Any], limit: int | None, dialect: Dialect
) -> tuple[str, tuple[str, ...]]:
    """``query`` as asyncpg runs it: ``$n`` placeholders, the page size written in,
    and the names of the parameters in placeholder order."""
    values: dict[str, Any] = dict.fromkeys(query.compile().binds)
    if limit is not None:
        values["limit"] = limit
    compiled = query.params(values).compile(
        dialect=dialect, compile_kwargs={"render_postcompile": True}
    )
    return str(compiled), tuple(compiled.positiontup or ())


class Repository:
    """Reads conversations and messages through an async SQLAlchemy engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        # Each read is one statement, consistent on its own: autocommit spares
        # the BEGIN and ROLLBACK round trips SQLAlchemy would wrap it in.
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def _fetch(self, query: Select[Any], params: dict[str, Any]) -> list[asyncpg.Record]:
        sql, names = _compiled(query, params.get("limit"), self._engine.dialect)
        return await self._run(sql, [params[name] for name in names])

    async def _run(self, sql: str, arguments: list[Any]) -> list[asyncpg.Record]:
        """Run one compiled statement on a pooled connection's asyncpg driver.

        SQLAlchemy builds and compiles each query once (``_compiled``); going
        through its ``execute`` for every call cost about 40% of a read's
        client CPU, which 32 concurrent readers on two cores pay in latency.
        The connection still comes from the engine's pool, in autocommit.
        """
        async with self._engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver = cast(asyncpg.Connection, raw.driver_connection)
            return await driver.fetch(sql, *arguments)

    async def conversation(self, user_id: str, conversation_id: UUID) -> Conversation | None:
        """One conversation of ``user_id``; None if it is missing or another user's."""
        rows = await self._fetch(
            _ONE_CONVERSATION, {"user_id": user_id, "conversation_id": conversation_id}
        )
        return Conversation._make(rows[0]) if rows else None

    async def conversations(
        self,
        user_id: str,
        *,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Conversation]:
        """``user_id``'s conversations, most recently updated first; ``status`` filters,
        ``cursor`` (a page's ``next_cursor``) continues."""
        _check_limit(limit, MAX_CONVERSATIONS_PAGE)
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}, not {status!r}")
        shape, position = _position(cursor, "conversation")
        params = {"user_id": user_id, "status": status, "limit": limit + 1} | position
        rows = await self._fetch(_conversations_query(status is not None, shape), params)
        items = tuple(map(Conversation._make, rows[:limit]))
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
    ) -> Page[Message] | None:
        """The last ``limit`` messages of a conversation, oldest first; ``before`` (a
        page's ``next_cursor``) gives the ones just older. None when the conversation
        is missing or another user's; an empty page when it has no messages."""
        _check_limit(limit, MAX_MESSAGES_PAGE)
        shape, position = _position(before, "message")
        params = {"user_id": user_id, "conversation_id": conversation_id, "limit": limit + 1}
        rows = await self._fetch(_history_query(shape), params | position)
        if not rows:
            return None
        found = [Message._make(row) for row in rows if row[0] is not None]
        oldest = found[limit - 1] if len(found) > limit else None
        more = None if oldest is None else Keyset(oldest.created_at, oldest.id)
        page = tuple(reversed(found[:limit]))
        return Page(page, None if more is None else encode_cursor("message", more))
