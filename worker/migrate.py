"""Schema migrations: create the database if missing, then Alembic to head."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg
from alembic.config import Config
from sqlalchemy.engine import URL

from alembic import command

# The checkout's alembic/ (an editable install; the wheel follows in the next commit).
MIGRATIONS = Path(__file__).parents[1] / "alembic"
MAINTENANCE_DATABASE = "postgres"


def alembic_config(url: URL, connect_args: Mapping[str, Any] | None = None) -> Config:
    """An Alembic config for ``url`` that works from an installed package.

    ``connect_args`` (TLS above all: see worker.database.connect_args) reach
    the engine of worker/migrations/env.py through ``config.attributes``.
    """
    config = Config()
    config.attributes["connect_args"] = dict(connect_args or {})
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's config is an ini parser: a literal % must be doubled.
    config.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def _asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _asyncpg_args(connect_args: Mapping[str, Any] | None) -> dict[str, Any]:
    # SQLAlchemy's own options (prepared_statement_*) mean nothing to asyncpg.
    return {
        k: v for k, v in (connect_args or {}).items() if not k.startswith("prepared_statement_")
    }


async def ensure_database(url: URL, connect_args: Mapping[str, Any] | None = None) -> bool:
    """Create the database ``url`` names if it does not exist; True if it was created.

    Connecting to it first means a managed database that exists already needs
    no access to the maintenance database.
    """
    try:
        await (await asyncpg.connect(_asyncpg_dsn(url), **_asyncpg_args(connect_args))).close()
        return False
    except asyncpg.InvalidCatalogNameError:
        pass
    connection = await asyncpg.connect(
        _asyncpg_dsn(url.set(database=MAINTENANCE_DATABASE)), **_asyncpg_args(connect_args)
    )
    try:
        quoted = '"' + str(url.database).replace('"', '""') + '"'
        try:
            await connection.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:  # another migrator won the race
            return False
        return True
    finally:
        await connection.close()


def upgrade(
    url: URL, revision: str = "head", connect_args: Mapping[str, Any] | None = None
) -> None:
    """Upgrade the schema at ``url`` (blocking; call it outside an event loop)."""
    command.upgrade(alembic_config(url, connect_args), revision)


def downgrade(url: URL, revision: str) -> None:
    """Downgrade the schema at ``url`` to ``revision`` (``base`` removes all of it)."""
    command.downgrade(alembic_config(url), revision)
