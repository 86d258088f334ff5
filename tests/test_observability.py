"""Logs and metrics: what an operator sees, and what must never appear there."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import URL

from tests.events import message_created
from tests.harness import (
    add_users,
    declare_topology,
    free_port,
    publish,
    queue_has,
    running_worker,
    table_has,
    wait_for,
    worker_settings,
)
from worker import topology


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_events_by_outcome_and_reason_and_logs_hide_secrets(
    database_url: URL, amqp_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await add_users(database_url, "alice")
    await declare_topology(amqp_url)
    port = free_port()
    # Local PostgreSQL trusts loopback, so this password is sent nowhere that
    # checks it; it must still never be printed.
    with_password = database_url.set(password="db-pa55word")
    settings = worker_settings(with_password, amqp_url, http_port=port, http_host="127.0.0.1")
    secret_content = "the-secret-content-of-a-chat"
    events = [message_created(user_id="alice", content=secret_content) for _ in range(7)]
    async with running_worker(settings):
        await publish(amqp_url, [*events, b"not json", events[0]])
        await wait_for(table_has(database_url, "messages", 7))
        await wait_for(queue_has(amqp_url, topology.DLQ, 1))
        await wait_for(queue_has(amqp_url, topology.QUEUE, 0))
        samples = await asyncio.to_thread(scrape, port)

    def events_total(outcome: str, reason: str = "") -> float:
        return samples[("chatstore_events_total", (("outcome", outcome), ("reason", reason)))]

    assert events_total("inserted") == 7
    assert events_total("duplicate") == 1
    assert events_total("dead_lettered", "malformed") == 1
    assert samples[("chatstore_batch_size_sum", ())] == 9
    assert samples[("chatstore_publish_to_commit_seconds_count", ())] == 8
    assert samples[("chatstore_ready", ())] == 1

    output = capsys.readouterr()
    logged = output.out + output.err
    assert "batch.flushed" in logged
    assert "db-pa55word" not in logged
    assert secret_content not in logged
    assert "guest:guest" not in logged
