"""Traces from publish to commit (the ``otel`` extra), on the real broker and database.

The spans are read from the SDK's in-memory exporter, so the worker runs in
this process. The tracer provider is global and can be set once a process:
it is set here with a sampler that records only while a test of this module
holds the ``spans`` fixture; every other test sees non-recording spans, as
with the API and no SDK.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yarl
from opentelemetry import context, trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, StatusCode
from opentelemetry.util.types import Attributes
from sqlalchemy.engine import URL
from structlog.testing import capture_logs

from contracts import MessageCreated, Publisher, conversation_archived, message_created
from tests.db import connect, fetch_all
from tests.events import message_created as message_created_dict
from tests.harness import (
    count,
    publish,
    queue_depth,
    queue_has,
    running_worker,
    table_has,
    take_dead_letters,
    wait_for,
)
from worker import exits, topology
from worker.ingest import tracing
from worker.settings import Settings
from worker.tracing import requested_exporters

ROOT = Path(__file__).parent.parent
ROUTING_KEY = "messaging.rabbitmq.destination.routing_key"


class _Switch(Sampler):
    """Records while ``on``; drops (non-recording spans) otherwise."""

    on = False

    def should_sample(
        self,
        parent_context: context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        return SamplingResult(
            Decision.RECORD_AND_SAMPLE if self.on else Decision.DROP, attributes, trace_state
        )

    def get_description(self) -> str:
        return "on while a tracing test runs"


class _Faulty(SpanProcessor):
    """A buggy span processor: raises in ``on_start`` or ``on_end`` while told to."""

    fails_in: str | None = None

    def on_start(self, span: Span, parent_context: context.Context | None = None) -> None:
        if self.fails_in == "on_start":
            raise RuntimeError("a buggy span processor's on_start")

    def on_end(self, span: ReadableSpan) -> None:
        if self.fails_in == "on_end":
            raise RuntimeError("a buggy span processor's on_end")


_SWITCH = _Switch()
_EXPORTER = InMemorySpanExporter()
_FAULTY = _Faulty()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The exporter of every span ended while the test runs."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider(sampler=_SWITCH)
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        provider.add_span_processor(_FAULTY)  # after the exporter: it still gets the spans
        trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider().sampler is _SWITCH  # type: ignore[attr-defined]
    _EXPORTER.clear()
    _SWITCH.on = True
    try:
        yield _EXPORTER
    finally:
        _SWITCH.on = False
        _FAULTY.fails_in = None
        _EXPORTER.clear()


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in spans.get_finished_spans() if span.name == name]


def children(spans: InMemorySpanExporter, parent: ReadableSpan, name: str) -> list[ReadableSpan]:
    assert parent.context is not None
    return [
        span
        for span in named(spans, name)
        if span.parent is not None and span.parent.span_id == parent.context.span_id
    ]


def linked(process_spans: Sequence[ReadableSpan]) -> dict[tuple[int, int], Mapping[str, Any]]:
    """(trace id, span id) of every link of ``process_spans``, with the link's attributes."""
    return {
        (link.context.trace_id, link.context.span_id): dict(link.attributes or {})
        for span in process_spans
        for link in span.links
    }


def new_message(user_id: str = "alice") -> MessageCreated:
    return message_created(
        conversation_id=uuid.uuid4(), user_id=user_id, role="user", content="traced"
    )


def tree(spans: InMemorySpanExporter, root: ReadableSpan) -> str:
    """``root`` and its children as text, links included: for the reader of ``-s``."""

    def line(span: ReadableSpan, depth: int) -> list[str]:
        assert span.context is not None
        own = [
            f"{'  ' * depth}{span.name} [{span.kind.name}] span {span.context.span_id:016x} "
            f"{span.status.status_code.name} {dict(span.attributes or {})}"
        ]
        own += [
            f"{'  ' * depth}  link -> trace {link.context.trace_id:032x} span "
            f"{link.context.span_id:016x} {dict(link.attributes or {})}"
            for link in span.links
        ]
        for child in spans.get_finished_spans():
            if child.parent is not None and child.parent.span_id == span.context.span_id:
                own += line(child, depth + 1)
        return own

    return "\n".join(line(root, 0))


async def stored_ids(database_url: URL) -> set[uuid.UUID]:
    return {row["id"] for row in await fetch_all(database_url, "SELECT id FROM messages")}


