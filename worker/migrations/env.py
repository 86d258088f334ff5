"""Alembic environment: runs the migrations on an asyncpg connection.

The URL comes from the Alembic config (set by ``worker.migrate``) or, when the
``alembic`` command is used directly, from ``CHATSTORE_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from worker.schema import metadata
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


async def run_async_migrations(url: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit("chatstore migrations run online only")
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        url = load_settings().sqlalchemy_url.render_as_string(hide_password=False)
    asyncio.run(run_async_migrations(url))


main()
