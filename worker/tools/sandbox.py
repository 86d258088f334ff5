"""A throwaway place to run real workers: a database and vhost of its own, worker
processes, and waiting on state. The bench and the test suite both use it.

A worker already running on the same servers is left alone: a sandbox's
objects live in a database and a vhost named ``<prefix>_<random>``, and its
workers serve no HTTP port. Making a vhost needs ``rabbitmqctl`` on this
machine (run as root or as the ``rabbitmq`` user, who can read the Erlang
cookie).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg
from sqlalchemy.engine import URL

from contracts.brokers import parse_nodes
from worker import migrate, topology
from worker.settings import ENV_PREFIX, Settings
from worker.tools import subprocesses
from worker.unavailable import connect_rabbitmq, using_postgres

POLL_S: Final = 0.05
"""How often :func:`wait_for` looks again."""


class SandboxError(Exception):
    """The sandbox cannot be made; the message says what is missing."""


class WorkerFailedError(Exception):
    """A worker process ended on its own, or did not stop cleanly on SIGTERM."""


# --- the servers -----------------------------------------------------------


async def rabbitmqctl(*args: str) -> None:
    """Run ``rabbitmqctl`` on this machine's broker; :class:`SandboxError` if it fails."""
    if shutil.which("rabbitmqctl") is None:
        raise SandboxError("rabbitmqctl is not on PATH: a sandbox makes its vhost with it")
    done = await subprocesses.run(["rabbitmqctl", "--quiet", *args])
    if done.returncode != 0:
        first = (done.stderr.decode(errors="replace").strip().splitlines() or ["failed"])[0]
        raise SandboxError(f"rabbitmqctl {' '.join(args)}: {first}")


def with_vhost(amqp_url: str, vhost: str) -> tuple[str, str]:
    """The URL (every node's, for a cluster's list) on ``vhost`` instead of its own,
    and the URL's user name."""
    urls = [urlsplit(node.url) for node in parse_nodes(amqp_url)]
    user = unquote(urls[0].username or "guest")
    path = "/" + quote(vhost, safe="")
    return ",".join(urlunsplit(parts._replace(path=path)) for parts in urls), user


async def execute(dsn: str, sql: str, *args: object) -> None:
    """One statement on a connection of its own (CREATE DATABASE cannot run in a pool's)."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(sql, *args)
    finally:
        await connection.close()


@dataclass(frozen=True)
class Sandbox:
    """Where a sandbox is, and the settings a worker needs to work there."""

    name: str
    database_url: URL  # postgresql+asyncpg, the sandbox's database
    amqp_url: str  # the sandbox's vhost
    settings: Settings  # the operator's settings, pointed at the two above

    @property
    def dsn(self) -> str:
        """The sandbox's database for asyncpg."""
        return self.database_url.set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def sandbox(
    settings: Settings, *, prefix: str = "chatstore_sandbox", keep: bool = False
) -> AsyncIterator[Sandbox]:
    """Make a database (migrated to head) and a vhost on ``settings``' servers;
    remove both on exit. ``keep`` leaves them, for looking at plans and rows."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    database_url = settings.sqlalchemy_url.set(database=name)
    maintenance = database_url.set(drivername="postgresql", database=migrate.MAINTENANCE_DATABASE)
    amqp_url, _ = with_vhost(settings.amqp_url, name)
    sandbox_settings = settings.model_copy(
        update={
            "database_url": database_url.set(drivername="postgresql").render_as_string(
                hide_password=False
            ),
            "amqp_url": amqp_url,
            "http_port": 0,  # a worker on the usual port may be running here
        }
    )
    async with throwaway_vhost(settings.amqp_url, name, keep=keep):
        await migrate.ensure_database(database_url)
        try:
            # Alembic runs its own event loop; keep it off this one.
            await asyncio.to_thread(migrate.upgrade, database_url)
            yield Sandbox(name, database_url, amqp_url, sandbox_settings)
        finally:
            if not keep:
                with using_postgres(maintenance):
                    await execute(
                        maintenance.render_as_string(hide_password=False),
                        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                    )


@contextlib.asynccontextmanager
async def throwaway_vhost(
    amqp_url: str,
    name: str,
    *,
    keep: bool = False,
    run: Callable[..., Awaitable[None]] = rabbitmqctl,
) -> AsyncIterator[str]:
    """A vhost ``name`` on ``amqp_url``'s broker, open to the URL's user; yields the URL
    on it, and deletes the vhost on exit unless ``keep``. ``run`` runs rabbitmqctl
    with the given arguments (the tests pass one that reaches a container's)."""
    url, user = with_vhost(amqp_url, name)
    await run("add_vhost", name)
    try:
        await run("set_permissions", "-p", name, user, ".*", ".*", ".*")
        yield url
    finally:
        if not keep:
            await run("delete_vhost", name)


async def declare_topology(amqp_url: str, delivery_limit: int = 20) -> None:
    """Declare what a worker declares, so events published before it starts wait."""
    async with await connect_rabbitmq(amqp_url) as connection:
        await topology.declare(await connection.channel(), delivery_limit=delivery_limit)


# The probes raise what aio-pika raises (ChannelNotFoundEntity while no
# worker has declared the queue): the callers wait on exactly that.
async def queue_depth(amqp_url: str, queue: str = topology.QUEUE) -> int:
    """Messages ready in ``queue``, not counting those delivered and unacknowledged."""
    async with await connect_rabbitmq(amqp_url) as connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def consumer_count(amqp_url: str, queue: str = topology.QUEUE) -> int:
    """How many consumers ``queue`` has: a started worker counts once it consumes."""
    async with await connect_rabbitmq(amqp_url) as connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.consumer_count or 0)


