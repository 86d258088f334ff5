"""Finding the real PostgreSQL and RabbitMQ the tests run against.

In order: URLs from the environment, the local default ports, containers
started with testcontainers where a Docker engine answers. When none of these
works the run stops with a message saying what to start; it never skips.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy.engine import URL, make_url

from worker.tools import subprocesses
from worker.tools.sandbox import rabbitmqctl

DATABASE_ENV = "CHATSTORE_TEST_DATABASE_URL"
AMQP_ENV = "CHATSTORE_TEST_AMQP_URL"
LOCAL_DATABASE = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_AMQP = "amqp://guest:guest@127.0.0.1:5672/"

HOW_TO_START = f"""the tests need a real PostgreSQL and RabbitMQ, and found neither usable.
Start the local services:
    pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start
    rabbitmq-server -detached
or point the tests at running ones:
    {DATABASE_ENV}=postgresql://user@host:5432/postgres
    {AMQP_ENV}=amqp://user:password@host:5672/
or run a Docker engine, and testcontainers will start both."""


@dataclass
class Services:
    """Where the servers are, and how to make and remove RabbitMQ vhosts there."""

    admin_database_url: URL  # a superuser's URL to the maintenance database
    amqp_url: str  # the broker's URL, vhost "/"
    rabbitmqctl: Callable[[list[str]], Any]
    postgres_control: Callable[[str], Any]  # "stop" or "start", awaited
    _containers: list[Any] = field(default_factory=list)

    def stop(self) -> None:
        for container in self._containers:
            container.stop()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _local_rabbitmqctl(args: list[str]) -> Any:
    return rabbitmqctl(*args)


def _local_postgres_control(action: str) -> Any:
    """Stop or start the local Debian cluster (for outage tests)."""

    async def run() -> None:
        versions = sorted(
            os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")]
        )
        command = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", action]
        if action == "stop":
            command += ["--mode", "fast"]
        done = await subprocesses.run(command)
        already = action == "start" and done.returncode == 2  # it was running
        if done.returncode != 0 and not already:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr.decode().strip()}")

    return run()


def discover() -> Services:
    """The services to test against, or a UsageError naming what to start."""
    database_env, amqp_env = os.environ.get(DATABASE_ENV), os.environ.get(AMQP_ENV)
    has_rabbitmqctl = shutil.which("rabbitmqctl") is not None
    if database_env and amqp_env:
        if not has_rabbitmqctl:
            raise pytest.UsageError(
                f"{AMQP_ENV} is set, but the tests make a vhost per test with rabbitmqctl, "
                "which is not on PATH"
            )
        return Services(
            make_url(database_env), amqp_env, _local_rabbitmqctl, _local_postgres_control
        )
    if has_rabbitmqctl and _port_open("127.0.0.1", 5432) and _port_open("127.0.0.1", 5672):
        return Services(
            make_url(LOCAL_DATABASE), LOCAL_AMQP, _local_rabbitmqctl, _local_postgres_control
        )
    if _docker_answers():
        return _start_containers()
    raise pytest.UsageError(HOW_TO_START)


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


def _start_containers() -> Services:
    from testcontainers.postgres import PostgresContainer
    from testcontainers.rabbitmq import RabbitMqContainer

    postgres = PostgresContainer("postgres:15", username="postgres", dbname="postgres").start()
    rabbitmq = RabbitMqContainer("rabbitmq:3.10").start()
    database_url = make_url(postgres.get_connection_url()).set(drivername="postgresql")
    params = rabbitmq.get_connection_params()
    amqp_url = f"amqp://guest:guest@{params.host}:{params.port}/"

    def container_rabbitmqctl(args: list[str]) -> Any:
        async def run() -> None:
            code, output = await asyncio.to_thread(rabbitmq.exec, ["rabbitmqctl", *args])
            if code != 0:
                raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {output!r}")

        return run()

    def container_postgres_control(action: str) -> Any:
        wrapped = postgres.get_wrapped_container()
        return asyncio.to_thread(wrapped.stop if action == "stop" else wrapped.start)

    return Services(
        database_url,
        amqp_url,
        container_rabbitmqctl,
        container_postgres_control,
        [postgres, rabbitmq],
    )
