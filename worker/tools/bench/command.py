"""``chatstore bench``: the run of the chosen scenarios in order (options in ``options``)."""

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
from typing import Any

from worker import exits
from worker.redact import redact
from worker.settings import Settings
from worker.tools.bench import broker, database, ingest
from worker.tools.bench.latency import run_latency
from worker.tools.bench.memory import run_memory
from worker.tools.bench.reads import run_reads
from worker.tools.bench.report import Results, document, table
from worker.tools.sandbox import Sandbox, SandboxError, declare_topology, sandbox
from worker.unavailable import ServiceUnavailableError, describe


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the chosen scenarios; print the table, write the JSON; returns the exit code."""
    log_dir = Path(tempfile.mkdtemp(prefix="chatstore-bench-"))
    code = exits.FAILURE
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
        code = exits.OK
    except ServiceUnavailableError:
        raise  # it names the server: cli.main prints it
    except SandboxError as error:
        print(f"chatstore: bench: {error}", file=sys.stderr)
        code = exits.USAGE
    except Exception as error:
        # A driver's message may quote a URL or a password: never print either.
        print(
            f"chatstore: bench failed: {redact(describe(error), settings.secrets())}",
            file=sys.stderr,
        )
    finally:
        # Worker logs are worth keeping after a failure, or when asked, if a worker ran.
        if (code != exits.OK or args.keep) and any(log_dir.iterdir()):
            print(f"chatstore: bench: worker logs are in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    return code


async def _run(
    settings: Settings, args: argparse.Namespace, log_dir: Path
) -> tuple[Results, dict[str, Any]]:
    results = Results()
    async with sandbox(settings, prefix="chatstore_bench", keep=args.keep) as environment:
        machine = await _machine(environment)
        await declare_topology(environment.amqp_url, settings.delivery_limit)
        await _scenarios_in_order(environment, args, results, log_dir)
        if args.keep:
            print(f"kept: database and vhost {environment.name}", file=sys.stderr)
    return results, machine


async def _scenarios_in_order(
    environment: Sandbox, args: argparse.Namespace, results: Results, log_dir: Path
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


async def _machine(environment: Sandbox) -> dict[str, Any]:
    postgres = await database.fetch_value(environment.dsn, "SHOW server_version")
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgresql": str(postgres).split()[0],
        "rabbitmq": await broker.server_version(environment.amqp_url),
    }
