"""``chatstore worker --processes N``: one supervisor, N real worker processes, one HTTP port.

Run for real: the supervisor is a ``python -m worker worker --processes 2``
subprocess on this test's database and vhost, its children are found through
/proc, and one of them is SIGKILLed while events stream in.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import URL

from tests.db import fetch_all
from tests.events import body, message_created
from tests.harness import (
    add_users,
    count,
    declare_topology,
    free_port,
    publish,
    queue_depth,
    running_worker,
    take_dead_letters,
    wait_for,
    worker_environment,
    worker_settings,
)
from worker import exits, topology
from worker.ingest.backoff import Backoff
from worker.settings import Settings
from worker.supervise.supervisor import Supervisor
from worker.tools.sandbox import consumer_count

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Supervised:
    """A real ``chatstore worker --processes N`` process, logging to a file."""

    def __init__(self, settings: Settings, processes: int, log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker", "worker", "--processes", str(processes)],
                env=worker_environment(settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=log_path.parent,
            )

    def children(self) -> list[int]:
        """The pids of the supervisor's child processes, from /proc."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except FileNotFoundError:
            return []

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines of the supervisor and its children (others skipped)."""
        parsed = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                parsed.append(json.loads(line))
            except ValueError:
                continue
        return parsed

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name]

    def alive(self) -> bool:
        return self.process.poll() is None

    async def wait(self, within_s: float) -> int:
        return await asyncio.to_thread(self.process.wait, within_s)

    def kill(self) -> None:
        """SIGKILL the supervisor; its children drain on their own when their pipe ends."""
        if self.alive():
            self.process.kill()
            self.process.wait()


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()
    except (urllib.error.URLError, ConnectionError) as error:
        return 0, str(error)  # not listening (yet)


async def get(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(_get, port, path)


async def scrape(port: int) -> Samples:
    status, text = await get(port, "/metrics")
    assert status == 200, text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def readyz_is(port: int, status: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await get(port, "/readyz"))[0] == status

    return check


def consumers_are(amqp_url: str, expected: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await consumer_count(amqp_url) == expected

    return check


def events_total(outcome: str, reason: str = "") -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("chatstore_events_total", (("outcome", outcome), ("reason", reason)))


def inserted(samples: Samples) -> float:
    return samples.get(events_total("inserted"), 0)


def restarts(samples: Samples, reason: str) -> float:
    return samples[("chatstore_child_restarts_total", (("reason", reason),))]


async def test_a_child_sigkilled_mid_stream_is_restarted_and_nothing_is_lost_or_stored_twice(
    database_url: URL, amqp_url: str, tmp_path: Path
) -> None:
    await add_users(database_url, "alice", "bob")
    await declare_topology(amqp_url)
    port = free_port()
    settings = worker_settings(database_url, amqp_url, http_host="127.0.0.1", http_port=port)

    conversations = [str(uuid.uuid4()) for _ in range(40)]
    valid = [
        body(
            message_created(
                conversation_id=conversations[n % 40],
                user_id="alice" if n % 40 < 20 else "bob",
                content=f"message {n}",
            )
        )
        for n in range(6000)
    ]
    message_ids = {json.loads(raw)["data"]["message_id"] for raw in valid}
    invalid = {
        b"not json " + uuid.uuid4().hex.encode(): "malformed",
        body(message_created(user_id="alice", content="")): "invalid",
        body(message_created(user_id="nobody-" + uuid.uuid4().hex)): "unknown_user",
        body(message_created(user_id="bob") | {"version": 9}): "unsupported_version",
    }
    bad = list(invalid)
    # Three chunks (1000, 1000 and 4000 events), each with duplicates and invalid events.
    chunks = [
        [*valid[:1000], bad[0], *valid[:100:10]],
        [*valid[1000:2000], bad[1], *valid[500:1500:50]],
        [*valid[2000:4000], bad[2], *valid[1000:3000:100], *valid[4000:], bad[3]],
    ]

    supervisor = Supervised(settings, 2, tmp_path / "supervisor.log")
    try:
        await wait_for(readyz_is(port, 200), within_s=60, what="/readyz 200")
        await wait_for(consumers_are(amqp_url, 2), within_s=30, what="two consumers")
        first_children = supervisor.children()
        assert len(first_children) == 2, first_children
        assert (await get(port, "/healthz"))[0] == 200

        # The first chunk, handled by both children: /metrics is their sum.
        await publish(amqp_url, chunks[0])
        await wait_for(
            lambda: _equals(count(database_url, "messages"), 1000), what="the first chunk"
        )
        await wait_for(lambda: _depth_is(amqp_url, topology.QUEUE, 0), what="an empty queue")

        def outcomes(samples: Samples) -> tuple[float, float, float]:
            return (
                inserted(samples),
                samples.get(events_total("duplicate"), 0),
                samples.get(events_total("dead_lettered", "malformed"), 0),
            )

        async def all_counted() -> bool:  # a batch is counted just after its ack
            return outcomes(await scrape(port)) == (1000, 10, 1)

        await wait_for(all_counted, within_s=10, what="the first chunk counted on /metrics")
        samples = await scrape(port)
        assert samples[("chatstore_ready", ())] == 1
        assert samples[("chatstore_processes", ())] == 2
        assert restarts(samples, "signal") == 0
        flushed_by = {line.get("child") for line in supervisor.events("batch.flushed")}
        assert flushed_by == {0, 1}, flushed_by

        # The second chunk, with a child SIGKILLed while it streams in.
        publishing = asyncio.create_task(publish(amqp_url, chunks[1]))
        await wait_for(
            lambda: _above(count(database_url, "messages"), 1100), what="the second chunk started"
        )
        victim = first_children[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        await wait_for(readyz_is(port, 503), within_s=5, what="/readyz 503 with a child dead")
        await publishing

        async def restarted() -> bool:
            return bool(supervisor.events("supervisor.child_restarted"))

        await wait_for(restarted, within_s=30, what="supervisor.child_restarted")
        await wait_for(readyz_is(port, 200), within_s=60, what="/readyz 200 again")
        await wait_for(consumers_are(amqp_url, 2), within_s=30, what="two consumers again")
        back_in_s = time.monotonic() - killed_at
        (line,) = supervisor.events("supervisor.child_restarted")
        assert line["previous_pid"] == victim
        assert line["signal"] == "SIGKILL"
        assert line["delay_s"] > 0
        children = supervisor.children()
        assert victim not in children
        assert len(children) == 2
        assert line["pid"] in children
        samples = await scrape(port)
        assert restarts(samples, "signal") == 1
        assert restarts(samples, "exit") == 0

        # The rest, and SIGTERM while it streams in: the children drain, the
        # rest of the stream waits in the queue.
        publishing = asyncio.create_task(publish(amqp_url, chunks[2]))
        await wait_for(
            lambda: _above(count(database_url, "messages"), 2500), what="the third chunk started"
        )
        supervisor.process.send_signal(signal.SIGTERM)
        code = await supervisor.wait(settings.drain_timeout_s + 15)
        assert code == exits.OK, supervisor.log_path.read_text()
        await publishing
    finally:
        supervisor.kill()
    assert supervisor.events("supervisor.stopped")
    assert {line["child"] for line in supervisor.events("worker.stopped")} == {0, 1}

    # A plain worker takes whatever the drain returned to the queue.
    async with running_worker(settings.model_copy(update={"http_port": 0})):
        await wait_for(
            lambda: _equals(count(database_url, "messages"), len(message_ids)),
            within_s=60,
            what="every message stored",
        )
        await wait_for(lambda: _depth_is(amqp_url, topology.QUEUE, 0), what="an empty queue")
    rows = await fetch_all(database_url, "SELECT id::text AS id, content FROM messages")
    assert len(rows) == len(message_ids)
    assert {row["id"] for row in rows} == message_ids
    assert await queue_depth(amqp_url, topology.QUEUE) == 0
    letters = await take_dead_letters(amqp_url)
    # At least once into the DLQ: a killed child may have published one twice.
    assert {letter.body for letter in letters} == set(invalid)
    for letter in letters:
        assert letter.reason == invalid[letter.body]
    print(
        f"\nSIGKILL of a child: {sum(len(chunk) for chunk in chunks)} events published "
        f"({len(message_ids)} valid messages, {len(invalid)} invalid), {len(rows)} rows stored, "
        f"lost {len(message_ids - {row['id'] for row in rows})}, duplicated "
        f"{len(rows) - len({row['id'] for row in rows})}, {len(letters)} dead-lettered; "
        f"from the kill to /readyz 200 with two consumers: {back_in_s:.2f} s"
    )


async def test_readyz_is_503_while_the_children_cannot_reach_the_database(
    database_url: URL, amqp_url: str, tmp_path: Path
) -> None:
    port = free_port()
    nowhere = database_url.set(host="127.0.0.1", port=free_port())  # nothing listens there
    settings = worker_settings(nowhere, amqp_url, http_host="127.0.0.1", http_port=port)
    supervisor = Supervised(settings, 2, tmp_path / "supervisor.log")
    try:

        async def both_retrying() -> bool:
            retrying = {line.get("child") for line in supervisor.events("database.unreachable")}
            return retrying == {0, 1}

        await wait_for(both_retrying, within_s=60, what="both children retrying the database")
        assert len(supervisor.children()) == 2
        assert await get(port, "/readyz") == (503, "not ready\n")
        assert (await get(port, "/healthz"))[0] == 200
        samples = await scrape(port)
        assert samples[("chatstore_ready", ())] == 0
        assert samples[("chatstore_processes", ())] == 2
        # Ctrl-C: the supervisor forwards it as SIGTERM; the children stop retrying.
        supervisor.process.send_signal(signal.SIGINT)
        assert await supervisor.wait(settings.drain_timeout_s + 15) == exits.OK
    finally:
        supervisor.kill()
    assert not supervisor.events("supervisor.child_restarted")
    assert {line["child"] for line in supervisor.events("supervisor.child_stopped")} == {0, 1}
    assert {line.get("exit_code") for line in supervisor.events("supervisor.child_stopped")} == {0}


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_the_children_of_a_sigkilled_supervisor_drain_and_exit(
    settings: Settings, database_url: URL, tmp_path: Path
) -> None:
    supervisor = Supervised(settings, 2, tmp_path / "supervisor.log")
    children: list[int] = []
    try:
        await wait_for(consumers_are(settings.amqp_url, 2), within_s=60, what="two consumers")
        children = supervisor.children()
        assert len(children) == 2, children
        await publish(settings.amqp_url, [message_created(user_id="alice") for _ in range(50)])
        supervisor.kill()  # SIGKILL: no signal reaches the children

        async def children_gone() -> bool:
            return not any(_running(pid) for pid in children)

        await wait_for(children_gone, within_s=settings.drain_timeout_s + 10, what="children gone")
    finally:
        supervisor.kill()
        for pid in children:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
    assert {line["child"] for line in supervisor.events("worker.supervisor_gone")} == {0, 1}
    assert {line["child"] for line in supervisor.events("worker.stopped")} == {0, 1}
    assert await consumer_count(settings.amqp_url) == 0
    # Each event stored, or returned to the queue by the drain.
    stored = await count(database_url, "messages")
    assert stored + await queue_depth(settings.amqp_url, topology.QUEUE) == 50


async def test_a_child_with_a_configuration_error_stops_the_supervisor_with_exit_2(
    database_url: URL, services_amqp_url: str, tmp_path: Path
) -> None:
    missing = f"chatstore_test_missing_{uuid.uuid4().hex[:8]}"
    amqp_url = services_amqp_url.rstrip("/") + "/" + missing
    settings = worker_settings(database_url, amqp_url, http_host="127.0.0.1", http_port=free_port())
    supervisor = Supervised(settings, 2, tmp_path / "supervisor.log")
    try:
        assert await supervisor.wait(60) == exits.USAGE
    finally:
        supervisor.kill()
    assert supervisor.events("supervisor.child_misconfigured")
    assert not supervisor.events("supervisor.child_restarted")
    assert f"the broker refused to open the vhost '{missing}'" in supervisor.log_path.read_text()


async def _restarts_of_a_failing_child(
    tmp_path: Path, *, runs_s: float, healthy_after_s: float, restarts: int
) -> list[MutableMapping[str, Any]]:
    """The logs of a supervisor whose one child runs ``runs_s``, exits 1, and so on."""
    failing = (sys.executable, "-c", f"import time; time.sleep({runs_s}); raise SystemExit(1)")
    supervisor = Supervisor(
        Settings(http_port=0, drain_timeout_s=5),
        1,
        tmp_path,
        command=failing,
        backoff=Backoff(initial_s=0.1, max_s=0.4),
        healthy_after_s=healthy_after_s,
    )
    with structlog.testing.capture_logs() as logs:
        running = asyncio.create_task(supervisor.run())

        async def restarted() -> bool:
            assert not running.done(), running
            events = [line["event"] for line in logs]
            return events.count("supervisor.child_restarted") >= restarts

        await wait_for(restarted, within_s=30, what=f"{restarts} restarts")
        supervisor.stop()
        await asyncio.wait_for(running, timeout=10)
    return logs


async def test_a_child_that_keeps_failing_is_restarted_with_growing_delays(tmp_path: Path) -> None:
    logs = await _restarts_of_a_failing_child(tmp_path, runs_s=0.05, healthy_after_s=60, restarts=4)
    died = [line for line in logs if line["event"] == "supervisor.child_died"]
    assert all(line["exit_code"] == 1 for line in died)
    delays = [line["restart_in_s"] for line in died[:4]]
    # 0.1, 0.2, 0.4, then capped at 0.4, each with up to a fifth of jitter.
    for delay, base in zip(delays, [0.1, 0.2, 0.4, 0.4], strict=True):
        assert base * 0.8 - 0.01 <= delay <= base * 1.2 + 0.01, delays
    restarted = [line for line in logs if line["event"] == "supervisor.child_restarted"]
    assert [line["exit_code"] for line in restarted[:4]] == [1, 1, 1, 1]
    assert [line["previous_pid"] for line in restarted[:4]] == [line["pid"] for line in died[:4]]


async def test_a_child_that_ran_healthy_for_a_while_restarts_with_the_first_delay_again(
    tmp_path: Path,
) -> None:
    logs = await _restarts_of_a_failing_child(tmp_path, runs_s=0.3, healthy_after_s=0.2, restarts=3)
    delays = [line["restart_in_s"] for line in logs if line["event"] == "supervisor.child_died"]
    assert all(0.07 <= delay <= 0.13 for delay in delays), delays


async def test_children_that_outlast_the_drain_timeout_are_killed_and_the_exit_is_1(
    tmp_path: Path,
) -> None:
    stubborn = (
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
    )
    supervisor = Supervisor(
        Settings(http_port=0, drain_timeout_s=0.5), 2, tmp_path, command=stubborn
    )
    with structlog.testing.capture_logs() as logs:
        running = asyncio.create_task(supervisor.run())

        async def both_started() -> bool:
            events = [line["event"] for line in logs]
            return events.count("supervisor.child_started") == 2

        await wait_for(both_started, what="two children started")
        await asyncio.sleep(0.5)  # time for them to ignore SIGTERM
        started = asyncio.get_running_loop().time()
        supervisor.stop()
        assert await asyncio.wait_for(running, timeout=30) == exits.FAILURE
        took_s = asyncio.get_running_loop().time() - started
    assert 5.5 <= took_s < 15, took_s  # drain_timeout_s + STOP_MARGIN_S, then the kill
    (timeout,) = [line for line in logs if line["event"] == "supervisor.drain_timeout"]
    assert len(timeout["killed"]) == 2
    stopped = [line for line in logs if line["event"] == "supervisor.child_stopped"]
    assert [line["signal"] for line in stopped] == ["SIGKILL", "SIGKILL"]


def _run(*arguments: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "worker", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", "must be at least 1, not 0"), ("65", "must be at most 64"), ("two", "not a whole")],
)
def test_a_bad_processes_value_is_a_one_line_usage_error(
    value: str, expected: str, tmp_path: Path
) -> None:
    environment = worker_environment(Settings(http_port=0))
    result = _run("--processes", value, env=environment, cwd=tmp_path)
    assert result.returncode == exits.USAGE, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("chatstore: worker --processes: "), result.stderr
    assert expected in result.stderr


def test_a_supervisor_whose_port_is_taken_says_so_in_one_line_before_starting_children(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environment = worker_environment(Settings(http_host="127.0.0.1", http_port=port))
        result = _run("--processes", "2", env=environment, cwd=tmp_path)
    assert result.returncode == exits.USAGE, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"chatstore: cannot use the HTTP port {port}")


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _above(value: Awaitable[int], floor: int) -> bool:
    return await value > floor


async def _depth_is(amqp_url: str, queue: str, expected: int) -> bool:
    return await queue_depth(amqp_url, queue) == expected
