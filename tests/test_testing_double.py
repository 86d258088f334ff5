"""contracts.testing.InMemoryPublisher: Publisher's interface, and the wire's verdict.

The double is a fake for pure logic, so these tests need no server. What ties
it to the real thing: its interface is compared with ``Publisher``'s (names,
signatures, the stats and the close report), the bodies it keeps with what
``Publisher`` sends, and the README's example is this file's, run here.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from contracts import (
    CloseReport,
    ConversationArchived,
    MessageCreated,
    Publisher,
    PublisherStats,
    Reason,
    conversation_archived,
    message_created,
)
from contracts.publisher import _message, _Outgoing
from contracts.publishing import EventPublisher, PublisherCloseReport, PublisherCounters
from contracts.routing import EXCHANGE
from contracts.testing import ContractViolationError, InMemoryPublisher
from contracts.tracing import trace_headers

ROOT = Path(__file__).resolve().parent.parent
# What the double has beyond Publisher's interface: the helpers for assertions.
ASSERTION_HELPERS = frozenset(
    {
        "clear",
        "closed",
        "conversations_archived",
        "events",
        "messages",
        "messages_created",
        "of_conversation",
        "refused",
    }
)


# The README's example, from "async def answer" to its last test (the README
# adds the imports, which are at the top here).
async def answer(publisher: EventPublisher, conversation_id: uuid.UUID, question: str) -> str:
    """A chat runtime's handler: stores the question, replies, stores the reply."""
    publisher.publish_nowait(
        message_created(
            conversation_id=conversation_id, user_id="alice", role="user", content=question
        )
    )
    reply = f"You asked: {question}"
    await publisher.publish(
        message_created(
            conversation_id=conversation_id, user_id="alice", role="assistant", content=reply
        )
    )
    return reply


@pytest.mark.asyncio
async def test_a_question_publishes_the_question_and_the_reply() -> None:
    publisher = InMemoryPublisher()
    conversation_id = uuid.uuid4()

    reply = await answer(publisher, conversation_id, "Is it raining?")

    assert [(m.data.role, m.data.content) for m in publisher.messages_created] == [
        ("user", "Is it raining?"),
        ("assistant", reply),
    ]
    assert publisher.of_conversation(conversation_id) == publisher.events
    assert publisher.stats.sent == 2


@pytest.mark.asyncio
async def test_a_question_the_worker_would_dead_letter_fails_the_test() -> None:
    publisher = InMemoryPublisher()

    with pytest.raises(ContractViolationError) as refused:
        await answer(publisher, uuid.uuid4(), "NUL\x00")  # PostgreSQL cannot store NUL

    assert refused.value.rejection.reason is Reason.INVALID
    assert publisher.events == []


# The end of the README's example.


def _readme_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Testing your chat runtime without a broker\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.DOTALL)
    assert match, "the README's section has no python example"
    return match.group(1)


def test_the_readme_example_is_the_one_tested_here() -> None:
    example = _readme_example()
    source = Path(__file__).read_text(encoding="utf-8")
    lines = example.splitlines()
    first_code = next(i for i, line in enumerate(lines) if line.startswith(("async ", "def ")))
    imports = [line for line in lines[:first_code] if line.strip()]
    code = "\n".join(lines[first_code:])
    assert code in source, "the README's example differs from tests/test_testing_double.py"
    # Its imports are this file's (here some of them are in one statement).
    namespace: dict[str, Any] = {}
    exec("\n".join(imports), namespace)
    for name, value in namespace.items():
        if name != "__builtins__":
            assert globals()[name] is value, f"{name}: imported here from elsewhere"


def _public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")} | {"__aenter__", "__aexit__"}


def _signature(function: Any) -> tuple[bool, str]:
    return inspect.iscoroutinefunction(function), str(inspect.signature(function))


def test_the_double_has_the_publishers_methods_with_the_same_signatures() -> None:
    assert _public(InMemoryPublisher) - _public(Publisher) == ASSERTION_HELPERS
    for name in sorted(_public(Publisher)):
        assert _signature(getattr(InMemoryPublisher, name)) == _signature(
            getattr(Publisher, name)
        ), name


