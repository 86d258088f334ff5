"""Running a short command from asyncio without leaving its process behind.

``await process.communicate()`` that is cancelled or times out leaves the child
running and its transport unclosed. The transport's ``__del__`` then runs at
some later garbage collection, after its event loop has closed, and raises
"Event loop is closed" from wherever the collection happened. Under pytest on
Python 3.11 before 3.11.8 that can be inside pytest's own parse of a failing
test's source, which then dies with "AST constructor recursion depth mismatch"
(CPython gh-106905) and hides the failure it was reporting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Completed", "run"]


@dataclass(frozen=True)
class Completed:
    """A command that ran to its end."""

    returncode: int
    stdout: bytes
    stderr: bytes


async def run(
    command: Sequence[str],
    *,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    **popen: Any,
) -> Completed:
    """Run ``command`` to its end, its output captured and its stdin empty.

    Raises ``TimeoutError`` after ``timeout_s``. On that, on cancellation and on
    any other error the child is killed and reaped before the error goes on
    (a cancellation that comes during the reaping is raised after it).
    """
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=None if env is None else dict(env),
        cwd=cwd,
        **popen,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        if await _reaped(process):
            raise asyncio.CancelledError from None  # cancelled again meanwhile
        raise
    assert process.returncode is not None  # communicate() returns once the child has exited
    return Completed(process.returncode, stdout, stderr)


async def _reaped(process: asyncio.subprocess.Process) -> bool:
    """Wait until the killed ``process`` is reaped, whatever cancels the caller
    meanwhile; whether something did.

    The wait is short, since the child was killed, but it also waits for the
    child's pipes to close: a grandchild that kept them open would hold it.
    The callers run commands that exec their program (rabbitmqctl, pg_ctlcluster).
    """
    waiter = asyncio.ensure_future(process.wait())
    cancelled = False
    while not waiter.done():
        try:
            await asyncio.shield(waiter)
        except asyncio.CancelledError:
            cancelled = True
    return cancelled
