"""Dropping pooled connections to a server that stopped being the one to use.

After a failover a pool may hold connections to the old primary. One that
died fails its next statement and SQLAlchemy discards the whole pool by
itself. One to a server that is alive but answers writes with "read-only"
(25006: a standby, or a primary demoted or set read-only) would be reused
forever, and with it the same server. Counting those errors as disconnects
makes SQLAlchemy drop the pool, so the next connection is chosen anew from
the URL's hosts by ``target_session_attrs``.

A connection the server closed while it sat in the pool (a restart, a
failover, an idle timeout) is known closed to asyncpg without asking the
server: the pool replaces it on checkout. Only it: each of the others is
checked the same way at its own checkout, so a server that closes idle
connections one by one does not empty the pool each time. That is what
``pool_pre_ping`` would find, without its round trip on every checkout,
which doubled the latency of a read. Both are for engines on asyncpg.
"""

from __future__ import annotations

from typing import Any, Final

import asyncpg
from sqlalchemy import event, exc
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

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


def connection_spoilt(error: BaseException, driver: asyncpg.Connection) -> bool:
    """Whether ``driver``, a pooled connection's asyncpg connection, is no use after ``error``.

    A PostgreSQL error on the data leaves it clean: the statement's own
    transaction is rolled back by the server. Anything else (a connection
    lost, a timeout or a cancellation in the middle of a call) leaves it in a
    state nobody knows, and a server that is going away or answers read-only
    will give the next statement the same answer.
    """
    if driver.is_closed() or not isinstance(error, asyncpg.PostgresError):
        return True
    sqlstate = error.sqlstate or ""
    return sqlstate in SERVER_CHANGED or sqlstate.startswith("08")


def _replace_closed_connection(
    dbapi_connection: Any, _entry: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    if dbapi_connection.driver_connection.is_closed():
        raise exc.DisconnectionError("the server closed this pooled connection")  # reconnected


def drop_connections_on_failover(engine: AsyncEngine) -> AsyncEngine:
    """Make ``engine`` (on asyncpg) discard its pool on the errors of
    :data:`SERVER_CHANGED`, and replace a connection the server has closed when it is
    checked out; returns it."""
    event.listen(engine.sync_engine, "handle_error", _drop_connection_to_old_server)
    event.listen(engine.sync_engine, "checkout", _replace_closed_connection)
    return engine
