"""The supervisor of ``chatstore worker --processes N``: N workers on one host, one HTTP port.

- **Children** are subprocesses of the same interpreter (``python -m worker
  worker``), not forks, so none inherits this process's event loop or
  connections. Each starts in a session of its own: a Ctrl-C on the terminal
  reaches the supervisor only, which forwards it, so no child gets it twice.
- **One port** (``CHATSTORE_HTTP_HOST``/``_PORT``) serves ``/metrics`` (the
  children's merged files, see ``worker.supervise.children``), ``/readyz``
  (200 only while all N children are alive and ready) and ``/healthz`` (200
  while this loop answers). It is opened before any child starts, so a port
  in use stops the command with the usual one line and exit 2.
- **Restarts**: a child that dies while nobody asked it to stop is started
  again after a capped exponential backoff, which starts over once a child
  has run for ``HEALTHY_AFTER_S``; each restart is logged
  (``supervisor.child_restarted``) and counted (``chatstore_child_restarts``).
  A child that exits 2 (configuration) is not restarted: every child would
  fail the same way, so the supervisor stops the others and exits 2.
- **Stopping**: SIGTERM or SIGINT is forwarded to every child as SIGTERM
  (again at each further signal; a child ignores repeats), restarts stop,
  and each child drains as a single worker does. Exit 0 only if every child
  drained (exit 0); a child still running ``drain_timeout_s`` plus
  ``STOP_MARGIN_S`` after the signal is killed, and the exit is 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import mark_process_dead

from worker import exits
from worker.health import HealthServer
from worker.ingest.backoff import Backoff
from worker.settings import Settings
from worker.supervise import child
from worker.supervise.children import ChildrenView
from worker.unavailable import ServiceUnavailableError, short

log = structlog.get_logger("chatstore.supervisor")

RESTART_BACKOFF: Final = Backoff(initial_s=0.5, max_s=30.0)
"""Delay before restarting a child that died: from half a second up to 30 s."""
HEALTHY_AFTER_S: Final = 30.0
"""A child that ran this long before dying is restarted with the first delay again."""
STOP_MARGIN_S: Final = 5.0
"""Beyond the children's drain_timeout_s: their own timeout, exit and the reaping."""
_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
CHILD_COMMAND: Final = (sys.executable, "-m", "worker", "worker")
"""A child: this interpreter running ``chatstore worker``, marked by its environment."""


async def supervise(settings: Settings, processes: int) -> int:
    """Run ``processes`` workers until SIGTERM or SIGINT; returns the exit code."""
    try:
        metrics_dir = tempfile.TemporaryDirectory(prefix="chatstore-metrics-")
    except OSError as error:  # a read-only root without a writable /tmp, say
        raise ServiceUnavailableError(
            "the supervisor's metrics directory",
            f"cannot create it ({short(error)}); set TMPDIR to a "
            "writable directory, or mount one at /tmp",
            exit_code=exits.USAGE,
        ) from error
    with metrics_dir as directory:
        return await Supervisor(settings, processes, Path(directory)).run()


