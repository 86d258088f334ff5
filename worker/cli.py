"""The ``chatstore`` console script: parses arguments, reports errors, sets exit codes.

Everything it runs lives in other modules; this one only wires them to the
command line (imports run one way: cli -> worker -> contracts). A tool
(``worker.tools``) is imported only when its command runs; parsing the
command line reads the bench's option table (``worker.tools.bench.options``)
and nothing else of any tool.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import aiormq
import asyncpg
import sqlalchemy.exc
import structlog

from worker import exits
from worker.arguments import duration, past_instant, positive_float, positive_int
from worker.logs import configure_logging
from worker.redact import redact
from worker.settings import ConfigurationError, Settings, load_settings
from worker.tools.bench import options as bench_options
from worker.unavailable import ServiceUnavailableError, describe

log = structlog.get_logger("chatstore.cli")
T = TypeVar("T")

# Failures of a connection that the code where it happened did not name (a
# server dying in the middle of a command): still one line. Only connection
# failures: an error in our own SQL or file handling keeps its traceback.
_UNNAMED_FAILURES = (
    ConnectionError,
    TimeoutError,
    socket.gaierror,  # a host name that does not resolve
    ssl.SSLError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
)


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from worker import migrate
    from worker.database import connect_args

    url, arguments = settings.sqlalchemy_url, connect_args(settings)
    created = asyncio.run(migrate.ensure_database(url, arguments))
    log.info("database.ready", database=url.database, created=created)
    migrate.upgrade(url, connect_args=arguments)
    log.info("schema.upgraded", database=url.database, revision="head")
    return exits.OK


# More processes than this is a typo, not a host: one per core is the useful most.
_MAX_PROCESSES = 64


def _processes(value: str) -> int:
    number = positive_int(value)
    if number > _MAX_PROCESSES:
        raise argparse.ArgumentTypeError(f"must be at most {_MAX_PROCESSES}, not {value}")
    return number


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from worker.supervise.child import supervised_index

    # Checked here rather than by argparse, for the one-line error of every
    # other bad setting instead of a usage banner.
    try:
        processes = _processes(args.processes)
    except argparse.ArgumentTypeError as error:
        print(f"chatstore: worker --processes: {error}", file=sys.stderr)
        return exits.USAGE
    child = supervised_index()
    if processes > 1 and child is None:
        from worker.supervise.supervisor import supervise

        return asyncio.run(supervise(settings, processes))
    from worker import lifecycle, tracing

    # Each worker process (each child of a supervisor too) sets up its own
    # tracer provider; an exporter that is not installed is bad configuration.
    try:
        tracing.configure(links_per_span=settings.batch_max_size)
    except ConfigurationError as error:
        print(f"chatstore: {error}", file=sys.stderr)
        return exits.USAGE
    return asyncio.run(lifecycle.run(settings, child=child))


def _dlq_inspect(settings: Settings, args: argparse.Namespace) -> int:
    from worker.tools.dlq import inspect as dlq_inspect

    summary = asyncio.run(dlq_inspect.inspect(settings.amqp_url, samples_per_reason=args.samples))
    print(dlq_inspect.render(summary, as_json=args.json))
    return exits.OK


def _dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    from worker.tools.dlq import replay as dlq_replay

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
    return exits.OK


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from worker.tools.demo.run import run_demo

    return asyncio.run(
        run_demo(
            settings,
            messages=args.messages,
            conversations=args.conversations,
            users=args.users,
            rate_per_s=args.rate,
        )
    )


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    from worker.tools.bench.command import run

    return run(settings, args)


def _one_line_argument(
    command: str, option: str, parse: Callable[[str], T], value: str
) -> T | None:
    """``parse(value)``, or None after one line on stderr (the caller exits 2)."""
    try:
        return parse(value)
    except argparse.ArgumentTypeError as error:
        print(f"chatstore: {command} {option}: {error}", file=sys.stderr)
        return None


def _archive(settings: Settings, args: argparse.Namespace) -> int:
    from worker.tools.retention import archive

    idle_for = _one_line_argument("archive", "--idle-for", duration, args.idle_for)
    if idle_for is None:
        return exits.USAGE
    report = asyncio.run(archive.run(settings, idle_for=idle_for, dry_run=args.dry_run))
    print(archive.render(report, as_json=args.json))
    return exits.OK if report.complete else exits.FAILURE


def _purge(settings: Settings, args: argparse.Namespace) -> int:
    from worker.tools.retention import purge
    from worker.tools.retention.batches import Bounds

    cutoff = _one_line_argument("purge", "--archived-before", past_instant, args.archived_before)
    if cutoff is None:
        return exits.USAGE
    try:
        maintenance = settings.for_maintenance()
    except ConfigurationError as error:
        print(f"chatstore: {error}", file=sys.stderr)
        return exits.USAGE
    bounds = Bounds(args.batch_size, args.batch_messages, args.batch_timeout, args.lock_timeout)
    report = asyncio.run(purge.run(maintenance, cutoff=cutoff, bounds=bounds, dry_run=args.dry_run))
    print(purge.render(report, as_json=args.json))
    return exits.FAILURE if report.interrupted else exits.OK


def _add_retention_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    archive = commands.add_parser(
        "archive",
        help="publish conversation.archived for every active conversation idle for a while",
        description="Finds every active conversation whose latest message is older than "
        "--idle-for (or that has none) and publishes conversation.archived for it through "
        "chat.events, with confirms, for the workers to store. Needs CHATSTORE_DATABASE_URL "
        "(read only) and CHATSTORE_AMQP_URL (a user that may publish to chat.events). "
        "SIGINT or SIGTERM stops it after the events in hand; run it again to go on.",
    )
    archive.add_argument(
        "--idle-for",
        required=True,
        metavar="DURATION",
        help="a whole number and d, h, m or s: 90d, 12h, 30m, 45s",
    )
    archive.add_argument("--dry-run", action="store_true", help="count and list, publish nothing")
    archive.add_argument("--json", action="store_true", help="the report as one JSON object")
    archive.set_defaults(run=_archive)

    purge = commands.add_parser(
        "purge",
        help="delete archived conversations and their messages, in batches",
        description="Deletes every archived conversation whose archive and last message "
        "are both older than --archived-before, with its messages, in batches of whole "
        "conversations, each its own transaction. Runs as the maintenance role: "
        "CHATSTORE_MAINTENANCE_DATABASE_URL. Never touches an active conversation. "
        "SIGINT or SIGTERM stops it after the batch in hand commits; run it again to go on.",
    )
    purge.add_argument(
        "--archived-before",
        required=True,
        metavar="DATE",
        help="an ISO date or date and time, UTC unless it has an offset: 2026-09-01, "
        "2026-09-01T12:00:00+02:00; not later than now",
    )
    purge.add_argument(
        "--batch-size",
        type=positive_int,
        default=500,
        metavar="N",
        help="at most N conversations per batch (default 500)",
    )
    purge.add_argument(
        "--batch-messages",
        type=positive_int,
        default=20_000,
        metavar="N",
        help="at most N messages per batch, unless one conversation holds more (default 20,000)",
    )
    purge.add_argument(
        "--batch-timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="statement_timeout of a batch, in seconds; one that runs out is tried again "
        "at half the size (default 10)",
    )
    purge.add_argument(
        "--lock-timeout",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="lock_timeout of a batch, in seconds; one that runs out is tried again (default 2)",
    )
    purge.add_argument(
        "--dry-run", action="store_true", help="count what would be deleted, delete nothing"
    )
    purge.add_argument("--json", action="store_true", help="the report as one JSON object")
    purge.set_defaults(run=_purge)


def _add_dlq_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = commands.add_parser("dlq", help="inspect or replay the dead-letter queue")
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
    replay.add_argument("--limit", type=positive_int, metavar="N", help="replay at most N")
    replay.add_argument("--dry-run", action="store_true", help="report, change nothing")
    replay.add_argument(
        "--rate", type=positive_float, metavar="R", help="at most R letters per second"
    )
    replay.add_argument(
        "--max-replays",
        type=positive_int,
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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "migrate", help="create the database if missing and upgrade the schema to head"
    ).set_defaults(run=_migrate)
    worker = commands.add_parser(
        "worker", help="consume events into PostgreSQL until SIGTERM or SIGINT"
    )
    worker.add_argument(
        "--processes",
        default="1",
        metavar="N",
        help="run N worker processes under a supervisor that serves one HTTP port for all "
        f"and restarts any that dies (default 1: no supervisor; at most {_MAX_PROCESSES})",
    )
    worker.set_defaults(run=_worker)
    bench_parser = commands.add_parser(
        "bench",
        help="measure ingest, latency, reads and memory against the raw limit and a naive consumer",
        description="Runs on the servers of CHATSTORE_DATABASE_URL and CHATSTORE_AMQP_URL, in a "
        "database and vhost of its own that it removes at the end (see docs/BENCHMARKS.md).",
    )
    bench_options.add_arguments(bench_parser)
    bench_parser.set_defaults(run=_bench)
    _add_dlq_commands(commands)
    _add_retention_commands(commands)
    demo = commands.add_parser(
        "demo", help="publish a realistic stream to a running worker and summarise the result"
    )
    demo.add_argument("--messages", type=positive_int, default=5000, metavar="N")
    demo.add_argument("--conversations", type=positive_int, default=300, metavar="N")
    demo.add_argument("--users", type=positive_int, default=40, metavar="N")
    demo.add_argument(
        "--rate", type=positive_float, default=1000.0, metavar="R", help="events per second"
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
        return exits.USAGE
    configure_logging(settings.log_level, secrets=settings.secrets())
    run: Callable[[Settings, argparse.Namespace], int] = args.run
    try:
        return run(settings, args)
    except ServiceUnavailableError as error:
        # Named where it happened; a driver's reason may still quote a password.
        print(f"chatstore: {redact(str(error), settings.secrets())}", file=sys.stderr)
        return error.exit_code
    except _UNNAMED_FAILURES as error:
        # A server failing midway where no code named it: one line all the same,
        # without guessing which server it was.
        print(f"chatstore: {redact(describe(error), settings.secrets())}", file=sys.stderr)
        return exits.FAILURE
    except KeyboardInterrupt:
        return exits.FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
