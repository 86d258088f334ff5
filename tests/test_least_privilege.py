"""Least privilege, on the real servers, with the files a deployment uses.

PostgreSQL: deploy/postgres/roles.sql and grants.sql make a migrator that
owns the tables, a worker that may only read, insert, and update the
columns it updates, and a maintenance role (``chatstore purge``) that may
only delete conversations and read the columns that choose them.
RabbitMQ: deploy/rabbitmq/definitions.json gives each user the permissions
of its job. The worker runs under both, and each role
is shown to be refused what it must not do.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import aiormq
import asyncpg
import pytest
from sqlalchemy.engine import URL

from tests.db import dsn, fetch_all
from tests.events import conversation_archived, message_created
from tests.harness import (
    add_users,
    count,
    publish,
    queue_has,
    running_worker,
    table_has,
    take_dead_letters,
    wait_for,
    worker_environment,
    worker_settings,
)
from tests.services import Services
from worker import exits, migrate, topology

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ROLES_SQL = DEPLOY / "postgres" / "roles.sql"
GRANTS_SQL = DEPLOY / "postgres" / "grants.sql"
DEFINITIONS = DEPLOY / "rabbitmq" / "definitions.json"
# The development passwords whose hashes definitions.json holds (docker compose).
DEV_PASSWORDS = {
    "chatstore-admin": "admin-dev-password",
    "chatstore-worker": "worker-dev-password",
    "chat-runtime": "runtime-dev-password",
    "chatstore-replay": "replay-dev-password",
    "chatstore-keda": "keda-dev-password",
}


# --- PostgreSQL -------------------------------------------------------------


@dataclass(frozen=True)
class Roles:
    migrator: URL
    worker: URL
    maintenance: URL


def _psql(url: URL, script: Path, **variables: str) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.fail("psql is not installed (apt-get install postgresql-client)", pytrace=False)
    command = [psql, "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1", "-d", dsn(url)]
    for name, value in variables.items():
        command += ["-v", f"{name}={value}"]
    result = subprocess.run(
        [*command, "-f", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{script.name}: {result.stderr}"


async def _superuser(url: URL, sql: str) -> None:
    connection = await asyncpg.connect(dsn(url))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture
async def roles(empty_database_url: URL, services_admin_url: URL) -> AsyncIterator[Roles]:
    """A migrator, a worker and a maintenance role made by roles.sql, the schema
    migrated by the migrator, and grants.sql applied: the deployment's steps, in order."""
    suffix = uuid.uuid4().hex[:10]
    migrator, worker = f"chatstore_migrator_{suffix}", f"chatstore_worker_{suffix}"
    maintenance = f"chatstore_maintenance_{suffix}"
    database = str(empty_database_url.database)
    await asyncio.to_thread(
        _psql,
        services_admin_url,
        ROLES_SQL,
        database=database,
        migrator=migrator,
        migrator_password=f"m-{suffix}",
        worker=worker,
        worker_password=f"w-{suffix}",
        maintenance=maintenance,
        maintenance_password=f"p-{suffix}",
    )
    as_migrator = empty_database_url.set(username=migrator, password=f"m-{suffix}")
    try:
        await asyncio.to_thread(migrate.upgrade, as_migrator)
        await asyncio.to_thread(
            _psql, as_migrator, GRANTS_SQL, worker=worker, maintenance=maintenance
        )
        yield Roles(
            as_migrator,
            empty_database_url.set(username=worker, password=f"w-{suffix}"),
            empty_database_url.set(username=maintenance, password=f"p-{suffix}"),
        )
    finally:
        await _superuser(
            empty_database_url, f'DROP OWNED BY "{migrator}", "{worker}", "{maintenance}"'
        )
        await _superuser(services_admin_url, f'DROP ROLE "{migrator}", "{worker}", "{maintenance}"')