def test_the_double_has_the_publishers_attributes_stats_and_close_report() -> None:
    real = Publisher("amqp://guest:guest@localhost:5672/")  # constructing connects nowhere
    double = InMemoryPublisher()
    public = {name for name in vars(real) if not name.startswith("_")}
    assert {name for name in vars(double) if not name.startswith("_")} == public | {"full"}
    # The same classes, not look-alikes.
    assert type(real.stats) is type(double.stats) is PublisherStats
    assert CloseReport().complete is True
    assert CloseReport(unsent=[_question()]).complete is False


def test_the_protocol_names_what_both_publishers_have() -> None:
    members = {name for name in dir(EventPublisher) if not name.startswith("_")}
    assert members == {"close", "enqueue", "publish", "publish_nowait", "stats"}
    for name in members - {"stats"}:
        protocol = _signature(getattr(EventPublisher, name))
        assert protocol[0] == _signature(getattr(Publisher, name))[0], name
        assert (
            str(inspect.signature(getattr(EventPublisher, name))).split(" -> ")[0]
            == str(inspect.signature(getattr(InMemoryPublisher, name))).split(" -> ")[0]
        )
    counters = {name for name in dir(PublisherCounters) if not name.startswith("_")}
    assert counters == {f.name for f in dataclasses.fields(PublisherStats)}
    report = {name for name in dir(PublisherCloseReport) if not name.startswith("_")}
    assert report == {"unsent", "complete"}


def as_event_publisher(publisher: Publisher | InMemoryPublisher) -> EventPublisher:
    """mypy --strict fails here if either stops fitting the protocol."""
    return publisher


def _question(content: str = "Hello?", conversation_id: uuid.UUID | None = None) -> MessageCreated:
    return message_created(
        conversation_id=conversation_id or uuid.uuid4(),
        user_id="alice",
        role="user",
        content=content,
    )


def test_the_kept_body_and_properties_are_what_the_publisher_sends() -> None:
    publisher = InMemoryPublisher()
    event = _question()
    publisher.publish_nowait(event)
    (kept,) = publisher.messages
    sent = _message(_Outgoing(event, trace=None))
    assert kept.body == sent.body
    assert (kept.content_type, kept.delivery_mode, kept.message_id, kept.type) == (
        sent.content_type,
        sent.delivery_mode,
        sent.message_id,
        sent.type,
    )
    assert (kept.exchange, kept.routing_key, kept.via) == (EXCHANGE, event.type, "publish_nowait")
    assert kept.event == event


def _a_producer_span(span_id: int) -> trace.Span:
    """A valid span context with a tracestate, as a runtime's tracer would make current."""
    return NonRecordingSpan(
        SpanContext(
            trace_id=0x0AF7651916CD43DD8448EB211C80319C,
            span_id=span_id,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
            trace_state=TraceState([("vendor", "value")]),
        )
    )


async def test_each_message_has_the_trace_headers_the_publisher_adds_taken_when_published() -> None:
    publisher = InMemoryPublisher()
    untraced = _question("outside any span")
    publisher.publish_nowait(untraced)
    sent: dict[str, Any] = {}  # what Publisher would send, built in the same context
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with trace.use_span(_a_producer_span(0xB7AD6B7169203331)):
            publisher.publish_nowait(nowait := _question("published nowait"))
            sent["nowait"] = _message(_Outgoing(nowait, trace_headers())).headers
        with trace.use_span(_a_producer_span(0x00F067AA0BA902B7)):
            await publisher.publish(confirmed := _question("published and confirmed"))
            sent["confirmed"] = _message(_Outgoing(confirmed, trace_headers())).headers
        publisher.publish_nowait(untraced_again := _question("after the spans"))
    finally:
        context.detach(token)

    kept = {
        message.event.data.content: message
        for message in publisher.messages
        if isinstance(message.event, MessageCreated)
    }
    assert kept[untraced.data.content].headers == {}
    assert kept[untraced_again.data.content].headers == {}  # baggage alone: nothing, as Publisher
    assert kept[nowait.data.content].headers == {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "vendor=value",
        "baggage": "tenant=acme",  # the default propagators write baggage too
    }
    assert kept[confirmed.data.content].headers["traceparent"] == (
        "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
    )
    assert kept[nowait.data.content].headers == sent["nowait"]
    assert kept[confirmed.data.content].headers == sent["confirmed"]


