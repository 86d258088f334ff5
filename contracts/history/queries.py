"""The statements of the repository, each built once per shape and compiled for asyncpg."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, Final, Literal

from sqlalchemy import ColumnElement, Integer, Select, String, and_, bindparam, or_, select, true
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.engine import Dialect

from contracts.history.cursor import CursorKind, decode_cursor
from contracts.models import LABEL_MAX_CHARS, conversations, messages

After = Literal["start", "null", "time"]  # from the top, after a NULL time, after a time


def position(cursor: str | None, kind: CursorKind) -> tuple[After, dict[str, Any]]:
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


ONE_CONVERSATION: Final = select(conversations).where(
    conversations.c.id == bindparam("conversation_id"),
    conversations.c.user_id == bindparam("user_id"),
)


# Each query is built once per shape and reused with new parameters: building
# the lateral join anew cost about 1 ms a call, more than running it.
@functools.cache
def conversations_query(with_status: bool, shape: After) -> Select[Any]:
    c = conversations.c
    query = select(conversations).where(
        c.user_id == bindparam("user_id"), _after(c.updated_at, c.id, shape)
    )
    if with_status:
        # Bound as the column's varchar, not its Enum: the same SQL as the
        # plain string column, and the raw driver gets the value as text.
        query = query.where(c.status == bindparam("status", type_=String(LABEL_MAX_CHARS)))
    return query.order_by(c.updated_at.desc().nulls_first(), c.id.desc()).limit(_LIMIT)


@functools.cache
def history_query(shape: After) -> Select[Any]:
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
def compiled(
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