# --- worker processes ------------------------------------------------------


def worker_environment(settings: Settings) -> dict[str, str]:
    """The process environment that gives a ``chatstore`` process these settings."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for name, value in settings.model_dump().items():
        environment[f"{ENV_PREFIX}{name.upper()}"] = str(value)
    return environment


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
    """A real ``chatstore worker`` process (``python -m worker``), for signals and crashes.

    Each start logs to a file of its own beside ``log_path``
    (``worker.0.log``, ``worker.1.log``, ...).
    """

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self._environment = worker_environment(settings)
        self._log_path = log_path
        self._logs: list[Path] = []  # one per start
        self.process: subprocess.Popen[bytes] | None = None
        self.peak_rss_kib = 0

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self) -> Self:
        path = self._log_path.with_suffix(f".{len(self._logs)}{self._log_path.suffix}")
        self._logs.append(path)
        with path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker", "worker"],
                env=self._environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def send(self, signum: signal.Signals) -> None:
        assert self.process is not None, "not started"
        self.process.send_signal(signum)

    async def wait(self, within_s: float = 30) -> int:
        """The exit code, once the process has ended."""
        assert self.process is not None, "not started"
        return await asyncio.to_thread(self.process.wait, within_s)

    def check_alive(self) -> None:
        """Raise :class:`WorkerFailedError` if the process ended; record its peak RSS."""
        assert self.process is not None, "not started"
        if self.process.poll() is not None:
            raise WorkerFailedError(
                f"worker {self.pid} exited with {self.process.returncode}; see {self._logs[-1]}"
            )
        # VmHWM is gone with the process: keep the latest reading.
        self.peak_rss_kib = max(self.peak_rss_kib, peak_rss_kib(self.pid))

    async def stop(self, within_s: float) -> None:
        """SIGTERM, then wait for exit 0 (the worker drains what it holds)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.check_alive()
        self.send(signal.SIGTERM)
        try:
            code = await self.wait(within_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise WorkerFailedError(f"worker {self.pid} ignored SIGTERM for {within_s} s") from None
        if code != 0:
            raise WorkerFailedError(f"worker {self.pid} exited with {code}; see {self._logs[-1]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def wait_consuming(self, within_s: float = 30) -> None:
        """Until the latest start logs that it consumes (its signal handlers are set)."""

        async def consuming() -> bool:
            return "worker.consuming" in self.latest_log()

        await wait_for(consuming, within_s=within_s, what="the worker consuming", processes=[self])

    def latest_log(self) -> str:
        """What the latest start of this worker logged so far."""
        return self._logs[-1].read_text(errors="replace")

    def log(self) -> str:
        """Everything every start of this worker logged, in order."""
        return "".join(path.read_text(errors="replace") for path in self._logs)


@contextlib.asynccontextmanager
async def running_workers(
    place: Sandbox, count: int, log_dir: Path
) -> AsyncIterator[list[WorkerProcess]]:
    """``count`` worker processes in ``place``, all consuming by the time this yields.

    They are stopped with SIGTERM on exit (killed if that fails). Waiting for
    them to consume matters twice: a worker signalled while it still starts
    dies of the signal instead of draining, and a measurement of two workers
    should not run while only one of them works.
    """
    workers = [WorkerProcess(place.settings, log_dir / f"worker-{n}.log") for n in range(count)]
    try:
        for worker in workers:
            worker.start()

        async def all_consuming() -> bool:
            return await consumer_count(place.amqp_url) >= count

        await wait_for(
            all_consuming,
            within_s=60,
            what=f"{count} worker(s) to consume",
            every_s=0.1,
            processes=workers,
        )
        yield workers
        drain = place.settings.drain_timeout_s + 10
        await asyncio.gather(*(worker.stop(drain) for worker in workers))
    finally:
        for worker in workers:
            worker.kill()


# --- waiting on state ------------------------------------------------------


async def wait_for(
    check: Callable[[], Awaitable[bool]],
    *,
    within_s: float = 30,
    what: str = "a condition",
    every_s: float = POLL_S,
    processes: Iterable[WorkerProcess] = (),
) -> None:
    """Poll ``check`` until it holds; :class:`TimeoutError` after ``within_s`` seconds.

    A process of ``processes`` that ends meanwhile fails the wait at once
    (:class:`WorkerFailedError`), instead of letting it run out.
    """
    watched = list(processes)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await check():
        for process in watched:
            process.check_alive()
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {within_s:g} s waiting for {what}")
        await asyncio.sleep(every_s)
    for process in watched:
        process.check_alive()
