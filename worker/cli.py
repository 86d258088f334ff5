"""The ``chatstore`` console script: parses arguments, reports errors, sets exit codes.

Everything it runs lives in other modules; this one only wires them to the
command line (imports run one way: cli -> worker -> contracts).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Final

import asyncpg
import structlog

from worker import app, migrate
from worker.logs import configure_logging
from worker.settings import ConfigurationError, Settings, load_settings

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2

log = structlog.get_logger("chatstore.cli")


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    url = settings.sqlalchemy_url
    created = asyncio.run(migrate.ensure_database(url))
    log.info("database.ready", database=url.database, created=created)
    migrate.upgrade(url)
    log.info("schema.upgraded", database=url.database, revision="head")
    return EXIT_OK


def _worker(settings: Settings, _args: argparse.Namespace) -> int:
    return asyncio.run(app.run(settings))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatstore",
        description="Stores chat events from RabbitMQ in PostgreSQL.",
        epilog="Configured by CHATSTORE_* environment variables (a .env file is read too).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "migrate", help="create the database if missing and upgrade the schema to head"
    ).set_defaults(run=_migrate)
    commands.add_parser(
        "worker", help="consume events into PostgreSQL until SIGTERM or SIGINT"
    ).set_defaults(run=_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigurationError as error:
        print(f"chatstore: {error}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level)
    run: Callable[[Settings, argparse.Namespace], int] = args.run
    try:
        return run(settings, args)
    except (OSError, asyncpg.PostgresError) as error:
        # Connection failures: one line that names the server, never a password.
        print(f"chatstore: {_describe_connection_error(error, settings)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _describe_connection_error(error: BaseException, settings: Settings) -> str:
    url = settings.sqlalchemy_url
    where = f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432}/{url.database}"
    reason = str(error) or type(error).__name__
    if url.password:
        reason = reason.replace(url.password, "***")
    return f"cannot use {where}: {reason}"


if __name__ == "__main__":
    raise SystemExit(main())