async def test_the_worker_role_holds_exactly_the_grants_of_its_statements(roles: Roles) -> None:
    worker = str(roles.worker.username)
    tables = await fetch_all(
        roles.migrator,
        "SELECT table_name, privilege_type FROM information_schema.table_privileges"
        " WHERE grantee = $1",
        worker,
    )
    columns = await fetch_all(
        roles.migrator,
        "SELECT table_name, column_name, privilege_type"
        " FROM information_schema.column_privileges"
        " WHERE grantee = $1 AND privilege_type IN ('INSERT', 'UPDATE')",
        worker,
    )
    assert {(r["table_name"], r["privilege_type"]) for r in tables} == {
        ("users", "SELECT"),
        ("conversations", "SELECT"),
        ("messages", "SELECT"),
        ("messages", "INSERT"),
    }
    assert {(r["table_name"], r["column_name"], r["privilege_type"]) for r in columns} == {
        ("conversations", "id", "INSERT"),
        ("conversations", "user_id", "INSERT"),
        ("conversations", "status", "UPDATE"),
        ("conversations", "created_at", "UPDATE"),
        ("conversations", "updated_at", "UPDATE"),
        *(
            ("messages", column, "INSERT")
            for column in (
                "id",
                "conversation_id",
                "user_id",
                "role",
                "content",
                "metadata",
                "created_at",
            )
        ),
    }


FORBIDDEN = [
    "DROP TABLE messages",
    "DROP TABLE conversations CASCADE",
    "DELETE FROM messages",
    "DELETE FROM conversations",
    "TRUNCATE messages",
    "UPDATE messages SET content = 'rewritten'",
    "UPDATE conversations SET user_id = 'mallory'",
    "INSERT INTO users (id) VALUES ('mallory')",
    "SELECT * FROM alembic_version",
    "ALTER TABLE messages ADD COLUMN evil integer",
    "CREATE INDEX ON messages (content)",
    "CREATE TABLE evil (id integer)",
]


async def _allowed(role: URL, statements: list[str]) -> list[str]:
    """The statements ``role`` may run, each tried in a transaction rolled back."""
    connection = await asyncpg.connect(dsn(role))
    allowed = []
    try:
        for statement in statements:
            transaction = connection.transaction()
            await transaction.start()
            try:
                await connection.execute(statement)
                allowed.append(statement)
            except asyncpg.InsufficientPrivilegeError:
                pass
            finally:
                await transaction.rollback()
    finally:
        await connection.close()
    return allowed


async def test_the_worker_role_cannot_drop_delete_or_rewrite(roles: Roles) -> None:
    await add_users(roles.migrator, "alice")
    assert await _allowed(roles.worker, FORBIDDEN) == []


async def _privileges(roles: Roles, role: URL) -> set[tuple[str, ...]]:
    """Every privilege ``role`` holds on a table or a column, as (table, [column,] privilege)."""
    tables = await fetch_all(
        roles.migrator,
        "SELECT table_name, privilege_type FROM information_schema.table_privileges"
        " WHERE grantee = $1",
        str(role.username),
    )
    columns = await fetch_all(
        roles.migrator,
        "SELECT table_name, column_name, privilege_type FROM information_schema.column_privileges"
        " WHERE grantee = $1",
        str(role.username),
    )
    return {(r["table_name"], r["privilege_type"]) for r in tables} | {
        (r["table_name"], r["column_name"], r["privilege_type"]) for r in columns
    }


async def test_the_maintenance_role_holds_exactly_what_purge_needs(roles: Roles) -> None:
    assert await _privileges(roles, roles.maintenance) == {
        ("conversations", "DELETE"),
        ("conversations", "id", "SELECT"),
        ("conversations", "status", "SELECT"),
        ("conversations", "updated_at", "SELECT"),
        ("messages", "conversation_id", "SELECT"),
    }


