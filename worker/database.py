"""The SQLAlchemy engine the worker writes through: one place for connection settings.

Three things are decided here rather than in the URL:

- **TLS** (``CHATSTORE_DATABASE_SSLMODE`` and friends, libpq's meaning), read
  the same way as a reader's URL parameters (:mod:`contracts.history.tls`).
- **Transaction pooling** (``CHATSTORE_DATABASE_POOL_MODE=transaction``, for
  PgBouncer or Neon's pooled endpoint): nothing may outlive a transaction on
  the server. Prepared statements are the one thing asyncpg and SQLAlchemy
  keep there; :func:`contracts.history.transaction_pooling_args` turns them
  into unnamed ones, the same for the worker as for readers. The worker keeps
  no other session state: no SET, no advisory locks, no temporary tables, no
  LISTEN.
- **Failover**: connections to a server that went away or answers read-only
  are dropped, so the next attempt finds the primary among the URL's hosts.
"""

from __future__ import annotations

import ssl
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts.history import transaction_pooling_args
from contracts.history.failover import drop_connections_on_failover
from contracts.history.tls import ssl_argument as libpq_ssl_argument
from worker.settings import Settings
from worker.unavailable import ServiceUnavailableError, postgres_at, short


def ssl_argument(settings: Settings) -> ssl.SSLContext | str:
    """asyncpg's ``ssl`` argument for the configured sslmode and certificates."""
    try:
        return libpq_ssl_argument(
            settings.database_sslmode,
            settings.database_sslrootcert,
            settings.database_sslcert,
            settings.database_sslkey,
        )
    except (ssl.SSLError, OSError) as error:
        raise ServiceUnavailableError(
            postgres_at(settings.sqlalchemy_url),
            f"cannot load its TLS files ({short(error)}); check CHATSTORE_DATABASE_SSLROOTCERT, "
            "CHATSTORE_DATABASE_SSLCERT and CHATSTORE_DATABASE_SSLKEY",
        ) from error


def connect_args(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for every asyncpg connection to the configured database."""
    args: dict[str, Any] = {
        "command_timeout": settings.database_timeout_s,
        "ssl": ssl_argument(settings),
    }
    if settings.database_pool_mode == "transaction":
        args |= transaction_pooling_args()
    return args


def create_engine(settings: Settings) -> AsyncEngine:
    """An engine for ``settings.database_url`` on asyncpg.

    One batch is written at a time; the second connection serves the halves
    of a refused batch without waiting for the first to return to the pool.

    A URL may list several servers (see :mod:`contracts.history.url`). After
    a failover the pool is dropped on the first error from the old server, a
    dead connection or a read-only answer alike
    (:func:`~contracts.history.failover.drop_connections_on_failover`), so the
    batch's retry connects anew and ``target_session_attrs`` picks the new
    primary. A connection the server has closed while pooled is replaced at
    checkout, a local check. There is no pre-ping: the retry that follows one
    failed attempt costs less than a round trip before every batch.
    """
    engine = create_async_engine(
        settings.sqlalchemy_url,
        pool_size=2,
        max_overflow=0,
        connect_args=connect_args(settings),
    )
    return drop_connections_on_failover(engine)
