"""Real ``chatstore worker`` processes, as an operator runs them, for scenarios (c), (d), (f)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from worker.tools.bench import broker
from worker.tools.sandbox import BenchEnvironment


class WorkerFailedError(Exception):
    """A worker process ended on its own, or did not stop cleanly on SIGTERM."""


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set so far (VmHWM), in KiB; 0 if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class WorkerProcess:
    """One ``python -m worker worker`` on the bench's database and vhost."""

    def __init__(self, environment: BenchEnvironment, log_path: Path) -> None:
        self._environment = environment
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self.peak_rss_kib = 0

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "worker", "worker"],
                env=self._environment.worker_environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def check_alive(self) -> None:
        assert self._process is not None
        if self._process.poll() is not None:
            raise WorkerFailedError(
                f"worker {self.pid} exited with {self._process.returncode}; see {self.log_path}"
            )
        # VmHWM is gone with the process: keep the latest reading.
        self.peak_rss_kib = max(self.peak_rss_kib, peak_rss_kib(self.pid))

    async def stop(self, within_s: float) -> None:
        """SIGTERM, then wait for exit 0 (the worker drains what it holds)."""
        if self._process is None or self._process.poll() is not None:
            return
        self.check_alive()
        self._process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self._process.wait, within_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            raise WorkerFailedError(f"worker {self.pid} ignored SIGTERM for {within_s} s") from None
        if code != 0:
            raise WorkerFailedError(f"worker {self.pid} exited with {code}; see {self.log_path}")

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()


@contextlib.asynccontextmanager
async def running_workers(
    environment: BenchEnvironment, count: int, log_dir: Path
) -> AsyncIterator[list[WorkerProcess]]:
    """``count`` worker processes, all consuming by the time this yields.

    They are stopped with SIGTERM on exit (killed if that fails). Waiting for
    them to consume matters twice: a worker signalled while it still starts
    dies of the signal instead of draining, and a measurement of two workers
    should not run while only one of them works.
    """
    workers = [WorkerProcess(environment, log_dir / f"worker-{n}.log") for n in range(count)]
    try:
        for worker in workers:
            worker.start()

        async def all_consuming() -> bool:
            return await broker.consumers(environment.amqp_url) >= count

        await wait_until(all_consuming, workers, within_s=60, what=f"{count} worker(s) to consume")
        yield workers
        drain = environment.settings.drain_timeout_s + 10
        await asyncio.gather(*(worker.stop(drain) for worker in workers))
    finally:
        for worker in workers:
            worker.kill()


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    workers: list[WorkerProcess],
    *,
    within_s: float,
    what: str,
) -> None:
    """Poll ``check`` every 0.1 s until it holds; a worker that dies fails it at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await check():
        for worker in workers:
            worker.check_alive()
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {within_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)
    for worker in workers:
        worker.check_alive()
