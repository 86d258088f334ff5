"""What a supervisor and its children agree on.

A child is an ordinary ``chatstore worker`` process (``python -m worker
worker``) started with two variables in its environment: its index, which
marks it as supervised (no HTTP server of its own, the index in every log
line), and ``PROMETHEUS_MULTIPROC_DIR``, the supervisor's private metrics
directory. That one must be in the environment when the process starts,
before anything imports prometheus-client, which reads it once at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

import structlog

INDEX_VARIABLE: Final = "_CHATSTORE_SUPERVISED_CHILD"
"""The child's index (0..N-1); set only by the supervisor, so not a CHATSTORE_ setting."""
METRICS_VARIABLE: Final = "PROMETHEUS_MULTIPROC_DIR"
"""Where prometheus-client's multiprocess mode keeps each process's values."""

log = structlog.get_logger("chatstore.worker")


def environment(base: Mapping[str, str], index: int, metrics_dir: Path) -> dict[str, str]:
    """The environment of child ``index``: ``base``, marked and pointed at ``metrics_dir``."""
    return {**base, INDEX_VARIABLE: str(index), METRICS_VARIABLE: str(metrics_dir)}


def supervised_index(env: Mapping[str, str] = os.environ) -> int | None:
    """This process's index if a supervisor started it, else None."""
    value = env.get(INDEX_VARIABLE)
    if value is None:
        return None
    if not value.isdigit() or not env.get(METRICS_VARIABLE):
        raise RuntimeError(
            f"{INDEX_VARIABLE}={value!r} without a metrics directory: "
            "only chatstore worker --processes sets it"
        )
    return int(value)


@contextlib.contextmanager
def stop_when_supervisor_exits(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` when standard input, the supervisor's pipe, reaches its end.

    The supervisor holds the write end and never writes; the end comes when
    it exits, even by SIGKILL. The child then drains as on SIGTERM instead of
    consuming on as an orphan nobody will stop.
    """
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            if not stop.is_set():
                log.warning("worker.supervisor_gone", note="draining as on SIGTERM")
            stop.set()

    loop.add_reader(fd, readable)
    try:
        yield
    finally:
        loop.remove_reader(fd)
