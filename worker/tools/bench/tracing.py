"""The cost of tracing per event: the worker's flush path with tracing off and on.

Each round fills the queue with the same events, each carrying a W3C
``traceparent`` as the Publisher would send it, and drains it through the
worker's own :class:`~worker.ingest.flush.Flusher` (decode, one transaction per
batch, ack), timing only the ``flush`` calls of the last ``events``: the wait
for deliveries is the broker's, the same in both modes, and the first batch
of a fresh process (statements prepared, caches filled, the SDK's first span)
is a warm-up, not timed.

- **off**: the OpenTelemetry API with no SDK configured (the ``otel`` extra
  installed, no ``OTEL_TRACES_EXPORTER``): no-op spans, no link read.
- **on**: the SDK, every batch sampled, a ``process`` span with a link per
  event, its ``write_batch`` and ``settle`` children, through a
  ``BatchSpanProcessor`` to an exporter that discards what it gets. A real
  exporter serialises and sends in the processor's thread, which this leaves
  out.

A tracer provider is set once a process and cannot be removed, so each
(round, mode) runs in a fresh interpreter; the modes alternate which goes
first in each round, so a machine that slows down over the run weighs on both.
The result is the median of the rounds and the per-round differences.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
import statistics
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import aiormq
from pamqp.commands import Basic

from contracts import message_created
from worker import topology
from worker.tools.bench.goals import Goal
from worker.tools.progress import Progress
from worker.tools.sandbox import Sandbox, execute

USERS: Final = [f"bench-trace-user-{n}" for n in range(20)]
_RESULT: Final = "RESULT "


class TracingBenchError(Exception):
    """A measuring process failed: its last lines say why."""


def _bodies(events: int) -> list[tuple[bytes, str]]:
    """``events`` valid message.created bodies, each with a traceparent of its own."""
    conversations = [(uuid.uuid4(), USERS[n % len(USERS)]) for n in range(max(1, events // 10))]
    at = datetime.now(UTC)
    made = []
    for n in range(events):
        conversation_id, user_id = conversations[n % len(conversations)]
        event = message_created(
            conversation_id=conversation_id,
            user_id=user_id,
            role="user" if n % 2 else "assistant",
            content=f"message {n}: " + "x" * 100,
            metadata={"model": "bench", "n": n},
            created_at=at,
        )
        traceparent = f"00-{uuid.uuid4().hex}-{random.getrandbits(64) or 1:016x}-01"
        made.append((event.model_dump_json().encode(), traceparent))
    return made


async def _refill(environment: Sandbox, bodies: list[tuple[bytes, str]]) -> None:
    await execute(environment.dsn, "TRUNCATE messages, conversations")
    await execute(
        environment.dsn,
        "INSERT INTO users (id) SELECT unnest($1::varchar[]) ON CONFLICT DO NOTHING",
        USERS,
    )
    connection = await aiormq.connect(environment.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.queue_purge(topology.QUEUE)
        for start in range(0, len(bodies), 1000):
            confirms = await asyncio.gather(
                *(
                    channel.basic_publish(
                        body,
                        exchange=topology.EXCHANGE,
                        routing_key="message.created",
                        properties=Basic.Properties(
                            delivery_mode=2,
                            content_type="application/json",
                            message_type="message.created",
                            headers={"traceparent": traceparent},
                        ),
                    )
                    for body, traceparent in bodies[start : start + 1000]
                )
            )
            if not all(isinstance(confirm, Basic.Ack) for confirm in confirms):
                raise TracingBenchError("the broker refused a publish; is the queue full?")
    finally:
        await connection.close()


async def _measure_in_a_process(environment: Sandbox, config: dict[str, Any]) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from worker.tools.bench.tracing import measure_main; measure_main()",
        json.dumps(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith(_RESULT)]
    if process.returncode != 0 or not lines:
        tail = (err or out).decode(errors="replace").strip().splitlines()[-3:]
        raise TracingBenchError(f"the {config['mode']} measurement failed: {' | '.join(tail)}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(_RESULT))
    return result


async def run_tracing_cost(
    environment: Sandbox, *, events: int = 5_000, rounds: int = 5, batch_size: int = 500
) -> dict[str, Any]:
    """Microseconds per event in ``Flusher.flush``, tracing off and on (see the module).

    The queue of ``environment`` must exist (``declare_topology``); its
    tables and queue are emptied before each measurement.
    """
    bodies = _bodies(batch_size + events)  # a warm-up batch, then the timed ones
    config = {
        "database_url": environment.settings.database_url,
        "amqp_url": environment.amqp_url,
        "events": events,
        "warmup": batch_size,
        "batch_size": batch_size,
    }
    per_event: dict[str, list[float]] = {"off": [], "on": []}
    progress = Progress(2 * rounds, "tracing cost")
    try:
        for round_number in range(rounds):
            order = ("off", "on") if round_number % 2 == 0 else ("on", "off")
            for mode in order:
                await _refill(environment, bodies)
                measured = await _measure_in_a_process(environment, config | {"mode": mode})
                if measured["events"] != events:
                    raise TracingBenchError(f"{mode}: flushed {measured['events']} of {events}")
                per_event[mode].append(measured["flush_s"] / events * 1e6)
                progress.advance()
    finally:
        progress.done()
    off, on = per_event["off"], per_event["on"]
    differences = [b - a for a, b in zip(off, on, strict=True)]
    return {
        "events": events,
        "rounds": rounds,
        "batch_size": batch_size,
        "off_us_per_event": round(statistics.median(off), 2),
        "on_us_per_event": round(statistics.median(on), 2),
        "overhead_us_per_event": round(statistics.median(differences), 2),
        "overhead_percent": round(100 * statistics.median(differences) / statistics.median(off), 1),
        "off_spread_us": [round(min(off), 2), round(max(off), 2)],
        "on_spread_us": [round(min(on), 2), round(max(on), 2)],
    }


OTEL_MISSING: Final = "the otel extra is not installed (pip install 'chatstore[otel]')"


@dataclass
class TracingCost:
    """The tracing scenario, once it ran (or why it could not)."""

    result: dict[str, Any] | None = None
    skipped: str | None = None

    def document(self) -> dict[str, Any]:
        if self.skipped is not None:
            return {"skipped": self.skipped}
        return dict(self.result or {})

    def table(self) -> list[str]:
        if self.result is None and self.skipped is None:
            return []
        lines = [
            "| tracing | flush path, us/event, off | on | added per event | added |",
            "| --- | --- | --- | --- | --- |",
        ]
        if (found := self.result) is None:
            return [*lines, f"| skipped: {self.skipped} | | | | |"]
        off, on = found["off_spread_us"], found["on_spread_us"]
        return [
            *lines,
            f"| {found['events']:,} events x {found['rounds']} rounds, batches of "
            f"{found['batch_size']} | {found['off_us_per_event']:g} ({off[0]:g}-{off[1]:g}) "
            f"| {found['on_us_per_event']:g} ({on[0]:g}-{on[1]:g}) "
            f"| {found['overhead_us_per_event']:g} us | {found['overhead_percent']:g} % |",
        ]

    def goals(self) -> list[Goal]:
        return []  # a cost to report; issue 12 sets no goal for it


async def run_tracing(environment: Sandbox, *, events: int, rounds: int, into: TracingCost) -> None:
    """Measure into ``into``, or say why not: without the SDK there is nothing to turn on."""
    if importlib.util.find_spec("opentelemetry") is None or (
        importlib.util.find_spec("opentelemetry.sdk") is None
    ):
        into.skipped = OTEL_MISSING
        return
    into.result = await run_tracing_cost(environment, events=events, rounds=rounds)


# The measuring process.


def measure_main() -> None:
    """Entry of a measuring process: its configuration in argv[1], its result on stdout."""
    import logging

    import structlog

    # Only the result line goes to stdout.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    config = json.loads(sys.argv[1])
    result = asyncio.run(_flush_everything(config))
    print(_RESULT + json.dumps(result), flush=True)


def _install_recording_sdk(batch_size: int) -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Discarding(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(span_limits=SpanLimits(max_links=batch_size))
    provider.add_span_processor(BatchSpanProcessor(Discarding()))
    trace.set_tracer_provider(provider)
    return provider


async def _flush_everything(config: dict[str, Any]) -> dict[str, Any]:
    from sqlalchemy import text

    from worker.database import create_engine
    from worker.health import Readiness
    from worker.ingest.backoff import Backoff
    from worker.ingest.delivery import Delivery
    from worker.ingest.flush import Flusher
    from worker.metrics import Metrics
    from worker.settings import Settings

    batch_size: int = config["batch_size"]
    warmup: int = config["warmup"]
    total: int = warmup + config["events"]
    provider = _install_recording_sdk(batch_size) if config["mode"] == "on" else None
    settings = Settings(database_url=config["database_url"], amqp_url=config["amqp_url"])
    engine = create_engine(settings)
    connection = await aiormq.connect(config["amqp_url"])
    try:
        for _ in range(2):  # both pooled connections open before the clock starts
            async with engine.connect() as warm:
                await warm.execute(text("SELECT 1"))
        channel = await connection.channel(publisher_confirms=False)
        await channel.basic_qos(prefetch_count=batch_size)
        dead_letters = await connection.channel(publisher_confirms=True)
        flusher = Flusher(
            engine,
            dead_letters,
            backoff=Backoff(0.05, 0.5),
            metrics=Metrics(),
            readiness=Readiness(),
        )
        pending: deque[Delivery] = deque()
        arrived = asyncio.Event()

        async def on_delivery(delivery: Delivery) -> None:
            pending.append(delivery)
            arrived.set()

        await channel.basic_consume(topology.QUEUE, on_delivery, no_ack=False)
        flushed = batches = 0
        seconds = 0.0
        while flushed < total:
            wanted = min(batch_size, total - flushed)
            while len(pending) < wanted:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), timeout=60)
            batch = [pending.popleft() for _ in range(wanted)]
            started = time.perf_counter()
            await flusher.flush(batch)
            if flushed >= warmup:
                seconds += time.perf_counter() - started
                batches += 1
            flushed += len(batch)
    finally:
        await connection.close()
        await engine.dispose()
        if provider is not None:
            provider.shutdown()
    return {"events": flushed - warmup, "batches": batches, "flush_s": seconds}
