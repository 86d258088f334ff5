"""A real Prometheus scrapes a real worker on loopback and evaluates the shipped rules.

The worker writes to a PostgreSQL server of this test's own (initdb in a
temporary directory, on a free port: the system server is never touched).
Stopping that server makes the worker not ready at its next write, and
ChatstoreWorkerNotReady goes pending, then firing; starting it again makes
the worker ready, and the alert is gone from Prometheus' /api/v1/alerts.
The rules are those of deploy/monitoring/, generated from the same source
with the alert's ``for`` at 5 s instead of 5 minutes. Every server started
here is stopped here by its own pid (Prometheus) or data directory (pg_ctl).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from sqlalchemy.engine import make_url

from deploy.monitoring import generate
from tests.events import message_created
from tests.harness import (
    WorkerProcess,
    declare_topology,
    free_port,
    publish,
    wait_for,
    worker_settings,
)
from tests.monitoring import as_promql, dashboard_queries, tool
from tests.postgres_pair import SERVER_USER, Server, missing_requirement, run_program
from worker import migrate

ALERT: Final = "ChatstoreWorkerNotReady"
DATABASE: Final = "chatstore_alerts"
USER: Final = "alice"


@contextlib.contextmanager
def private_postgres() -> Iterator[Server]:
    """A PostgreSQL server of its own (initdb, trust), stopped and removed on exit."""
    if (problem := missing_requirement()) is not None:
        pytest.fail(f"a private PostgreSQL server cannot be started: {problem}", pytrace=False)
    root = Path(tempfile.mkdtemp(prefix="chatstore-pg-alerts-"))
    server = Server("alerts", root / "data", free_port(), root, root / "server.log")
    try:
        shutil.chown(root, SERVER_USER)
        run_program("initdb", "-D", str(server.data), "-A", "trust", "-U", SERVER_USER, "--no-sync")
        server.start()
        yield server
    finally:
        if server.data.exists() and server.running():
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


class Prometheus:
    """A ``prometheus`` process on a free loopback port, and its HTTP API."""

    def __init__(self, directory: Path, worker_port: int) -> None:
        rules = directory / "chatstore.rules.yaml"
        rules.write_text(generate.rules_file(for_overrides={ALERT: "5s"}))
        config = {
            # A 2 s scrape timeout: on a loaded machine a scrape can take over
            # 1 s, and a failed one makes `up` 0 and restarts the pending
            # alert's `for`. The timeout may not exceed the interval.
            "global": {"scrape_interval": "2s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": "chatstore",
                    "scrape_timeout": "2s",
                    "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
                }
            ],
        }
        self._config = directory / "prometheus.yml"
        self._config.write_text(yaml.safe_dump(config))
        self._data = directory / "data"
        self.log = directory / "prometheus.log"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={self._config}",
                    f"--storage.tsdb.path={self._data}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _get(self, path: str) -> Any:
        assert self.process is not None, "not started"
        if self.process.poll() is not None:
            code = self.process.returncode
            raise AssertionError(f"prometheus exited with {code}; see {self.log}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
            return json.loads(reply.read()) if path.startswith("/api/") else reply.status

    async def ready(self) -> bool:
        try:
            return bool(await asyncio.to_thread(self._get, "/-/ready") == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    async def query(self, expression: str) -> list[dict[str, Any]]:
        quoted = urllib.parse.quote(expression)
        answer = await asyncio.to_thread(self._get, f"/api/v1/query?query={quoted}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    async def alerts(self, name: str) -> list[dict[str, Any]]:
        """The active (pending or firing) alerts called ``name``."""
        answer = await asyncio.to_thread(self._get, "/api/v1/alerts")
        return [a for a in answer["data"]["alerts"] if a["labels"]["alertname"] == name]


async def test_the_not_ready_alert_fires_while_postgresql_is_stopped_and_resolves_once_it_is_back(
    amqp_url: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    with private_postgres() as server:
        url = f"postgresql://{SERVER_USER}@127.0.0.1:{server.port}/{DATABASE}"
        migrated = make_url(url).set(drivername="postgresql+asyncpg")
        await migrate.ensure_database(migrated)
        await asyncio.to_thread(migrate.upgrade, migrated)
        await server.fetch("INSERT INTO users (id) VALUES ($1)", USER, database=DATABASE)
        await declare_topology(amqp_url)

        worker_port = free_port()
        settings = worker_settings(url, amqp_url, http_host="127.0.0.1", http_port=worker_port)
        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        prometheus = Prometheus(tmp_path, worker_port)
        try:
            await worker.wait_consuming()
            prometheus.start()
            await wait_for(prometheus.ready, within_s=20, what="prometheus ready")

            async def scraped_ready() -> bool:
                return bool(await prometheus.query('chatstore_ready{job="chatstore"} == 1'))

            await wait_for(scraped_ready, within_s=20, what="a scrape with chatstore_ready 1")
            assert await prometheus.alerts(ALERT) == []

            # PostgreSQL goes away; the worker notices at its next write.
            server.stop("fast")
            stopped = time.monotonic()
            event = message_created(user_id=USER, content="stored after the outage")
            await publish(amqp_url, [event])
            states: list[str] = []

            async def firing() -> bool:
                alerts = await prometheus.alerts(ALERT)
                states.extend(a["state"] for a in alerts if a["state"] not in states[-1:])
                return [a["state"] for a in alerts] == ["firing"]

            await wait_for(firing, within_s=60, what=f"{ALERT} firing", processes=[worker])
            fired_after_s = time.monotonic() - stopped
            (alert,) = await prometheus.alerts(ALERT)
            assert states[0] == "pending", states  # the 5 s of `for` were waited out
            assert alert["labels"] == {
                "alertname": ALERT,
                "job": "chatstore",
                "instance": f"127.0.0.1:{worker_port}",
                "severity": "warning",
            }
            assert alert["annotations"]["runbook_url"].endswith("#chatstoreworkernotready")
            assert await asyncio.to_thread(_readyz, worker_port) == 503

            # PostgreSQL is back: the held batch commits, the worker is ready again.
            server.start()
            back = time.monotonic()

            async def resolved() -> bool:
                return await prometheus.alerts(ALERT) == []

            await wait_for(resolved, within_s=60, what=f"{ALERT} resolved", processes=[worker])
            resolved_after_s = time.monotonic() - back
            assert await prometheus.query('chatstore_ready{job="chatstore"} == 1')
            rows = await server.fetch(
                "SELECT content FROM messages WHERE id = $1",
                event["data"]["message_id"],
                database=DATABASE,
            )
            assert [row["content"] for row in rows] == ["stored after the outage"]
            await _dashboard_queries_run(prometheus)
            await worker.stop(settings.drain_timeout_s + 10)
        finally:
            prometheus.stop()
            worker.kill()
    print(
        f"\n{ALERT}: {' -> '.join(states)} {fired_after_s:.1f} s after PostgreSQL stopped; "
        f"resolved {resolved_after_s:.1f} s after it was back; "
        f"test {time.monotonic() - started:.1f} s\n"
        f"/api/v1/alerts while firing: {json.dumps(alert, sort_keys=True)}"
    )


# Dashboard queries that have data from one plain worker after an outage; the
# others are about supervisors (--processes N), dead letters, or RabbitMQ's plugin.
WITH_DATA: Final = (
    "Events by outcome",
    "Batch size",
    "Flush time",
    "Batches per second",
    "Publish-to-commit lag",
    "Retries by SQLSTATE",
    "Readiness",
    "Workers ready",
)


async def _dashboard_queries_run(prometheus: Prometheus) -> None:
    """Every dashboard query runs on this Prometheus; those about a worker have data."""
    model = json.loads(generate.DASHBOARD.read_text(encoding="utf-8"))
    titles = {panel["id"]: panel["title"] for panel in model["panels"]}

    async def stored_scraped() -> bool:  # the commit's counter, in two scrapes (for rate)
        inserted = 'chatstore_events_total{outcome="inserted"}'
        return bool(await prometheus.query(f"count_over_time({inserted}[1m]) >= 2"))

    await wait_for(stored_scraped, within_s=20, what="the stored event in a scrape")
    empty = set()
    for key, expr in dashboard_queries(model).items():
        if not await prometheus.query(as_promql(expr)):  # an invalid query raises
            empty.add(titles[int(key.removeprefix("panel").split("_")[0])])
    assert empty.isdisjoint(WITH_DATA), f"no data: {sorted(empty & set(WITH_DATA))}"


def _readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