MAINTENANCE_FORBIDDEN = [
    "DELETE FROM messages",
    "TRUNCATE conversations",
    "UPDATE conversations SET status = 'active'",
    "INSERT INTO conversations (id, user_id) VALUES (gen_random_uuid(), 'alice')",
    "SELECT content FROM messages",
    "SELECT user_id FROM conversations",
    "SELECT * FROM users",
    "DELETE FROM users",
    "SELECT id FROM conversations FOR UPDATE",
    "SELECT * FROM alembic_version",
    "DROP TABLE messages",
    "CREATE TABLE evil (id integer)",
]


async def test_the_maintenance_role_cannot_write_anything_but_a_delete_nor_read_content(
    roles: Roles,
) -> None:
    assert await _allowed(roles.maintenance, MAINTENANCE_FORBIDDEN) == []


async def _archived_with_messages(roles: Roles, *, status: str, days_ago: int) -> uuid.UUID:
    (row,) = await fetch_all(
        roles.migrator,
        "INSERT INTO conversations (id, user_id, status, created_at, updated_at)"
        " VALUES (gen_random_uuid(), 'alice', $1, now() - make_interval(days => $2),"
        "         now() - make_interval(days => $2)) RETURNING id",
        status,
        days_ago,
    )
    await fetch_all(
        roles.migrator,
        "INSERT INTO messages (id, conversation_id, user_id, role, content, created_at)"
        " SELECT gen_random_uuid(), $1, 'alice', 'user', 'hi', now() - make_interval(days => $2)"
        " FROM generate_series(1, 3)",
        row["id"],
        days_ago,
    )
    return uuid.UUID(str(row["id"]))


