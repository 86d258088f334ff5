"""Schema migrations: create the database if missing, then Alembic to head."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

from contracts.history.url import connect_kwargs
from worker.unavailable import using_postgres

MAINTENANCE_DATABASE: Final = "postgres"
# The wheel carries the checkout's alembic/ as worker/migrations (pyproject's
# force-include); an editable install runs the checkout's own folder.
_INSTALLED: Final = Path(__file__).parent / "migrations"
_CHECKOUT: Final = Path(__file__).parents[1] / "alembic"


def script_location() -> Path:
    """The folder of the migrations (``env.py`` and ``versions/``)."""
    for folder in (_INSTALLED, _CHECKOUT):
        if (folder / "env.py").is_file():
            return folder
    raise FileNotFoundError(f"the migrations are in neither {_INSTALLED} nor {_CHECKOUT}")


def alembic_config(url: URL, connect_args: Mapping[str, Any] | None = None) -> Config:
    """An Alembic config for ``url`` that works from an installed package.

    ``connect_args`` (TLS above all: see worker.database.connect_args) reach
    the engine of alembic/env.py through ``config.attributes``.
    """
    config = Config()
    config.attributes["connect_args"] = dict(connect_args or {})
    config.set_main_option("script_location", str(script_location()))
    # Alembic's config is an ini parser: a literal % must be doubled.
    config.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def _asyncpg_args(url: URL, connect_args: Mapping[str, Any] | None) -> dict[str, Any]:
    """What asyncpg.connect needs for ``url``: the engine's own reading of it (a list of
    hosts and target_session_attrs included), plus ``connect_args``."""
    # SQLAlchemy's own options (prepared_statement_*) mean nothing to asyncpg.
    extra = {
        k: v for k, v in (connect_args or {}).items() if not k.startswith("prepared_statement_")
    }
    return connect_kwargs(url) | extra


async def ensure_database(url: URL, connect_args: Mapping[str, Any] | None = None) -> bool:
    """Create the database ``url`` names if it does not exist; True if it was created.

    Connecting to it first means a managed database that exists already needs
    no access to the maintenance database.
    """
    with using_postgres(url):
        return await _create_if_missing(url, connect_args)


async def _create_if_missing(url: URL, connect_args: Mapping[str, Any] | None) -> bool:
    try:
        await (await asyncpg.connect(**_asyncpg_args(url, connect_args))).close()
        return False
    except asyncpg.InvalidCatalogNameError:
        pass
    connection = await asyncpg.connect(
        **_asyncpg_args(url.set(database=MAINTENANCE_DATABASE), connect_args)
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
    config = alembic_config(url, connect_args)  # a missing folder is no database's fault
    with using_postgres(url):
        command.upgrade(config, revision)


def downgrade(url: URL, revision: str) -> None:
    """Downgrade the schema at ``url`` to ``revision`` (``base`` removes all of it)."""
    command.downgrade(alembic_config(url), revision)
