"""The broker's floor for scenario (d): ``python -m worker.tools.bench.bare_consumer``.

A consumer that does nothing but receive and ack, on the same quorum queue
as the worker, in a process of its own (so that it shares no event loop with
the publisher): what publish-to-deliver costs on this broker at the rate the
bench publishes. It notes each delivery's wall-clock arrival and keeps the
body; only after the last delivery does it read each body's ``occurred_at``
(the instant it was published), so the delivery path stays bare.

Instructions (one JSON line, see ``worker.tools.bench.pipes``): ``url``,
``count`` (deliveries to wait for, warm-up included), ``warm_up``,
``prefetch``, ``ack_every`` and ``timeout_s``. It says ``ready`` once it
consumes and ``warm`` after the warm-up deliveries, and ends with
``{"latencies": [seconds, ...], "stamps": [epoch seconds, ...]}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage

from worker import topology
from worker.ingest.delivery import delivery_tag
from worker.tools.bench.pipes import read_instructions, say


async def main(config: dict[str, Any]) -> dict[str, list[float]]:
    count, warm_up, ack_every = (
        int(config["count"]),
        int(config["warm_up"]),
        int(config["ack_every"]),
    )
    arrivals: list[tuple[float, bytes]] = []
    done = asyncio.Event()
    connection = await aiormq.connect(config["url"])
    try:
        channel = await connection.channel(publisher_confirms=False)
        await channel.basic_qos(prefetch_count=int(config["prefetch"]))

        async def on_delivery(message: DeliveredMessage) -> None:
            arrivals.append((time.time(), message.body))
            seen = len(arrivals)
            if seen == warm_up:
                say("warm")
            if seen % ack_every == 0 or seen == count:
                await channel.basic_ack(delivery_tag(message), multiple=True)
            if seen == count:
                done.set()

        await channel.basic_consume(topology.QUEUE, on_delivery, no_ack=False)
        say("ready")
        await asyncio.wait_for(done.wait(), timeout=float(config["timeout_s"]))
    finally:
        await connection.close()
    stamps = [_published_at(body) for _, body in arrivals]
    return {
        "latencies": [
            arrived - stamp for (arrived, _), stamp in zip(arrivals, stamps, strict=True)
        ],
        "stamps": stamps,
    }


def _published_at(body: bytes) -> float:
    """The event's ``occurred_at``: the publisher's wall clock when it sent it."""
    return datetime.fromisoformat(json.loads(body)["occurred_at"]).timestamp()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(read_instructions()))), flush=True)