async def test_a_batch_is_a_process_span_linked_to_each_producer_with_db_and_settle_children(
    settings: Settings, database_url: URL, amqp_url: str, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("chat-runtime")
    stored = [new_message() for _ in range(4)]
    refused = new_message(user_id="carol")  # no such user: dead-lettered
    producers: dict[uuid.UUID, trace.SpanContext] = {}  # event id -> its publisher's span
    async with Publisher(amqp_url) as publisher:
        for event in stored[:2]:
            with tracer.start_as_current_span("chat.request", kind=SpanKind.PRODUCER) as request:
                await publisher.publish(event)
            producers[event.event_id] = request.get_span_context()
        for event in [*stored[2:], refused]:
            with tracer.start_as_current_span("chat.request", kind=SpanKind.PRODUCER) as request:
                assert publisher.publish_nowait(event)
            producers[event.event_id] = request.get_span_context()
        # Sent from here, in another span: the headers must still be the
        # context of each publish_nowait call, not this one.
        with tracer.start_as_current_span("shutdown"):
            assert (await publisher.close()).complete

    async with running_worker(settings):
        await wait_for(table_has(database_url, "messages", len(stored)), what="the rows")
        await wait_for(queue_has(amqp_url, topology.DLQ, 1), what="the dead letter")
        await wait_for(queue_has(amqp_url, topology.QUEUE, 0), what="an empty queue")

    assert await stored_ids(database_url) == {event.data.message_id for event in stored}
    (letter,) = await take_dead_letters(amqp_url)
    assert letter.reason == "unknown_user"
    assert "traceparent" in letter.headers  # a dead letter keeps its producer's context

    processed = named(spans, "process chat.events")
    assert processed, "no process span"
    broker = yarl.URL(amqp_url)
    links = linked(processed)
    assert links == {
        (producer.trace_id, producer.span_id): {"messaging.message.id": str(event_id)}
        for event_id, producer in producers.items()
    }
    assert sum(span.attributes["messaging.batch.message_count"] for span in processed) == 5  # type: ignore[index,misc]
    for span in processed:
        assert span.kind is SpanKind.CONSUMER
        assert span.parent is None  # a trace of its own, linked to the producers'
        attributes = dict(span.attributes or {})
        assert attributes["messaging.batch.message_count"] == len(span.links)
        assert attributes | {"messaging.batch.message_count": 0} == {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.batch.message_count": 0,
            "messaging.destination.name": "chat.events",
            "messaging.rabbitmq.destination.routing_key": "message.created",
            "server.address": broker.host,
            "server.port": broker.port,
            "chatstore.batch.inserted": attributes["chatstore.batch.inserted"],
            "chatstore.batch.duplicates": 0,
            "chatstore.batch.archived": 0,
            "chatstore.batch.dead_lettered": attributes["chatstore.batch.dead_lettered"],
        }
        (write,) = children(spans, span, "write_batch")
        assert write.status.status_code is StatusCode.UNSET
        assert dict(write.attributes or {}) == {
            "db.system.name": "postgresql",
            "db.namespace": database_url.database,
            "chatstore.write.events": len(span.links),
            "chatstore.write.attempt": 1,
        }
        (settle,) = children(spans, span, "settle chat.events")
        assert settle.attributes is not None
        assert settle.attributes["messaging.operation.type"] == "settle"
        assert settle.attributes["messaging.operation.name"] == "ack"
        assert settle.attributes["messaging.batch.message_count"] == len(span.links)
        assert (
            settle.attributes["chatstore.settle.dead_letters"]
            == (attributes["chatstore.batch.dead_lettered"])
        )
        assert write.end_time is not None
        assert settle.start_time is not None
        assert write.end_time <= settle.start_time  # commit, then settle
    for span in processed:
        print(tree(spans, span))
    outcomes = [dict(span.attributes or {}) for span in processed]
    assert sum(o["chatstore.batch.inserted"] for o in outcomes) == len(stored)  # type: ignore[misc]
    assert sum(o["chatstore.batch.dead_lettered"] for o in outcomes) == 1  # type: ignore[misc]


# Trace headers as other producers, or none, may send them: none gives a link.
STRAY_HEADERS: list[dict[str, Any] | None] = [
    None,
    {"traceparent": "garbage"},
    {"traceparent": 5},
    {"traceparent": bytearray(b"\xff\xfe not text")},
    {"traceparent": ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]},
    {"traceparent": f"00-{'0' * 32}-{'0' * 16}-01"},  # all-zero ids: invalid
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"},  # no flags
    {"tracestate": "vendor=value"},  # a tracestate alone
    {"traceparent": {"nested": "table"}, "tracestate": 7},
]


