"""An engine for reading history: asyncpg, and safe behind a transaction pooler when asked.

Behind PgBouncer in transaction mode (or Neon's pooled endpoint) consecutive
transactions of one client may run on different server connections, so no
prepared statement may outlive its transaction: both statement caches go
(asyncpg's and SQLAlchemy's on top of it), and every statement is prepared
unnamed, so no name can collide with another client's and none is left
behind. asyncpg re-parses an unnamed statement in the round trip that runs it.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

_ASYNCPG: Final = "postgresql+asyncpg"
_PLAIN: Final = frozenset({"postgresql", "postgres", _ASYNCPG})


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

    ``url`` may be a plain ``postgresql://`` URL; the driver is set here.
    ``transaction_pooling=True`` for PgBouncer in transaction mode. Other
    keyword arguments (``pool_size``, ``connect_args``, ...) go to
    :func:`sqlalchemy.ext.asyncio.create_async_engine`.
    """
    parsed = make_url(url)
    if parsed.drivername not in _PLAIN:
        raise ValueError(
            f"the history repository reads PostgreSQL through asyncpg; "
            f"give a postgresql:// URL, not {parsed.drivername}://"
        )
    connect_args = dict(options.pop("connect_args", {}))
    if transaction_pooling:
        connect_args |= transaction_pooling_args()
    return create_async_engine(
        parsed.set(drivername=_ASYNCPG), connect_args=connect_args, **options
    )