class Supervisor:
    """Runs ``processes`` children of ``command``; the keyword arguments are for tests."""

    def __init__(
        self,
        settings: Settings,
        processes: int,
        metrics_dir: Path,
        *,
        command: Sequence[str] = CHILD_COMMAND,
        backoff: Backoff = RESTART_BACKOFF,
        healthy_after_s: float = HEALTHY_AFTER_S,
    ) -> None:
        self._settings = settings
        self._metrics_dir = metrics_dir
        self._command = tuple(command)
        self._backoff = backoff
        self._healthy_after_s = healthy_after_s
        self._processes: list[asyncio.subprocess.Process | None] = [None] * processes
        self._stopping = asyncio.Event()
        self._misconfigured = False
        self._undrained: list[int] = []  # indexes of children that did not drain
        self._restarts: Counter[str] = Counter()
        self._view = ChildrenView(metrics_dir, processes, self._live_pids, self._restarts)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        registry = CollectorRegistry()
        registry.register(self._view)
        health = HealthServer(registry, self._view)
        if self._settings.http_port:
            port = await health.start(self._settings.http_host, self._settings.http_port)
            log.info("http.listening", port=port, paths=["/metrics", "/healthz", "/readyz"])
        for signum in _SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)
        log.info("supervisor.starting", processes=len(self._processes))
        keepers = [
            asyncio.create_task(self._keep(index), name=f"supervisor-child-{index}")
            for index in range(len(self._processes))
        ]
        for keeper in keepers:
            keeper.add_done_callback(self._on_keeper_done)
        try:
            await self._stopping.wait()
            return await self._wait_for_children(keepers)
        finally:
            for signum in _SIGNALS:
                loop.remove_signal_handler(signum)
            await health.close()

    async def _wait_for_children(self, keepers: list[asyncio.Task[None]]) -> int:
        within_s = self._settings.drain_timeout_s + STOP_MARGIN_S
        _, pending = await asyncio.wait(keepers, timeout=within_s)
        if pending:
            stragglers = self._live_pids()
            log.error("supervisor.drain_timeout", within_s=within_s, killed=stragglers)
            for process in self._processes:
                if process is not None and process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.wait(pending)
            return exits.FAILURE
        if self._misconfigured:
            return exits.USAGE
        if self._undrained or any(keeper.exception() for keeper in keepers):
            log.error("supervisor.stopped", undrained=self._undrained)
            return exits.FAILURE
        log.info("supervisor.stopped", processes=len(self._processes))
        return exits.OK

    async def _keep(self, index: int) -> None:
        """Run child ``index`` until stopping, restarting it when it dies."""
        loop = asyncio.get_running_loop()
        attempt = 0
        process = await self._start(index)
        while True:
            started_at = loop.time()
            code = await process.wait()
            # Its live gauges (readiness) go; its counters stay in the sums.
            mark_process_dead(process.pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]
            if process.stdin is not None:
                process.stdin.close()
            if self._stopping.is_set():
                # Killed by the SIGTERM we sent before it set its handlers: it
                # had not consumed yet, so it held nothing to drain.
                if code not in (exits.OK, -signal.SIGTERM):
                    self._undrained.append(index)
                log.info("supervisor.child_stopped", child=index, pid=process.pid, **_how(code))
                return
            if code == exits.USAGE:
                log.error(
                    "supervisor.child_misconfigured",
                    child=index,
                    pid=process.pid,
                    exit_code=code,
                    note="every child would fail the same way; stopping the others",
                )
                self._misconfigured = True
                self.stop()
                return
            if loop.time() - started_at >= self._healthy_after_s:
                attempt = 0
            delay = self._backoff.delay(attempt)
            attempt += 1
            log.warning(
                "supervisor.child_died",
                child=index,
                pid=process.pid,
                restart_in_s=round(delay, 2),
                **_how(code),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            if self._stopping.is_set():
                return  # it holds nothing: its deliveries went back to the queue when it died
            previous = process.pid
            process = await self._start(index)
            self._restarts["signal" if code < 0 else "exit"] += 1
            log.warning(
                "supervisor.child_restarted",
                child=index,
                pid=process.pid,
                previous_pid=previous,
                delay_s=round(delay, 2),
                **_how(code),
            )

    async def _start(self, index: int) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            *self._command,
            env=child.environment(os.environ, index, self._metrics_dir),
            # A pipe the child watches: its end tells the child we are gone.
            stdin=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self._processes[index] = process
        log.info("supervisor.child_started", child=index, pid=process.pid)
        if self._stopping.is_set():  # the signal came while it started
            _terminate(process)
        return process

    def _on_signal(self, signum: int) -> None:
        log.info(
            "supervisor.stopping" if not self._stopping.is_set() else "supervisor.signal_again",
            signal=signal.Signals(signum).name,
            children=self._live_pids(),
        )
        self.stop()

    def stop(self) -> None:
        """Stop restarting, and send every child SIGTERM (what SIGTERM and SIGINT do)."""
        self._stopping.set()
        for process in self._processes:
            if process is not None:
                _terminate(process)

    def _on_keeper_done(self, keeper: asyncio.Task[None]) -> None:
        if not keeper.cancelled() and keeper.exception() is not None:
            log.error("supervisor.failed", error=repr(keeper.exception()))
            self.stop()

    def _live_pids(self) -> list[int]:
        return [p.pid for p in self._processes if p is not None and p.returncode is None]


def _terminate(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)


def _how(code: int) -> dict[str, object]:
    """How a child ended, for a log line: its exit code, or the signal that killed it."""
    if code < 0:
        try:
            return {"signal": signal.Signals(-code).name}
        except ValueError:  # a real-time signal has no name in the enum
            return {"signal": f"signal {-code}"}
    return {"exit_code": code}