async def test_events_without_or_with_malformed_trace_headers_are_stored_without_a_link(
    settings: Settings, database_url: URL, amqp_url: str, spans: InMemorySpanExporter
) -> None:
    strays = [[message_created_dict(user_id="alice") for _ in range(2)] for _ in STRAY_HEADERS]
    for events, headers in zip(strays, STRAY_HEADERS, strict=True):
        await publish(amqp_url, events, headers=headers)
    # Well-formed contexts among them, one on another routing key.
    traced = new_message()
    archive = conversation_archived(conversation_id=uuid.uuid4(), user_id="alice")
    tracer = trace.get_tracer("chat-runtime")
    async with Publisher(amqp_url) as publisher:
        with tracer.start_as_current_span("chat.request") as request:
            await publisher.publish(traced)
        with tracer.start_as_current_span("chat.archive") as archiving:
            await publisher.publish(archive)

    async with running_worker(settings):
        await wait_for(table_has(database_url, "messages", 2 * len(strays) + 1), what="the rows")
        await wait_for(queue_has(amqp_url, topology.QUEUE, 0), what="an empty queue")
    assert await stored_ids(database_url) == {
        uuid.UUID(event["data"]["message_id"]) for events in strays for event in events
    } | {traced.data.message_id}
    assert await take_dead_letters(amqp_url) == []  # a stray header is no reason
    processed = named(spans, "process chat.events")
    assert sum(span.attributes["messaging.batch.message_count"] for span in processed) == (  # type: ignore[index,misc]
        2 * len(strays) + 2
    )
    producers = [request.get_span_context(), archiving.get_span_context()]
    assert set(linked(processed)) == {(p.trace_id, p.span_id) for p in producers}
    # A routing key is on the span when its batch has one, else on each link.
    routing_keys = {}
    for span in processed:
        shared = (span.attributes or {}).get(ROUTING_KEY)
        for link in span.links:
            own = (link.attributes or {}).get(ROUTING_KEY)
            assert (own is None) == (shared is not None)
            routing_keys[link.context.span_id] = own or shared
    assert routing_keys == {
        producers[0].span_id: "message.created",
        producers[1].span_id: "conversation.archived",
    }


@pytest.mark.parametrize("fails_in", ["on_start", "on_end"])
async def test_a_span_processor_that_raises_changes_nothing_stored_acked_or_dead_lettered(
    settings: Settings,
    database_url: URL,
    amqp_url: str,
    spans: InMemorySpanExporter,
    fails_in: str,
) -> None:
    # The SDK does not catch what a processor raises: unguarded, it would
    # fail every batch before its write (on_start) or after its ack (on_end).
    _FAULTY.fails_in = fails_in
    events = [new_message() for _ in range(6)]
    async with Publisher(amqp_url) as publisher:
        for event in events:
            await publisher.publish(event)
    with capture_logs() as logs:
        async with running_worker(settings) as worker:
            await wait_for(table_has(database_url, "messages", len(events)), what="the rows")
            await wait_for(queue_has(amqp_url, topology.QUEUE, 0), what="an empty queue")
    assert worker.result() == exits.OK
    assert await stored_ids(database_url) == {event.data.message_id for event in events}
    # Acked: nothing came back to the queue when the worker's channel closed.
    assert await queue_depth(amqp_url, topology.QUEUE) == 0
    assert await take_dead_letters(amqp_url) == []
    # Logged once for each of the three spans, not once a batch.
    failures = [(e["step"], e["span"]) for e in logs if e["event"] == "tracing.failed"]
    step = fails_in.removeprefix("on_")
    assert sorted(failures) == [
        (step, "process chat.events"),
        (step, "settle chat.events"),
        (step, "write_batch"),
    ]


