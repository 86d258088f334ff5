"""An engine for reading history: asyncpg, and safe behind a transaction pooler when asked.

Behind PgBouncer in transaction mode (or Neon's pooled endpoint) consecutive
transactions of one client may run on different server connections, so no
prepared statement may outlive its transaction: both statement caches go
(asyncpg's and SQLAlchemy's on top of it), and every statement is prepared
unnamed, so no name can collide with another client's and none is left
behind. asyncpg re-parses an unnamed statement in the round trip that runs it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts.history.failover import drop_connections_on_failover
from contracts.history.tls import split_tls
from contracts.history.url import DatabaseURLError, asyncpg_url


def _unnamed_statement() -> str:
    return ""


def transaction_pooling_args() -> dict[str, Any]:
    """asyncpg connect arguments that keep no prepared statement past a transaction."""
    return {
        "statement_cache_size": 0,  # asyncpg's own cache of named statements
        "prepared_statement_cache_size": 0,  # SQLAlchemy's, on top of it
        "prepared_statement_name_func": _unnamed_statement,
    }


def reader_engine(
    url: str | URL, *, transaction_pooling: bool = False, **options: Any
) -> AsyncEngine:
    """An :class:`AsyncEngine` on asyncpg for :class:`~contracts.history.Repository`.

    ``url`` may be a plain ``postgresql://`` URL; the driver is set here. It
    may list several servers, libpq's way, with the one to read from chosen
    by ``target_session_attrs``
    (``postgresql://app@db1:5432,db2:5432/chatstore?target_session_attrs=read-write``,
    or ``prefer-standby`` to read from a standby while there is one).
    libpq's TLS parameters (``sslmode``, ``sslrootcert``, ``sslcert``,
    ``sslkey``) mean what they mean to libpq.
    ``transaction_pooling=True`` for PgBouncer in transaction mode. Other
    keyword arguments (``pool_size``, ``connect_args``, ...) go to
    :func:`sqlalchemy.ext.asyncio.create_async_engine`.

    A pooled connection the server has closed is replaced when it is checked
    out (see :mod:`contracts.history.failover`), and a read whose connection
    is lost under it runs once more on a new one: after a failover the first
    read reconnects, to the server the URL's hosts now offer, instead of
    failing on the old one. That check is local; ``pool_pre_ping=True`` adds
    SQLAlchemy's round trip to the server on every checkout, which also
    finds a connection whose server vanished without closing it, at about
    twice the latency of a read.
    """
    try:
        parsed = asyncpg_url(url)
    except DatabaseURLError as error:
        raise ValueError(f"the history repository's database URL {error}") from None
    connect_args = dict(options.pop("connect_args", {}))
    parsed, tls = split_tls(parsed)  # asyncpg takes libpq's sslmode=... as ``ssl``
    if tls is not None:
        connect_args.setdefault("ssl", tls)
    if transaction_pooling:
        connect_args |= transaction_pooling_args()
    engine = create_async_engine(parsed, connect_args=connect_args, **options)
    return drop_connections_on_failover(engine)
