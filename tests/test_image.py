"""chatstore's image, built from the Dockerfile and run against the real servers.

The engine and the base image come from tests/docker_engine.py: a dockerd of
the tests' own, no bridge network, every container on ``--network host``.
Each test has its own database and vhost, as everywhere in the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

from tests.db import dsn, fetch_all
from tests.docker_engine import LABEL, ROOT, DockerEngine, build_image, running_engine
from tests.events import body, message_created
from tests.harness import (
    count,
    free_port,
    publish,
    queue_depth,
    running_worker,
    table_has,
    take_dead_letters,
    wait_for,
)
from worker import topology
from worker.settings import Settings

# A cold cache debootstraps and builds the base and the image (about 3 minutes
# measured); the session fixtures' time counts toward the first test.
pytestmark = pytest.mark.timeout(900)

HEALTHY_WITHIN_S = 90  # the HEALTHCHECK probes first after its 15 s interval
STREAM = 5_000  # events published while the container is stopped
STOP_AFTER = 200  # ...once this many of them are stored
STOP_GRACE_S = 40  # docker stop's wait before SIGKILL: above the default drain (20 s)


@pytest.fixture(scope="session")
def docker() -> Iterator[DockerEngine]:
    with running_engine() as engine:
        yield engine


@pytest.fixture(scope="session")
def image(docker: DockerEngine) -> str:
    return build_image(docker)


@contextlib.asynccontextmanager
async def container(docker: DockerEngine, *args: str) -> AsyncIterator[str]:
    """A detached container of ``docker run ARGS``; yields its id, removes it on exit."""
    started = await asyncio.to_thread(
        docker.run, "run", "--detach", "--network=host", f"--label={LABEL}", *args
    )
    identifier = started.stdout.strip()
    try:
        yield identifier
    finally:
        await asyncio.to_thread(docker.run, "rm", "--force", identifier, check=False)


async def state(docker: DockerEngine, identifier: str) -> dict[str, Any]:
    inspected = await asyncio.to_thread(
        docker.run, "inspect", "--format={{json .State}}", identifier
    )
    parsed: dict[str, Any] = json.loads(inspected.stdout)
    return parsed


async def logs(docker: DockerEngine, identifier: str) -> str:
    result = await asyncio.to_thread(docker.run, "logs", identifier)
    return result.stdout + result.stderr


def environment(**values: str | int) -> list[str]:
    return [f"--env=CHATSTORE_{name.upper()}={value}" for name, value in values.items()]


async def tables(database_url: URL) -> set[str]:
    rows = await fetch_all(
        database_url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    )
    return {row[0] for row in rows}


async def test_the_image_runs_as_uid_10001_and_migrates_an_empty_database_on_a_read_only_root(
    docker: DockerEngine, image: str, empty_database_url: URL
) -> None:
    assert await tables(empty_database_url) == set()
    configured = await asyncio.to_thread(docker.run, "image", "inspect", image)
    (config,) = json.loads(configured.stdout)
    assert config["Config"]["User"] == "10001:10001"
    assert config["Config"]["Entrypoint"] == ["chatstore"]

    started = time.monotonic()
    result = await asyncio.to_thread(
        docker.run,
        "run",
        "--rm",
        "--network=host",
        f"--label={LABEL}",
        "--read-only",
        "--user=10001:10001",
        *environment(database_url=dsn(empty_database_url)),
        image,
        "migrate",
        check=False,
    )
    elapsed = time.monotonic() - started

    assert result.returncode == 0, result.stdout + result.stderr
    assert "schema.upgraded" in result.stderr, result.stderr
    assert {"users", "conversations", "messages", "alembic_version"} <= await tables(
        empty_database_url
    )
    versions = await fetch_all(empty_database_url, "SELECT version_num FROM alembic_version")
    head = ScriptDirectory(str(ROOT / "alembic")).get_current_head()
    assert [row[0] for row in versions] == [head]
    print(f"migrate in the container: {elapsed:.1f} s")


async def test_the_worker_container_becomes_healthy_stores_and_drains_on_docker_stop(
    docker: DockerEngine, image: str, settings: Settings, database_url: URL, amqp_url: str
) -> None:
    first = [message_created(user_id="alice", content=f"first {n}") for n in range(20)]
    invalid = message_created(user_id="alice", content="")  # refused: `invalid`
    stream = [
        message_created(user_id="alice" if n % 2 else "bob", content=f"stream {n}")
        for n in range(STREAM)
    ]
    valid = first + stream
    port = free_port()
    worker = (
        "--read-only",
        "--tmpfs=/tmp",
        *environment(database_url=dsn(database_url), amqp_url=amqp_url, http_port=port),
        image,
        "worker",
    )

    async with container(docker, *worker) as identifier:
        started = time.monotonic()

        async def healthy() -> bool:
            current = await state(docker, identifier)
            assert current["Status"] == "running", (current, await logs(docker, identifier))
            return bool(current["Health"]["Status"] == "healthy")

        await wait_for(healthy, within_s=HEALTHY_WITHIN_S, what="the HEALTHCHECK", every_s=0.5)
        health = (await state(docker, identifier))["Health"]
        assert health["Log"][-1]["ExitCode"] == 0, health
        became_healthy_s = time.monotonic() - started

        await publish(amqp_url, [*first, invalid])
        await wait_for(table_has(database_url, "messages", len(first)), what="the first events")

        # A stream the container is stopped in the middle of: it drains (commits
        # and acks what it holds, returns the rest) while events still arrive.
        publishing = asyncio.create_task(publish(amqp_url, stream))

        async def flowing() -> bool:
            assert not publishing.done(), "the stream was published before the stop"
            return await count(database_url, "messages") >= len(first) + STOP_AFTER

        await wait_for(flowing, what=f"{STOP_AFTER} events of the stream stored")
        stopping = time.monotonic()
        await asyncio.to_thread(
            docker.run, "stop", f"--time={STOP_GRACE_S}", identifier, timeout_s=STOP_GRACE_S + 20
        )
        stopped_s = time.monotonic() - stopping
        await publishing
        stopped = await state(docker, identifier)
        log = await logs(docker, identifier)
        stored_by_container = await count(database_url, "messages")

    assert stopped["Status"] == "exited"
    assert stopped["ExitCode"] == 0, log
    assert not stopped["OOMKilled"]
    assert "consumer.drained" in log, log
    assert "worker.stopped" in log, log
    assert stored_by_container < len(valid), "the container was not stopped mid-stream"

    # What it returned to the queue, a worker in this process finishes.
    async with running_worker(settings):
        await wait_for(table_has(database_url, "messages", len(valid)), within_s=60, what="all")
    assert await queue_depth(amqp_url, topology.QUEUE) == 0

    rows = await fetch_all(database_url, "SELECT id::text AS id FROM messages")
    stored = [row["id"] for row in rows]
    assert len(stored) == len(valid)
    assert set(stored) == {event["data"]["message_id"] for event in valid}
    letters = await take_dead_letters(amqp_url)
    assert [(letter.reason, letter.body) for letter in letters] == [("invalid", body(invalid))]
    print(
        f"healthy after {became_healthy_s:.1f} s; docker stop took {stopped_s:.1f} s; "
        f"the container stored {stored_by_container - len(first)} of {STREAM} before it"
    )
