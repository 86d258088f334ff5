"""A command that cannot use a server or a port says which, in one line, with the right code.

Each error is raised where the connection or the socket is opened
(worker/unavailable.py), so the line names the service that failed: the
HTTP port, PostgreSQL or RabbitMQ, never a guess.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import URL

from tests.harness import WorkerProcess, free_port, worker_environment, worker_settings
from tests.services import Services
from worker import exits
from worker.settings import Settings
from worker.unavailable import rabbitmq_at


def _run(settings: Settings, *command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *command],
        env=worker_environment(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


async def _run_async(
    settings: Settings, *command: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_run, settings, *command, cwd=cwd)


def _on_vhost(amqp_url: str, vhost: str, **credentials: Any) -> str:
    parts = urlsplit(amqp_url)
    user = credentials.get("user", parts.username)
    password = credentials.get("password", parts.password)
    return f"amqp://{user}:{password}@{parts.hostname}:{parts.port}/{quote(vhost, safe='')}"


async def test_a_second_worker_on_the_same_http_port_exits_2_naming_chatstore_http_port(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    shared = settings.model_copy(update={"http_port": port})
    first = WorkerProcess(shared, tmp_path / "first.log").start()
    try:
        await first.wait_consuming()
        second = await _run_async(shared, "worker", cwd=tmp_path)
        assert second.returncode == exits.USAGE, second.stderr
        assert second.stderr.count("\n") == 1, second.stderr
        assert second.stderr.startswith(
            f"chatstore: cannot use the HTTP port {port} (CHATSTORE_HTTP_PORT): it is in use"
        )
        assert "or to 0 to turn" in second.stderr
        assert "PostgreSQL" not in second.stderr
        first.check_alive()  # the first one never noticed
    finally:
        first.kill()


async def test_an_http_host_that_is_not_this_machines_is_a_configuration_error(
    settings: Settings, tmp_path: Path
) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this host: binding fails at once,
    # and nothing is sent anywhere.
    bad = settings.model_copy(update={"http_host": "192.0.2.1", "http_port": free_port()})
    result = await _run_async(bad, "worker", cwd=tmp_path)
    assert result.returncode == exits.USAGE, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "CHATSTORE_HTTP_HOST" in result.stderr
    assert "(CHATSTORE_HTTP_PORT)" in result.stderr


async def test_a_vhost_that_does_not_exist_gets_a_line_of_its_own(
    database_url: URL, services_amqp_url: str, tmp_path: Path
) -> None:
    missing = f"chatstore_test_missing_{uuid.uuid4().hex[:8]}"
    settings = worker_settings(database_url, _on_vhost(services_amqp_url, missing))
    for command in (("worker",), ("dlq", "inspect")):
        result = await _run_async(settings, *command, cwd=tmp_path)
        assert result.returncode == exits.USAGE, (command, result.stderr)
        assert result.stderr.count("\n") == 1, (command, result.stderr)
        assert f"the broker refused to open the vhost '{missing}' for the user " in result.stderr
        assert "it does not exist, the user may not open it" in result.stderr
        assert "Connection.OpenOk" not in result.stderr


async def test_a_vhost_the_user_may_not_open_gets_the_same_line_without_the_password(
    database_url: URL, amqp_url: str, services: Services, tmp_path: Path
) -> None:
    user, password = f"chatstore-outsider-{uuid.uuid4().hex[:8]}", "outsider-secret-1"
    await services.rabbitmqctl(["add_user", user, password])
    try:
        vhost = urlsplit(amqp_url).path.lstrip("/")
        url = _on_vhost(amqp_url, vhost, user=user, password=password)
        result = await _run_async(
            worker_settings(database_url, url), "dlq", "inspect", cwd=tmp_path
        )
        assert result.returncode == exits.USAGE, result.stderr
        assert f"the vhost '{vhost}' for the user '{user}'" in result.stderr
        assert password not in result.stdout + result.stderr
    finally:
        await services.rabbitmqctl(["delete_user", user])


async def test_a_broker_nobody_answers_on_is_named_and_exits_1(
    database_url: URL, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there: refused at once
    settings = worker_settings(database_url, f"amqp://guest:hunter2@127.0.0.1:{port}/")
    for command in (("dlq", "inspect"), ("dlq", "replay", "--dry-run"), ("demo",)):
        result = await _run_async(settings, *command, cwd=tmp_path)
        assert result.returncode == exits.FAILURE, (command, result.stderr)
        assert result.stderr.count("\n") == 1, (command, result.stderr)
        assert result.stderr.startswith(f"chatstore: cannot use RabbitMQ at 127.0.0.1:{port}/:")
        assert "hunter2" not in result.stderr


async def test_a_missing_dead_letter_queue_is_named_as_the_brokers_answer(
    database_url: URL, amqp_url: str, tmp_path: Path
) -> None:
    # A vhost where no worker has declared the topology yet.
    result = await _run_async(
        worker_settings(database_url, amqp_url), "dlq", "inspect", cwd=tmp_path
    )
    assert result.returncode == exits.FAILURE, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "cannot use RabbitMQ at" in result.stderr
    assert "no queue 'chatstore.events.dlq'" in result.stderr


def test_a_password_holding_a_slash_is_refused_in_one_line_that_does_not_show_it(
    tmp_path: Path,
) -> None:
    # The client's URL parser ends the host part at the "/": it would take
    # the rest of the password for the host, or print it as the broker's name.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CHATSTORE_")}
    environment["CHATSTORE_AMQP_URL"] = "amqp://guest:pa:ss/word@127.0.0.1:5672/chat"
    result = subprocess.run(
        [sys.executable, "-m", "worker", "dlq", "inspect"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == exits.USAGE, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("chatstore: CHATSTORE_AMQP_URL: "), result.stderr
    assert "is ambiguous: percent-encode" in result.stderr
    assert "ss/word" not in result.stderr


def test_the_broker_is_named_by_host_port_and_vhost_whatever_its_password_holds() -> None:
    # Read the way the client reads the URL, so the name is the server it contacted.
    assert rabbitmq_at("amqp://u:p:q%2Fr@mq.internal:5673/chat%2Fv") == (
        "RabbitMQ at mq.internal:5673/chat/v"
    )
    assert rabbitmq_at("amqp://u:se@cr:et@127.0.0.1:1/v") == "RabbitMQ at 127.0.0.1:1/v"
    assert rabbitmq_at("amqps://u:secret@mq/") == "RabbitMQ at mq:5671/"
    assert rabbitmq_at("amqp://u:p@[::1]:5672/%2F") == "RabbitMQ at [::1]:5672/"


def test_a_vhost_holding_an_at_sign_is_a_valid_url_and_a_port_out_of_range_is_not() -> None:
    assert Settings(amqp_url="amqp://u:p@mq/chat@eu").amqp_url == "amqp://u:p@mq/chat@eu"
    assert Settings(amqp_url="amqp://mq?heartbeat=30").amqp_url == "amqp://mq?heartbeat=30"
    for bad in ("amqp://u:p@mq:99999/v", "amqp://u:p@mq:abc/v"):
        with pytest.raises(ValidationError, match="port that is not a number"):
            Settings(amqp_url=bad)


async def test_a_database_tls_file_that_cannot_be_loaded_is_named_in_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    not_a_certificate = tmp_path / "ca.pem"
    not_a_certificate.write_text("this is no certificate\n")
    broken = settings.model_copy(
        update={"database_sslmode": "verify-full", "database_sslrootcert": str(not_a_certificate)}
    )
    for command in (("migrate",), ("worker",)):
        result = await _run_async(broken, *command, cwd=tmp_path)
        assert result.returncode == exits.FAILURE, (command, result.stderr)
        assert result.stderr.count("\n") == 1, (command, result.stderr)
        assert result.stderr.startswith("chatstore: cannot use PostgreSQL at "), result.stderr
        assert "CHATSTORE_DATABASE_SSLROOTCERT" in result.stderr
