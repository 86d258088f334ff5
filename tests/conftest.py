"""Fixtures on the real servers: one migrated template database a run, a
fresh database and a fresh RabbitMQ vhost per test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.engine import URL

from tests.harness import add_users, declare_topology, worker_settings
from tests.rabbitmq_cluster import rabbit_cluster
from tests.services import Services, discover
from worker import migrate
from worker.settings import Settings
from worker.tools.sandbox import execute, throwaway_vhost

# Fixtures that need the servers; collecting a test that uses one finds them.
SERVICE_FIXTURES = frozenset(
    {
        "services",
        "services_admin_url",
        "services_amqp_url",
        "template_database",
        "database_url",
        "empty_database_url",
        "amqp_url",
    }
)
_SERVICES = pytest.StashKey[Services]()
# One three-node cluster for the session, for the modules that ask for it.
__all__ = ["rabbit_cluster"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needs_services = any(
        SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())) for item in items
    )
    if needs_services and _SERVICES not in config.stash:
        config.stash[_SERVICES] = discover()  # raises pytest.UsageError, never skips


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SERVICES in config.stash:
        config.stash[_SERVICES].stop()


@pytest.fixture(scope="session")
def services(request: pytest.FixtureRequest) -> Services:
    return request.config.stash[_SERVICES]


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def _admin(services: Services, sql: str) -> None:
    await execute(services.admin_database_url.render_as_string(hide_password=False), sql)


@pytest.fixture(scope="session")
def template_database(services: Services) -> Iterator[str]:
    """A database built by the real migrations, the template of every test's database."""
    name = _unique("chatstore_test_template")
    url = services.admin_database_url.set(database=name, drivername="postgresql+asyncpg")
    asyncio.run(migrate.ensure_database(url))
    migrate.upgrade(url)
    yield name
    asyncio.run(_admin(services, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _database(services: Services, template: str | None) -> AsyncIterator[URL]:
    name = _unique("chatstore_test")
    clause = f' TEMPLATE "{template}"' if template else ""
    await _admin(services, f'CREATE DATABASE "{name}"{clause}')
    try:
        yield services.admin_database_url.set(database=name, drivername="postgresql+asyncpg")
    finally:
        await _admin(services, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(services: Services, template_database: str) -> AsyncIterator[URL]:
    """A database of this test's own, at the schema's head revision."""
    async for url in _database(services, template_database):
        yield url


@pytest.fixture
async def empty_database_url(services: Services) -> AsyncIterator[URL]:
    """A database of this test's own with nothing in it."""
    async for url in _database(services, None):
        yield url


@pytest.fixture
async def amqp_url(services: Services) -> AsyncIterator[str]:
    """A RabbitMQ vhost of this test's own, so fixed queue names never collide."""

    async def run(*args: str) -> None:
        await services.rabbitmqctl(list(args))

    async with throwaway_vhost(services.amqp_url, _unique("chatstore_test"), run=run) as url:
        yield url


@pytest.fixture
def services_admin_url(services: Services) -> URL:
    """The superuser's URL to the maintenance database, for tests that make databases."""
    return services.admin_database_url


@pytest.fixture
def services_amqp_url(services: Services) -> str:
    """The broker's default vhost, shared with anything else running here."""
    return services.amqp_url


@pytest.fixture
async def settings(database_url: URL, amqp_url: str) -> Settings:
    """A worker's settings on this test's database and vhost, with the topology
    declared and the users alice and bob."""
    await add_users(database_url, "alice", "bob")
    await declare_topology(amqp_url)
    return worker_settings(database_url, amqp_url)
