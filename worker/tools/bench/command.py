"""``chatstore bench``: the run of the chosen scenarios in order (options in ``options``,
the scenarios in ``scenarios``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker import exits
from worker.redact import redact
from worker.settings import Settings
from worker.tools.bench import broker, database, scenarios
from worker.tools.bench.context import Run
from worker.tools.bench.goals import Section
from worker.tools.bench.pgbouncer import PgBouncerError
from worker.tools.bench.report import document, table
from worker.tools.sandbox import Sandbox, SandboxError, declare_topology, sandbox
from worker.unavailable import ServiceUnavailableError, describe


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the chosen scenarios; print the tables, write the JSON; returns the exit code."""
    log_dir = Path(tempfile.mkdtemp(prefix="chatstore-bench-"))
    code = exits.FAILURE
    started = time.monotonic()
    try:
        sections, machine = asyncio.run(_run(settings, args, log_dir))
        machine["wall_seconds"] = round(time.monotonic() - started, 1)
        options = {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if not callable(v) and k != "command"
        }
        goals = scenarios.goals(sections)
        args.json.write_text(
            json.dumps(document(sections, goals, options, machine), indent=2) + "\n"
        )
        print(table(sections, goals))
        print(f"\nbench took {machine['wall_seconds']:g} s; results written to {args.json}")
        code = exits.OK
    except ServiceUnavailableError:
        raise  # it names the server: cli.main prints it
    except (SandboxError, PgBouncerError) as error:
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
) -> tuple[dict[str, Section], dict[str, Any]]:
    async with sandbox(settings, prefix="chatstore_bench", keep=args.keep) as environment:
        machine = await _machine(environment)
        await declare_topology(environment.amqp_url, settings.delivery_limit)
        bench = Run(environment, args, log_dir)
        await scenarios.run_chosen(bench)
        if args.keep:
            print(f"kept: database and vhost {environment.name}", file=sys.stderr)
    machine["step_seconds"] = bench.step_seconds
    return bench.sections, machine


async def _machine(environment: Sandbox) -> dict[str, Any]:
    postgres = await database.fetch_value(environment.dsn, "SHOW server_version")
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "python": platform.python_version(),
        "postgresql": str(postgres).split()[0],
        "rabbitmq": await broker.server_version(environment.amqp_url),
    }
