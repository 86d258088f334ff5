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

import aiormq
import asyncpg
import structlog
from sqlalchemy.engine import make_url

from worker import lifecycle, migrate
from worker.database import connect_args
from worker.logs import configure_logging
from worker.redact import redact
from worker.settings import ConfigurationError, Settings, load_settings
from worker.tools import bench
from worker.tools.demo.run import run_demo
from worker.tools.dlq import inspect as dlq_inspect
from worker.tools.dlq import replay as dlq_replay

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2

log = structlog.get_logger("chatstore.cli")


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    url, arguments = settings.sqlalchemy_url, connect_args(settings)
    created = asyncio.run(migrate.ensure_database(url, arguments))
    log.info("database.ready", database=url.database, created=created)
    migrate.upgrade(url, connect_args=arguments)
    log.info("schema.upgraded", database=url.database, revision="head")
    return EXIT_OK


def _worker(settings: Settings, _args: argparse.Namespace) -> int:
    return asyncio.run(lifecycle.run(settings))


def _dlq_inspect(settings: Settings, args: argparse.Namespace) -> int:
    summary = asyncio.run(dlq_inspect.inspect(settings.amqp_url, samples_per_reason=args.samples))
    print(dlq_inspect.render(summary, as_json=args.json))
    return EXIT_OK


def _dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    report = asyncio.run(
        dlq_replay.replay(
            settings.amqp_url,
            selection=dlq_replay.ReplayFilter(reason=args.reason, event_type=args.type),
            limit=args.limit,
            dry_run=args.dry_run,
            rate_per_s=args.rate,
            max_replays=args.max_replays,
        )
    )
    print(dlq_replay.render(report, as_json=args.json))
    return EXIT_OK


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(
        run_demo(
            settings,
            messages=args.messages,
            conversations=args.conversations,
            users=args.users,
            rate_per_s=args.rate,
        )
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _add_dlq_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = commands.add_parser("dlq", help="inspect or replay the dead-letter queue")
    dlq.set_defaults(uses_database=False)
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    inspect = actions.add_parser(
        "inspect", help="count dead letters by reason and show samples; changes nothing"
    )
    inspect.add_argument("--json", action="store_true", help="one JSON object on stdout")
    inspect.add_argument(
        "--samples", type=int, default=2, metavar="N", help="samples per reason (default 2)"
    )
    inspect.set_defaults(run=_dlq_inspect)

    replay = actions.add_parser("replay", help="move dead letters back to chat.events")
    replay.add_argument("--reason", help="only letters with this reason, e.g. unknown_user")
    replay.add_argument("--type", help="only events of this type, e.g. message.created")
    replay.add_argument("--limit", type=_positive_int, metavar="N", help="replay at most N")
    replay.add_argument("--dry-run", action="store_true", help="report, change nothing")
    replay.add_argument(
        "--rate", type=_positive_float, metavar="R", help="at most R letters per second"
    )
    replay.add_argument(
        "--max-replays",
        type=_positive_int,
        default=3,
        metavar="N",
        help="loop guard: leave letters already replayed N times (default 3)",
    )
    replay.add_argument("--json", action="store_true", help="one JSON object on stdout")
    replay.set_defaults(run=_dlq_replay)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatstore",
        description="Stores chat events from RabbitMQ in PostgreSQL.",
        epilog="Configured by CHATSTORE_* environment variables (a .env file is read too).",
    )
    # Which server an OSError (refused, reset, unreachable) is about.
    parser.set_defaults(uses_database=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "migrate", help="create the database if missing and upgrade the schema to head"
    ).set_defaults(run=_migrate)
    commands.add_parser(
        "worker", help="consume events into PostgreSQL until SIGTERM or SIGINT"
    ).set_defaults(run=_worker)
    bench_parser = commands.add_parser(
        "bench",
        help="measure ingest, latency, reads and memory against the raw limit and a naive consumer",
        description="Runs on the servers of CHATSTORE_DATABASE_URL and CHATSTORE_AMQP_URL, in a "
        "database and vhost of its own that it removes at the end (see docs/BENCHMARKS.md).",
    )
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(run=bench.run)
    _add_dlq_commands(commands)
    demo = commands.add_parser(
        "demo", help="publish a realistic stream to a running worker and summarise the result"
    )
    demo.add_argument("--messages", type=_positive_int, default=5000, metavar="N")
    demo.add_argument("--conversations", type=_positive_int, default=300, metavar="N")
    demo.add_argument("--users", type=_positive_int, default=40, metavar="N")
    demo.add_argument(
        "--rate", type=_positive_float, default=1000.0, metavar="R", help="events per second"
    )
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigurationError as error:
        print(f"chatstore: {error}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level, secrets=settings.secrets())
    run: Callable[[Settings, argparse.Namespace], int] = args.run
    try:
        return run(settings, args)
    except (OSError, asyncpg.PostgresError, aiormq.exceptions.AMQPError) as error:
        # Connection failures: one line that names the server, never a password.
        broker = isinstance(error, aiormq.exceptions.AMQPError) or (
            isinstance(error, OSError) and not args.uses_database
        )
        where = _broker(settings) if broker else _database(settings)
        reason = redact(str(error) or type(error).__name__, settings.secrets())
        print(f"chatstore: cannot use {where}: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _database(settings: Settings) -> str:
    url = settings.sqlalchemy_url
    return f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432}/{url.database}"


def _broker(settings: Settings) -> str:
    url = make_url(
        settings.amqp_url.replace("amqps://", "amqp://", 1).replace("amqp://", "x://", 1)
    )
    return f"RabbitMQ at {url.host or 'localhost'}:{url.port or 5672}/{url.database or ''}"


if __name__ == "__main__":
    raise SystemExit(main())