async def test_purge_runs_as_the_maintenance_role_and_the_worker_role_is_refused_in_one_line(
    roles: Roles, tmp_path: Path
) -> None:
    await add_users(roles.migrator, "alice")
    await _archived_with_messages(roles, status="archived", days_ago=200)
    active = await _archived_with_messages(roles, status="active", days_ago=200)
    cutoff = (datetime.now(UTC) - timedelta(days=100)).isoformat()
    settings = worker_settings(roles.worker, "amqp://guest:guest@localhost:5672/")

    def purge_as(role: URL, *extra: str) -> subprocess.CompletedProcess[str]:
        url = role.set(drivername="postgresql").render_as_string(hide_password=False)
        return subprocess.run(
            [sys.executable, "-m", "worker", "purge", "--archived-before", cutoff, *extra],
            env=worker_environment(settings) | {"CHATSTORE_MAINTENANCE_DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=tmp_path,
        )

    refused = await asyncio.to_thread(purge_as, roles.worker)
    assert refused.returncode == exits.USAGE, refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert f"the role '{roles.worker.username}' may not purge" in refused.stderr
    assert str(roles.worker.password) not in refused.stderr
    assert await count(roles.migrator, "messages") == 6

    done = await asyncio.to_thread(purge_as, roles.maintenance, "--json")
    assert done.returncode == exits.OK, done.stderr
    report = json.loads(done.stdout)
    assert (report["conversations"], report["messages"]) == (1, 3)
    rows = await fetch_all(roles.migrator, "SELECT id FROM conversations")
    assert [row["id"] for row in rows] == [active]
    assert await count(roles.migrator, "messages") == 3


async def test_the_scripts_without_a_maintenance_role_run_as_before_and_leave_it_alone(
    roles: Roles, services_admin_url: URL
) -> None:
    """Deployments that run roles.sql and grants.sql as before (no -v maintenance)."""
    before = await _privileges(roles, roles.maintenance)
    await asyncio.to_thread(
        _psql,
        services_admin_url,
        ROLES_SQL,
        database=str(roles.migrator.database),
        migrator=str(roles.migrator.username),
        migrator_password=str(roles.migrator.password),
        worker=str(roles.worker.username),
        worker_password=str(roles.worker.password),
    )
    await asyncio.to_thread(_psql, roles.migrator, GRANTS_SQL, worker=str(roles.worker.username))
    assert await _privileges(roles, roles.maintenance) == before
    assert ("conversations", "DELETE") not in await _privileges(roles, roles.worker)


# --- RabbitMQ ---------------------------------------------------------------


@dataclass(frozen=True)
class BrokerUsers:
    """URLs of the definitions' users, renamed into this test's own vhost."""

    urls: dict[str, str]

    def __getitem__(self, user: str) -> str:
        return self.urls[user]


def _vhost(amqp_url: str) -> str:
    return unquote(urlsplit(amqp_url).path.lstrip("/")) or "/"


def _definitions_for(vhost: str, suffix: str) -> dict[str, Any]:
    """definitions.json with unique user names and the test's vhost (users are global)."""
    definitions: dict[str, Any] = json.loads(DEFINITIONS.read_text())
    definitions["vhosts"] = []  # the vhost exists already
    for user in definitions["users"]:
        user["name"] = f"{user['name']}-{suffix}"
    for permission in definitions["permissions"]:
        permission["user"] = f"{permission['user']}-{suffix}"
    for kind in ("permissions", "exchanges", "queues", "bindings"):
        for item in definitions[kind]:
            item["vhost"] = vhost
    return definitions


def _write_definitions(directory: Path, definitions: dict[str, Any]) -> Path:
    path = directory / "definitions.json"
    path.write_text(json.dumps(definitions))
    directory.chmod(0o755)
    path.chmod(0o644)
    return path


@pytest.fixture
async def broker_users(amqp_url: str, services: Services) -> AsyncIterator[BrokerUsers]:
    suffix = uuid.uuid4().hex[:10]
    vhost = _vhost(amqp_url)
    # Debian's rabbitmqctl reads the file as the rabbitmq user: not from
    # pytest's private temporary directory.
    with tempfile.TemporaryDirectory(prefix="chatstore-definitions-") as directory:
        path = _write_definitions(Path(directory), _definitions_for(vhost, suffix))
        await services.rabbitmqctl(["import_definitions", str(path)])
    parts = urlsplit(amqp_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    urls = {
        user: f"{parts.scheme}://{user}-{suffix}:{password}@{host}/{quote(vhost, safe='')}"
        for user, password in DEV_PASSWORDS.items()
    }
    try:
        yield BrokerUsers(urls)
    finally:
        await asyncio.gather(
            *(services.rabbitmqctl(["delete_user", f"{user}-{suffix}"]) for user in DEV_PASSWORDS)
        )


async def _refused(
    url: str, action: Callable[[aio_pika.abc.AbstractChannel], Awaitable[Any]]
) -> bool:
    """Whether the broker refuses ``action`` to the user of ``url`` (403 ACCESS_REFUSED)."""
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        try:
            await action(channel)
        except aiormq.exceptions.ChannelAccessRefused:
            return True
        return False


def _publish_to(exchange: str, routing_key: str) -> Callable[[Any], Awaitable[Any]]:
    async def action(channel: aio_pika.abc.AbstractChannel) -> None:
        target = (
            channel.default_exchange
            if exchange == ""
            else await channel.get_exchange(exchange, ensure=False)
        )
        await target.publish(aio_pika.Message(b"{}"), routing_key=routing_key)

    return action


async def _ignore(_message: aio_pika.abc.AbstractIncomingMessage) -> None:
    pass


def _consume(queue: str) -> Callable[[Any], Awaitable[Any]]:
    async def action(channel: aio_pika.abc.AbstractChannel) -> None:
        declared = await channel.get_queue(queue, ensure=False)
        await declared.consume(_ignore)

    return action


def _declare(queue: str) -> Callable[[Any], Awaitable[Any]]:
    async def action(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.declare_queue(queue, durable=True)

    return action


async def test_the_worker_runs_with_only_its_own_privileges(
    roles: Roles, broker_users: BrokerUsers, amqp_url: str
) -> None:
    """Migrated by the migrator, run as the worker role and the worker user,
    fed by the chat runtime's user, its dead letter replayed by the replay user."""
    await add_users(roles.migrator, "alice", "bob")
    conversation_ids = [str(uuid.uuid4()) for _ in range(4)]
    events: list[dict[str, Any] | bytes] = [
        message_created(conversation_id=conversation_ids[n % 4], user_id="alice") for n in range(20)
    ]
    events.append(conversation_archived(conversation_id=conversation_ids[0], user_id="alice"))
    events.append(b"not json")
    settings = worker_settings(roles.worker, broker_users["chatstore-worker"])
    async with running_worker(settings) as worker:
        await publish(broker_users["chat-runtime"], events)
        await wait_for(table_has(roles.migrator, "messages", 20), what="the messages")
        await wait_for(queue_has(amqp_url, topology.DLQ, 1), what="the dead letter")
        await _replay_one(broker_users["chatstore-replay"])
        await wait_for(queue_has(amqp_url, topology.DLQ, 1), what="the replayed dead letter")
        assert not worker.done()

    assert worker.result() == 0
    assert await count(roles.migrator, "conversations") == 4
    (archived,) = await fetch_all(
        roles.migrator,
        "SELECT status FROM conversations WHERE id = $1",
        uuid.UUID(conversation_ids[0]),
    )
    assert archived["status"] == "archived"
    (letter,) = await take_dead_letters(amqp_url)
    assert (letter.body, letter.reason) == (b"not json", "malformed")


async def _replay_one(url: str) -> None:
    """What `chatstore dlq replay` does: take a dead letter, publish it to chat.events."""
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        dlq = await channel.get_queue(topology.DLQ, ensure=False)
        message = await dlq.get(fail=True)
        assert message is not None
        exchange = await channel.get_exchange(topology.EXCHANGE, ensure=False)
        await exchange.publish(aio_pika.Message(message.body), routing_key="message.created")
        await message.ack()


async def test_each_broker_user_is_refused_what_its_job_does_not_need(
    broker_users: BrokerUsers,
) -> None:
    runtime, worker = broker_users["chat-runtime"], broker_users["chatstore-worker"]
    replay, keda = broker_users["chatstore-replay"], broker_users["chatstore-keda"]
    refusals = {
        "runtime publishes to the default exchange": (runtime, _publish_to("", topology.QUEUE)),
        "runtime consumes the work queue": (runtime, _consume(topology.QUEUE)),
        "runtime consumes the DLQ": (runtime, _consume(topology.DLQ)),
        "runtime declares a queue": (runtime, _declare("runtime.own")),
        "worker publishes to chat.events": (worker, _publish_to(topology.EXCHANGE, "x")),
        "worker consumes the DLQ": (worker, _consume(topology.DLQ)),
        "worker declares another queue": (worker, _declare("worker.other")),
        "replay consumes the work queue": (replay, _consume(topology.QUEUE)),
        "replay publishes to the default exchange": (replay, _publish_to("", topology.QUEUE)),
        "replay declares a queue": (replay, _declare("replay.own")),
        "keda consumes the work queue": (keda, _consume(topology.QUEUE)),
        "keda publishes to chat.events": (keda, _publish_to(topology.EXCHANGE, "x")),
    }
    outcomes = await asyncio.gather(*(_refused(url, act) for url, act in refusals.values()))
    allowed = [what for what, refused in zip(refusals, outcomes, strict=True) if not refused]
    assert allowed == []
    # The probe itself tells refused from allowed.
    assert not await _refused(runtime, _publish_to(topology.EXCHANGE, "message.created"))


async def test_keda_reads_the_queue_length_with_no_permission_at_all(
    broker_users: BrokerUsers,
) -> None:
    await publish(broker_users["chat-runtime"], [message_created() for _ in range(3)])
    async with await aio_pika.connect(broker_users["chatstore-keda"]) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.QUEUE, passive=True)
        assert queue.declaration_result.message_count == 3
