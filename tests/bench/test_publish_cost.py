"""What ``publish_nowait`` costs the chat runtime per call, while the sender runs.

Deselected by default; run with ``scripts/test -m bench -s tests/bench``.
"""

from __future__ import annotations

import statistics
import time
import uuid

import pytest

from contracts import Publisher, message_created
from tests.harness import declare_topology, queue_has, wait_for
from worker import topology

CALLS = 50_000


@pytest.mark.bench
@pytest.mark.timeout(300)
async def test_publish_nowait_costs_the_caller_microseconds(amqp_url: str) -> None:
    await declare_topology(amqp_url)
    conversation_id = uuid.uuid4()
    events = [
        message_created(conversation_id=conversation_id, user_id="u", role="user", content="hi")
        for _ in range(CALLS)
    ]
    costs_ns: list[int] = []
    async with Publisher(amqp_url, buffer_size=CALLS) as publisher:
        for event in events:
            started = time.perf_counter_ns()
            publisher.publish_nowait(event)
            costs_ns.append(time.perf_counter_ns() - started)
        await wait_for(queue_has(amqp_url, topology.QUEUE, CALLS), within_s=120)
    costs_us = sorted(cost / 1000 for cost in costs_ns)
    p50, p99 = costs_us[len(costs_us) // 2], costs_us[int(len(costs_us) * 0.99)]
    print(
        f"\npublish_nowait over {CALLS} calls: mean {statistics.fmean(costs_us):.2f} us, "
        f"p50 {p50:.2f} us, p99 {p99:.2f} us, max {costs_us[-1]:.1f} us"
    )
    assert publisher.stats.dropped == 0
