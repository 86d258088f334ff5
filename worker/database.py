"""The SQLAlchemy engine the worker writes through: one place for connection settings."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from worker.settings import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    """An engine for ``settings.database_url`` on asyncpg.

    One batch is written at a time; the second connection serves the halves
    of a refused batch without waiting for the first to return to the pool.
    """
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=2,
        max_overflow=0,
        connect_args={"command_timeout": settings.database_timeout_s},
    )
