"""``chatstore bench``: its options, and the run of the chosen scenarios in order."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from worker.redact import redact
from worker.settings import Settings
from worker.tools.bench import broker, database, ingest
from worker.tools.bench.latency import run_latency
from worker.tools.bench.memory import run_memory
from worker.tools.bench.reads import run_reads
from worker.tools.bench.report import Results, document, table
from worker.tools.sandbox import BenchEnvironment, BenchSetupError, bench_environment

SCENARIOS: Final = ("raw", "naive", "worker", "latency", "reads", "rss")
EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2


def _positive_int(value: str) -> int:
    try:
        number = int(value.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be above 0, not {value}")
    return number


def _scenarios(value: str) -> list[str]:
    chosen = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {','.join(SCENARIOS)}; not {unknown}")
    return chosen


# Sizes and durations: (flag, type, default, metavar, what it sets).
_NUMBERS: Final = (
    ("--events", _positive_int, 50_000, "N", "events in the pre-filled queue of (a), (b), (c)"),
    ("--rate", _positive_float, 1000.0, "PER_S", "publish rate of the latency scenario (d)"),
    ("--latency-seconds", _positive_float, 10.0, "S", "how long (d) publishes"),
    ("--messages", _positive_int, 1_000_000, "N", "table size of (e); the goal is at 5,000,000"),
    ("--readers", _positive_int, 32, "N", "concurrent readers of (e)"),
    ("--reader-processes", _positive_int, 2, "N", "processes the readers of (e) share"),
    ("--read-seconds", _positive_float, 10.0, "S", "how long (e) reads, alone and together"),
    ("--backlog", _positive_int, 1_000_000, "N", "events waiting while (f) watches the worker"),
    ("--rss-seconds", _positive_float, 30.0, "S", "how long the worker of (f) consumes"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``chatstore bench``."""
    parser.add_argument(
        "--scenarios",
        type=_scenarios,
        default=list(SCENARIOS),
        metavar="LIST",
        help=f"comma-separated, of {','.join(SCENARIOS)} (default: all)",
    )
    for flag, kind, default, metavar, what in _NUMBERS:
        parser.add_argument(
            flag,
            type=kind,
            default=default,
            metavar=metavar,
            help=f"{what} (default: {default:,.0f})",
        )
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("chatstore-bench.json"),
        metavar="PATH",
        help="where to write the results (default: ./chatstore-bench.json)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the bench database, vhost and worker logs, and print where they are",
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the chosen scenarios; print the table, write the JSON; returns the exit code."""
    log_dir = Path(tempfile.mkdtemp(prefix="chatstore-bench-"))
    code = EXIT_FAILURE
    try:
        results, machine = asyncio.run(_run(settings, args, log_dir))
        options = {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if not callable(v) and k != "command"
        }
        args.json.write_text(json.dumps(document(results, options, machine), indent=2) + "\n")
        print(table(results))
        print(f"\nresults written to {args.json}")
        code = EXIT_OK
    except BenchSetupError as error:
        print(f"chatstore: bench: {error}", file=sys.stderr)
        code = EXIT_USAGE
    except Exception as error:
        # A driver's message may quote a URL or a password: never print either.
        first = redact((str(error).splitlines() or [""])[0], settings.secrets())
        print(f"chatstore: bench failed: {type(error).__name__}: {first}", file=sys.stderr)
    finally:
        # Worker logs are worth keeping after a failure, or when asked, if a worker ran.
        if (code != EXIT_OK or args.keep) and any(log_dir.iterdir()):
            print(f"chatstore: bench: worker logs are in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    return code


async def _run(
    settings: Settings, args: argparse.Namespace, log_dir: Path
) -> tuple[Results, dict[str, Any]]:
    results = Results()
    async with bench_environment(settings, keep=args.keep) as environment:
        machine = await _machine(environment)
        await broker.declare(environment.amqp_url, settings.delivery_limit)
        await _scenarios_in_order(environment, args, results, log_dir)
        if args.keep:
            print(f"kept: database and vhost {environment.name}", file=sys.stderr)
    return results, machine


async def _scenarios_in_order(
    environment: BenchEnvironment, args: argparse.Namespace, results: Results, log_dir: Path
) -> None:
    chosen = set(args.scenarios)
    if chosen & {"raw", "naive", "worker"}:
        bodies = ingest.bodies_for(args.events)
        if "raw" in chosen:
            results.ingest["raw"] = await ingest.run_raw(environment, bodies)
        if "naive" in chosen:
            results.ingest["naive"] = await ingest.run_naive(environment, bodies)
        if "worker" in chosen:
            for processes in (1, 2):
                results.ingest[f"worker_{processes}"] = await ingest.run_workers(
                    environment, bodies, processes, log_dir
                )
    if "latency" in chosen:
        results.latency = await run_latency(
            environment, rate=args.rate, seconds=args.latency_seconds, log_dir=log_dir
        )
    if "rss" in chosen:
        results.memory = await run_memory(
            environment, backlog=args.backlog, seconds=args.rss_seconds, log_dir=log_dir
        )
    if "reads" in chosen:
        results.reads = await run_reads(
            environment,
            messages=args.messages,
            readers=args.readers,
            processes=args.reader_processes,
            seconds=args.read_seconds,
        )


async def _machine(environment: BenchEnvironment) -> dict[str, Any]:
    postgres = await database.fetch_value(environment.dsn, "SHOW server_version")
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgresql": str(postgres).split()[0],
        "rabbitmq": await broker.server_version(environment.amqp_url),
    }
