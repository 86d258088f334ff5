"""The bench's helper processes (readers, the bare consumer), spoken to over their pipes.

A helper is ``python -m worker.tools.bench.<module>``: it reads one JSON line
of instructions on stdin (so no URL ever shows in a process list), answers
words on stdout as it gets ready, and prints each result as one JSON line.
Helpers run in processes of their own so that what they measure is not the
bench's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

_LINE_LIMIT = 1 << 28
"""A result line holds every latency measured: megabytes, far beyond readline's 64 KiB."""


class HelperFailedError(Exception):
    """A helper process failed; its last line of error output is in the message."""


@contextlib.asynccontextmanager
async def helpers(module: str, configs: list[dict[str, Any]]) -> AsyncIterator[list[Helper]]:
    """One started helper per config, each given its config; all killed on exit if still there."""
    started = [
        Helper(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"worker.tools.bench.{module}",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=_LINE_LIMIT,
            )
        )
        for _ in configs
    ]
    try:
        for helper, config in zip(started, configs, strict=True):
            await helper.send(json.dumps(config))
        yield started
    finally:
        for helper in started:
            await helper.kill()


class Helper:
    """One helper process and its three pipes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    async def send(self, line: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(line.encode() + b"\n")
        await self._process.stdin.drain()

    async def expect(self, word: str, within_s: float = 120) -> None:
        """Wait for the helper to print ``word`` on a line of its own."""
        assert self._process.stdout is not None
        try:
            async with asyncio.timeout(within_s):
                line = (await self._process.stdout.readline()).decode().strip()
        except TimeoutError:
            line = f"no {word!r} within {within_s:g} s"
        if line != word:
            raise HelperFailedError(await self._error(line))

    async def result(self, within_s: float) -> dict[str, Any]:
        """The helper's next JSON line (within ``within_s``)."""
        assert self._process.stdout is not None
        try:
            async with asyncio.timeout(within_s):
                output = await self._process.stdout.readline()
        except TimeoutError:
            raise HelperFailedError(await self._error(f"no result within {within_s:g} s")) from None
        if not output.startswith(b"{"):
            raise HelperFailedError(await self._error(output.decode()))
        result: dict[str, Any] = json.loads(output)
        return result

    async def kill(self) -> None:
        if self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    async def _error(self, line: str) -> str:
        assert self._process.stderr is not None
        await self.kill()
        stderr = (await self._process.stderr.read()).decode(errors="replace").strip().splitlines()
        return f"helper process failed: {(stderr or [line or 'no output'])[-1]}"


def read_instructions() -> dict[str, Any]:
    """In a helper: its one line of instructions."""
    instructions: dict[str, Any] = json.loads(sys.stdin.readline())
    return instructions


def say(word: str) -> None:
    """In a helper: tell the bench how far it got."""
    print(word, flush=True)
