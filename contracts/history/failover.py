"""Dropping pooled connections to a server that stopped being the one to use.

After a failover a pool may hold connections to the old primary. One that
died fails its next statement and SQLAlchemy discards the whole pool by
itself. One to a server that is alive but answers writes with "read-only"
(25006: a standby, or a primary demoted or set read-only) would be reused
forever, and with it the same server. Counting those errors as disconnects
makes SQLAlchemy drop the pool, so the next connection is chosen anew from
the URL's hosts by ``target_session_attrs``.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

# The server is going away or is not the primary: its connections are no use.
SERVER_CHANGED: Final = frozenset(
    {
        "25006",  # read_only_sql_transaction
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
    }
)


def _sqlstate(error: BaseException | None) -> str | None:
    code = getattr(error, "sqlstate", None)
    return code if isinstance(code, str) else None


def _drop_connection_to_old_server(context: ExceptionContext) -> None:
    if context.is_disconnect:
        return
    original = context.original_exception
    for link in (original, getattr(original, "__cause__", None)):
        if _sqlstate(link) in SERVER_CHANGED:
            context.is_disconnect = True
            return


def drop_connections_on_failover(engine: AsyncEngine) -> AsyncEngine:
    """Make ``engine`` discard its pool on the errors of :data:`SERVER_CHANGED`; returns it."""
    event.listen(engine.sync_engine, "handle_error", _drop_connection_to_old_server)
    return engine