class _Unreadable:
    """A delivery that fails the test if anything of it is read."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"delivery.{name} was read")


def test_a_span_that_does_not_record_reads_nothing_of_the_deliveries(
    spans: InMemorySpanExporter,
) -> None:
    _SWITCH.on = False  # the SDK's sampler says no: a non-recording span
    with tracing.processing([_Unreadable()] * 500) as span:  # type: ignore[list-item]
        assert span is None
        tracing.record_outcome(span, inserted=1, duplicates=0, archived=0, dead_lettered=0)
        with tracing.transaction(database="chatstore", events=500, attempt=1):
            pass
        with tracing.settling(messages=500, dead_letters=0):
            pass
    assert spans.get_finished_spans() == ()


async def test_a_retried_write_is_one_span_per_attempt(
    settings: Settings, database_url: URL, amqp_url: str, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("chat-runtime")
    first = new_message()
    async with running_worker(settings), Publisher(amqp_url) as publisher:
        await publisher.publish(first)
        await wait_for(table_has(database_url, "messages", 1), what="the first row")
        # The next write waits for the test's lock on the conversation; its
        # backend is terminated meanwhile, so the attempt fails (transient)
        # and the next, on a new connection, commits.
        lock = await connect(database_url)
        try:
            async with lock.transaction():
                await lock.execute(
                    "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE",
                    first.data.conversation_id,
                )
                with tracer.start_as_current_span(
                    "chat.request", kind=SpanKind.PRODUCER
                ) as producer:
                    await publisher.publish(
                        event := message_created(
                            conversation_id=first.data.conversation_id,
                            user_id="alice",
                            role="assistant",
                            content="traced",
                        )
                    )
                await wait_for(
                    lambda: _a_backend_waits_for_a_lock(database_url), what="the lock wait"
                )
                await fetch_all(
                    database_url,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
        finally:
            await lock.close()
        await wait_for(table_has(database_url, "messages", 2), what="the second row")
    assert event.data.message_id in await stored_ids(database_url)
    (process,) = [
        span
        for span in named(spans, "process chat.events")
        if producer.get_span_context().span_id in {link.context.span_id for link in span.links}
    ]
    attempts = sorted(
        children(spans, process, "write_batch"),
        key=lambda span: span.attributes["chatstore.write.attempt"],  # type: ignore[index,arg-type,return-value]
    )
    assert [span.attributes["chatstore.write.attempt"] for span in attempts] == [1, 2]  # type: ignore[index]
    failed, committed = attempts
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"]
    assert [event.name for event in failed.events] == ["exception"]
    assert committed.status.status_code is StatusCode.UNSET
    assert len(children(spans, process, "settle chat.events")) == 1


async def _a_backend_waits_for_a_lock(database_url: URL) -> bool:
    rows = await fetch_all(
        database_url,
        "SELECT count(*) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    return int(rows[0]["n"]) > 0


# A process without OpenTelemetry: every import of it fails, as when the
# extra is not installed. It publishes with the Publisher and runs the worker.
_WITHOUT_OPENTELEMETRY = """
import asyncio, json, sys, uuid

class _NoOpenTelemetry:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoOpenTelemetry())

import contracts.tracing, worker.ingest.tracing
from sqlalchemy.engine import make_url
from contracts import Publisher, message_created
from contracts.testing import InMemoryPublisher
from tests.harness import running_worker, table_has, wait_for, worker_settings
from worker.tracing import configure

async def main(database_url, amqp_url):
    events = [
        message_created(conversation_id=uuid.uuid4(), user_id="alice", role="user", content="x")
        for _ in range(3)
    ]
    async with Publisher(amqp_url) as publisher:
        await publisher.publish(events[0])
        assert all(publisher.publish_nowait(event) for event in events[1:])
    async with running_worker(worker_settings(database_url, amqp_url)):
        await wait_for(table_has(make_url(database_url), "messages", 3))
    double = InMemoryPublisher()
    double.publish_nowait(events[0])
    return {
        "double's headers": double.messages[0].headers,
        "configured": configure(links_per_span=500),
        "guards": [contracts.tracing.trace is None, worker.ingest.tracing.trace is None],
        "loaded": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
    }

