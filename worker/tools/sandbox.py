"""The bench's own database and RabbitMQ vhost, made at start and removed at the end.

A worker already running on the same servers keeps its database and its
vhost untouched: every bench object lives in ``chatstore_bench_<random>``.
Making a vhost needs ``rabbitmqctl`` on this machine (run as root or as the
``rabbitmq`` user, who can read the Erlang cookie).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg
from sqlalchemy.engine import URL

from worker import migrate
from worker.settings import Settings


class BenchSetupError(Exception):
    """The bench cannot make its database or vhost; the message says what is missing."""


@dataclass(frozen=True)
class BenchEnvironment:
    """Where the bench works, and the settings a worker needs to work there."""

    name: str
    database_url: URL  # postgresql+asyncpg, the bench database
    amqp_url: str  # the bench vhost
    settings: Settings  # the operator's settings, pointed at the two above

    @property
    def dsn(self) -> str:
        """The bench database for asyncpg."""
        return self.database_url.set(drivername="postgresql").render_as_string(hide_password=False)

    def worker_environment(self) -> dict[str, str]:
        """The process environment of a ``chatstore worker`` working here."""
        environment = {k: v for k, v in os.environ.items() if not k.startswith("CHATSTORE_")}
        for name, value in self.settings.model_dump().items():
            environment[f"CHATSTORE_{name.upper()}"] = str(value)
        return environment


async def rabbitmqctl(*args: str) -> None:
    if shutil.which("rabbitmqctl") is None:
        raise BenchSetupError(
            "rabbitmqctl is not on PATH: the bench makes a vhost of its own with it"
        )
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "--quiet",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        first = (stderr.decode(errors="replace").strip().splitlines() or ["failed"])[0]
        raise BenchSetupError(f"rabbitmqctl {args[0]}: {first}")


def _with_vhost(amqp_url: str, vhost: str) -> tuple[str, str]:
    """The URL on ``vhost`` instead of its own, and the URL's user name."""
    parts = urlsplit(amqp_url)
    user = unquote(parts.username or "guest")
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe=""))), user


async def _execute(dsn: str, sql: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def bench_environment(
    settings: Settings, *, keep: bool = False
) -> AsyncIterator[BenchEnvironment]:
    """Make the bench database (migrated to head) and vhost; remove both on exit.

    ``keep`` leaves them in place, for looking at plans and rows afterwards.
    """
    name = f"chatstore_bench_{uuid.uuid4().hex[:10]}"
    database_url = settings.sqlalchemy_url.set(database=name)
    maintenance = database_url.set(drivername="postgresql", database=migrate.MAINTENANCE_DATABASE)
    amqp_url, user = _with_vhost(settings.amqp_url, name)
    bench_settings = settings.model_copy(
        update={
            "database_url": database_url.set(drivername="postgresql").render_as_string(
                hide_password=False
            ),
            "amqp_url": amqp_url,
            "http_port": 0,  # a worker on the usual port may be running here
        }
    )
    environment = BenchEnvironment(name, database_url, amqp_url, bench_settings)
    await rabbitmqctl("add_vhost", name)
    try:
        await rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        await migrate.ensure_database(database_url)
        try:
            # Alembic runs its own event loop; keep it off this one.
            await asyncio.to_thread(migrate.upgrade, database_url)
            yield environment
        finally:
            if not keep:
                await _execute(
                    maintenance.render_as_string(hide_password=False),
                    f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                )
    finally:
        if not keep:
            await rabbitmqctl("delete_vhost", name)
