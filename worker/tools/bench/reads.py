"""Scenario (e): read latency at a realistic table size, with concurrent readers.

The readers run in processes of their own (``worker.tools.bench.reader``), spread
evenly: one Python process driving 32 readers would measure its own event
loop's queue, not the database. Every reader loops without pause, so with 32
readers on 2 cores the latencies include waiting for a core; the report
gives the throughput beside them.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass

from worker.tools.bench import database, fill
from worker.tools.bench.stats import Percentiles, summarise
from worker.tools.sandbox import Sandbox


class ReaderFailedError(Exception):
    """A reader process failed; its error output is in the message."""


@dataclass(frozen=True, slots=True)
class ReadResult:
    messages: int
    readers: int
    processes: int
    seconds: float
    queries_per_s: float
    conversations: Percentiles
    history: Percentiles
    conversations_one_reader: Percentiles
    history_one_reader: Percentiles


async def run_reads(
    environment: Sandbox, *, messages: int, readers: int, processes: int, seconds: float
) -> ReadResult:
    """One reader first (what a query costs), then ``readers`` at once (what they wait)."""
    await database.stop_commit_clock(environment.dsn)
    await fill.fill(environment.dsn, messages)
    alone = await _read(environment, readers=1, processes=1, seconds=seconds)
    together = await _read(environment, readers=readers, processes=processes, seconds=seconds)
    listing, history = together
    return ReadResult(
        messages,
        readers,
        max(1, min(processes, readers)),
        seconds,
        round((len(listing) + len(history)) / seconds),
        summarise(listing),
        summarise(history),
        summarise(alone[0]),
        summarise(alone[1]),
    )


async def _read(
    environment: Sandbox, *, readers: int, processes: int, seconds: float
) -> tuple[list[float], list[float]]:
    """Latencies of the conversation lists and of the histories read."""
    processes = max(1, min(processes, readers))
    shares = [readers // processes + (n < readers % processes) for n in range(processes)]
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker.tools.bench.reader",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in shares
    ]
    try:
        url = environment.database_url.render_as_string(hide_password=False)
        for n, (child, share) in enumerate(zip(children, shares, strict=True)):
            config = {"url": url, "readers": share, "seconds": seconds, "seed": n}
            await _send(child, json.dumps(config))
        for child in children:
            await _expect(child, "ready")
        for child in children:
            await _send(child, "go")
        outputs = [await _result(child) for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    listing = [s for output in outputs for s in output["conversations"]]
    history = [s for output in outputs for s in output["history"]]
    return listing, history


async def _send(child: asyncio.subprocess.Process, line: str) -> None:
    assert child.stdin is not None
    child.stdin.write(line.encode() + b"\n")
    await child.stdin.drain()


async def _expect(child: asyncio.subprocess.Process, word: str) -> None:
    assert child.stdout is not None
    line = (await child.stdout.readline()).decode().strip()
    if line != word:
        raise ReaderFailedError(await _error_of(child, line))


async def _result(child: asyncio.subprocess.Process) -> dict[str, list[float]]:
    assert child.stdout is not None
    output = await child.stdout.read()  # one line, but far longer than readline's limit
    if await child.wait() != 0 or not output:
        raise ReaderFailedError(await _error_of(child, output.decode()))
    result: dict[str, list[float]] = json.loads(output)
    return result


async def _error_of(child: asyncio.subprocess.Process, line: str) -> str:
    assert child.stderr is not None
    if child.returncode is None:
        child.kill()
    stderr = (await child.stderr.read()).decode(errors="replace").strip().splitlines()
    return f"reader process failed: {(stderr or [line or 'no output'])[-1]}"