print("RESULT " + json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
"""


async def test_without_opentelemetry_the_publisher_and_the_worker_work_as_before(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    url = database_url.render_as_string(hide_password=False)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _WITHOUT_OPENTELEMETRY, url, amqp_url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "OTEL_TRACES_EXPORTER": "console"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert json.loads(line.removeprefix("RESULT ")) == {
        "double's headers": {},
        "configured": False,  # asked for, but not installed: a warning, no error
        "guards": [True, True],
        "loaded": [],
    }
    assert "tracing.unavailable" in result.stdout + result.stderr
    assert await count(database_url, "messages") == 3
    assert await take_dead_letters(amqp_url) == []


def _configure_in_a_process(
    environment: dict[str, str], *, provider_first: bool = False
) -> subprocess.CompletedProcess[str]:
    # provider_first: a provider is set before, as opentelemetry-instrument does.
    probe = (
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        f"if {provider_first}:\n"
        "    trace.set_tracer_provider(TracerProvider())\n"
        "from worker.tracing import configure\n"
        "print('CONFIGURED', configure(links_per_span=500))\n"
        "provider = trace.get_tracer_provider()\n"
        "print('LINKS', getattr(getattr(provider, '_span_limits', None), 'max_links', None))\n"
        "with trace.get_tracer('probe').start_as_current_span('probe-span'):\n"
        "    pass\n"
    )
    return subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **environment},
        timeout=30,
    )


def test_the_worker_configures_the_sdk_only_when_the_environment_asks_for_traces() -> None:
    asked = _configure_in_a_process({"OTEL_TRACES_EXPORTER": "console"})
    assert asked.returncode == 0, asked.stderr
    assert "CONFIGURED True" in asked.stdout
    assert "LINKS 500" in asked.stdout  # a batch's links all fit
    exported = asked.stdout[asked.stdout.index("{") :]
    assert json.loads(exported)["name"] == "probe-span"  # exported at exit
    assert '"service.name": "chatstore"' in exported

    not_asked = _configure_in_a_process({})
    assert not_asked.returncode == 0, not_asked.stderr
    assert "CONFIGURED False" in not_asked.stdout
    assert "probe-span" not in not_asked.stdout


def test_a_link_limit_below_the_batch_size_is_logged_for_a_kept_or_an_own_provider() -> None:
    kept = _configure_in_a_process({}, provider_first=True)  # the SDK's default: 128
    assert kept.returncode == 0, kept.stderr
    assert "CONFIGURED False" in kept.stdout
    assert "LINKS 128" in kept.stdout
    (warning,) = [line for line in kept.stdout.splitlines() if "tracing.link_limit_low" in line]
    assert "limit=128" in warning
    assert "batch_size=500" in warning

    enough = _configure_in_a_process({"OTEL_SPAN_LINK_COUNT_LIMIT": "500"}, provider_first=True)
    assert enough.returncode == 0, enough.stderr
    assert "LINKS 500" in enough.stdout
    assert "tracing.link_limit_low" not in enough.stdout + enough.stderr

    own = _configure_in_a_process(
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SPAN_LINK_COUNT_LIMIT": "100"}
    )
    assert own.returncode == 0, own.stderr
    assert "CONFIGURED True" in own.stdout
    assert "LINKS 100" in own.stdout
    assert "tracing.link_limit_low" in own.stdout


def _worker_command(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "worker"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **environment},
        timeout=60,
    )


def test_an_exporter_that_is_not_installed_stops_the_worker_with_one_line_and_exit_2() -> None:
    result = _worker_command({"OTEL_TRACES_EXPORTER": "zipkin_json"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "chatstore: OTEL_TRACES_EXPORTER: no exporter 'zipkin_json' is installed "
        "(for otlp: pip install opentelemetry-exporter-otlp)"
    ]


def test_a_span_limit_that_is_not_a_number_stops_the_worker_with_one_line_and_exit_2() -> None:
    for variable in ["OTEL_SPAN_LINK_COUNT_LIMIT", "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"]:
        result = _worker_command({"OTEL_TRACES_EXPORTER": "console", variable: "abc"})
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [
            f"chatstore: {variable} must be a non-negative integer but got abc"
        ]


def test_an_exporter_whose_own_import_fails_stops_the_worker_with_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    # An installed exporter package whose dependency is missing, as the
    # gRPC exporter is without grpcio: its entry point is found, its import fails.
    (tmp_path / "broken_exporter.py").write_text("import grpc_is_not_installed\n")
    dist_info = tmp_path / "broken_exporter-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-exporter\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[opentelemetry_traces_exporter]\nbroken = broken_exporter:BrokenExporter\n"
    )
    result = _worker_command({"OTEL_TRACES_EXPORTER": "broken", "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "chatstore: OTEL_TRACES_EXPORTER: the exporter 'broken' could not be set up: "
        "ModuleNotFoundError: No module named 'grpc_is_not_installed'"
    ]


@pytest.mark.parametrize(
    ("environment", "exporters"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "console, otlp"}, ["console", "otlp"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318"}, ["otlp"]),
    ],
)
def test_the_exporters_asked_for(environment: dict[str, str], exporters: list[str]) -> None:
    assert requested_exporters(environment) == exporters
