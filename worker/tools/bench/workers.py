"""``chatstore worker --processes N`` as the bench runs it: as an operator would.

One process (``--processes 1``) is a worker itself; more are a supervisor
and its N children (``worker.supervise``), which is how a host runs more
than one. The bench waits until N consumers are on the queue, reads every
worker's peak resident set (VmHWM) while it runs, and stops the command with
SIGTERM by its own pid, which drains the children.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from worker.settings import Settings
from worker.supervise.supervisor import STOP_MARGIN_S
from worker.tools.sandbox import (
    Sandbox,
    WorkerFailedError,
    consumer_count,
    peak_rss_kib,
    wait_for,
    worker_environment,
)

_STARTS = itertools.count()
"""Numbers the logs of one bench's worker commands."""


def children_of(pid: int) -> list[int]:
    """The pids of ``pid``'s children, from /proc (empty when it has none or is gone)."""
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in listed.split()]


class WorkerCommand:
    """A running ``python -m worker worker --processes N``, logging to ``log_path``."""

    def __init__(self, settings: Settings, processes: int, log_path: Path) -> None:
        self.processes = processes
        self._settings = settings
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self.peak_rss_kib: dict[int, int] = {}  # per worker pid: children restarted count apart

    def start(self) -> None:
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "worker", "worker", "--processes", str(self.processes)],
                env=worker_environment(self._settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def worker_pids(self) -> list[int]:
        """The processes that consume: the command itself, or its supervised children."""
        return [self.pid] if self.processes == 1 else children_of(self.pid)

    def check_alive(self) -> None:
        """Raise :class:`WorkerFailedError` if the command ended; record peak RSS."""
        assert self._process is not None, "not started"
        if self._process.poll() is not None:
            raise WorkerFailedError(
                f"chatstore worker --processes {self.processes} exited with "
                f"{self._process.returncode}; see {self._log_path}"
            )
        for pid in self.worker_pids():
            # VmHWM is gone with the process: keep the latest reading.
            self.peak_rss_kib[pid] = max(self.peak_rss_kib.get(pid, 0), peak_rss_kib(pid))

    def peak(self) -> int:
        """The largest peak RSS of any one worker process, in KiB."""
        return max(self.peak_rss_kib.values(), default=0)

    async def stop(self) -> None:
        """SIGTERM, then wait for exit 0 (each worker drains what it holds)."""
        if self._process is None or self._process.poll() is not None:
            return
        self.check_alive()
        self._process.send_signal(signal.SIGTERM)
        within_s = self._settings.drain_timeout_s + STOP_MARGIN_S + 10
        try:
            code = await _wait(self._process, within_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise WorkerFailedError(f"chatstore worker ignored SIGTERM for {within_s} s") from None
        if code != 0:
            raise WorkerFailedError(f"chatstore worker exited with {code}; see {self._log_path}")

    def kill(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        children = self.worker_pids() if self.processes > 1 else []
        self._process.kill()
        self._process.wait()
        # The children run in sessions of their own and drain when the
        # supervisor's pipe closes; a kill means something failed already.
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _wait(process: subprocess.Popen[bytes], within_s: float) -> int:
    return await asyncio.to_thread(process.wait, within_s)


@contextlib.asynccontextmanager
async def running(place: Sandbox, processes: int, log_dir: Path) -> AsyncIterator[WorkerCommand]:
    """``chatstore worker --processes processes`` in ``place``, all consuming when this yields."""
    log_path = log_dir / f"worker-{processes}p-{next(_STARTS)}.log"
    command = WorkerCommand(place.settings, processes, log_path)
    try:
        command.start()

        async def all_consuming() -> bool:
            command.check_alive()
            return await consumer_count(place.amqp_url) >= processes

        await wait_for(
            all_consuming, within_s=60, what=f"{processes} worker(s) to consume", every_s=0.1
        )
        yield command
        await command.stop()
    finally:
        command.kill()
