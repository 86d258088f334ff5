"""Schema migrations: create the database if missing, then Alembic to head."""

from __future__ import annotations

from importlib.resources import files

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

MIGRATIONS = files("worker") / "migrations"
MAINTENANCE_DATABASE = "postgres"


def alembic_config(url: URL) -> Config:
    """An Alembic config for ``url`` that works from an installed package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's config is an ini parser: a literal % must be doubled.
    config.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def _asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def ensure_database(url: URL) -> bool:
    """Create the database ``url`` names if it does not exist; True if it was created.

    Connecting to it first means a managed database that exists already needs
    no access to the maintenance database.
    """
    try:
        await (await asyncpg.connect(_asyncpg_dsn(url))).close()
        return False
    except asyncpg.InvalidCatalogNameError:
        pass
    connection = await asyncpg.connect(_asyncpg_dsn(url.set(database=MAINTENANCE_DATABASE)))
    try:
        quoted = '"' + str(url.database).replace('"', '""') + '"'
        try:
            await connection.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:  # another migrator won the race
            return False
        return True
    finally:
        await connection.close()


def upgrade(url: URL, revision: str = "head") -> None:
    """Upgrade the schema at ``url`` (blocking; call it outside an event loop)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: URL, revision: str) -> None:
    """Downgrade the schema at ``url`` to ``revision`` (``base`` removes all of it)."""
    command.downgrade(alembic_config(url), revision)
