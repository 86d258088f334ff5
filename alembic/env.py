"""Alembic environment: runs the migrations on an asyncpg connection.

The URL comes from the Alembic config (set by ``worker.migrate``) or, when the
``alembic`` command is used directly, from ``CHATSTORE_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from contracts.models import metadata
from worker.database import connect_args as settings_connect_args
from worker.settings import load_settings


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    # `users` belongs to the application that owns accounts; chatstore only
    # creates a minimal one where none exists, so its shape is not ours to check.
    return not (type_ == "table" and name == "users")


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_object=include_object,
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations(url: str, connect_args: dict[str, Any]) -> None:
    engine = create_async_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit("chatstore migrations run online only")
    url = context.config.get_main_option("sqlalchemy.url")
    connect_args: dict[str, Any] = context.config.attributes.get("connect_args", {})
    if not url:  # the `alembic` command: the settings give both
        settings = load_settings()
        url = settings.sqlalchemy_url.render_as_string(hide_password=False)
        connect_args = settings_connect_args(settings)
    asyncio.run(run_async_migrations(url, connect_args))


main()
