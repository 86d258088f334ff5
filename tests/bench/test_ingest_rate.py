"""Ingest rate of one ``chatstore worker`` process on a pre-filled queue.

Deselected by default; run with ``scripts/test -m bench -s tests/bench``.
CHATSTORE_BENCH_EVENTS sets the queue's size (default 50,000).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.events import body, message_created
from tests.harness import (
    WorkerProcess,
    add_users,
    count,
    declare_topology,
    publish,
    table_has,
    wait_for,
    worker_settings,
)

EVENTS = int(os.environ.get("CHATSTORE_BENCH_EVENTS", "50000"))


@pytest.mark.bench
@pytest.mark.timeout(900)
async def test_one_worker_drains_a_prefilled_queue(
    database_url: URL, amqp_url: str, tmp_path: Path
) -> None:
    users = [f"user-{n}" for n in range(100)]
    await add_users(database_url, *users)
    await declare_topology(amqp_url)
    conversations = [(str(uuid.uuid4()), users[n % 100]) for n in range(EVENTS // 10)]
    events = [
        body(
            message_created(
                conversation_id=conversations[n % len(conversations)][0],
                user_id=conversations[n % len(conversations)][1],
                role="assistant" if n % 2 else "user",
                content=f"benchmark message {n} " + "lorem ipsum " * 8,
                metadata={"model": "bench", "tokens": n % 500},
            )
        )
        for n in range(EVENTS)
    ]
    await publish(amqp_url, events)

    worker = WorkerProcess(worker_settings(database_url, amqp_url), tmp_path / "w.log")
    worker.start()
    try:
        # The clock starts at the first committed row, not at process start.
        await wait_for(lambda: _any_rows(database_url), within_s=60)
        started = time.perf_counter()
        first = await count(database_url, "messages")
        await wait_for(table_has(database_url, "messages", EVENTS), within_s=600)
        elapsed = time.perf_counter() - started
        worker.send(signal.SIGTERM)
        assert await worker.wait() == 0
    finally:
        worker.kill()
    rate = (EVENTS - first) / elapsed
    print(f"\none worker: {EVENTS - first} events in {elapsed:.2f} s = {rate:,.0f} events/s")


async def _any_rows(database_url: URL) -> bool:
    return await count(database_url, "messages") > 0