async def test_publish_nowait_enqueue_and_publish_keep_events_in_order_and_count_them() -> None:
    publisher = InMemoryPublisher()
    conversation = uuid.uuid4()
    first, second = _question("one", conversation), _question("two")
    archived = conversation_archived(conversation_id=conversation, user_id="alice")

    assert publisher.publish_nowait(first) is True
    assert await publisher.enqueue(second) is True
    await publisher.publish(archived)

    assert publisher.events == [first, second, archived]
    assert [m.via for m in publisher.messages] == ["publish_nowait", "publish_nowait", "publish"]
    assert publisher.messages_created == [first, second]
    assert publisher.conversations_archived == [archived]
    assert isinstance(publisher.conversations_archived[0], ConversationArchived)
    assert publisher.of_conversation(conversation) == [first, archived]
    assert publisher.of_conversation(str(conversation)) == [first, archived]
    assert dataclasses.asdict(publisher.stats) == dataclasses.asdict(
        PublisherStats(buffered=2, sent=3)
    )
    publisher.clear()
    assert (publisher.events, publisher.messages, publisher.refused) == ([], [], [])
    assert publisher.stats.sent == 3  # the stats keep counting, as Publisher's do


async def test_after_close_events_are_dropped_and_publish_raises() -> None:
    async with InMemoryPublisher() as publisher:
        assert publisher.publish_nowait(_question()) is True
    assert publisher.closed
    report = await publisher.close()  # again: as harmless as Publisher's
    assert report.complete
    assert report.unsent == []

    assert publisher.publish_nowait(_question()) is False
    assert await publisher.enqueue(_question()) is False
    with pytest.raises(RuntimeError, match="after close"):
        await publisher.publish(_question())
    assert len(publisher.events) == 1
    assert (publisher.stats.sent, publisher.stats.dropped) == (1, 2)


async def test_a_full_buffer_drops_publish_nowait_and_enqueue_but_not_publish() -> None:
    publisher = InMemoryPublisher()
    publisher.full = True
    assert publisher.publish_nowait(_question()) is False
    assert await publisher.enqueue(_question()) is False
    await publisher.publish(_question("confirmed"))
    assert [m.data.content for m in publisher.messages_created] == ["confirmed"]
    assert (publisher.stats.dropped, publisher.stats.buffered, publisher.stats.sent) == (2, 0, 1)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (_question("NUL\x00 in the content"), Reason.INVALID),
        # Built around the models' checks, as only a bug does: decode still says no.
        (_question().model_copy(update={"version": 2}), Reason.UNSUPPORTED_VERSION),
        (_question().model_copy(update={"type": "message.deleted"}), Reason.UNKNOWN_TYPE),
    ],
)
async def test_an_event_the_worker_would_dead_letter_is_refused_with_its_reason(
    event: MessageCreated, reason: Reason
) -> None:
    publisher = InMemoryPublisher()
    with pytest.raises(ContractViolationError, match=reason.value) as refused:
        publisher.publish_nowait(event)
    with pytest.raises(ContractViolationError):
        await publisher.publish(event)
    assert refused.value.rejection.reason is reason
    assert refused.value.event is event
    assert [r.rejection.reason for r in publisher.refused] == [reason, reason]
    assert publisher.events == []
    assert publisher.stats.sent == publisher.stats.buffered == 0


def test_what_is_kept_is_what_the_worker_reads() -> None:
    publisher = InMemoryPublisher()
    event = message_created(
        conversation_id=uuid.uuid4(),
        user_id="alice",
        role="assistant",
        content="x",
        metadata={"score": float("nan")},
    )
    publisher.publish_nowait(event)
    (kept,) = publisher.messages_created
    assert kept.data.metadata == {"score": None}  # JSON has no NaN: it goes as null
