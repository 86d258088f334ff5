"""An in-memory publisher for the chat runtime's own unit tests: no broker needed.

:class:`InMemoryPublisher` has the interface of :class:`contracts.Publisher`
(``publish_nowait``, ``enqueue``, ``publish``, ``close``, ``stats``, ``async
with``) and keeps every event it accepts, so a test can assert "this request
published these events"::

    publisher = InMemoryPublisher()
    await handle_request(publisher, ...)
    assert [e.data.content for e in publisher.messages_created] == ["Hello?", "Hi!"]

Each event goes the way it would go on the wire: encoded as ``Publisher``
encodes it, then read back by :func:`contracts.decode`, the worker's own
decoder. What the double keeps is what the worker would read. Where the worker
would dead-letter the event (a NUL character in the content, for instance,
which the models let through but PostgreSQL cannot store), the double refuses
it at once with :class:`ContractViolationError`, so the test fails at the line
that published it; the refusal is kept in :attr:`InMemoryPublisher.refused`
too, for a runtime that catches every exception. Only ``decode``'s checks
apply: the reasons that need the database (``unknown_user``,
``ownership_mismatch``, ``conflict``) cannot be told here.

Like ``Publisher``, ``publish`` after ``close`` raises ``RuntimeError``. One
difference, on purpose: the buffer is full only when a test says so
(``publisher.full = True``), so that a runtime's handling of dropped events
can be tested.

Each kept message has the trace headers ``Publisher`` would add, taken from
the caller's context when it published (``traceparent``, ``tracestate``, and
whatever else the configured propagators write; none outside a span or
without the ``otel`` extra), so a runtime's tests can check that its requests
propagate their traces.

Importing this module loads what ``import contracts`` loads (and the
OpenTelemetry API when it is installed, as ``Publisher`` does): pydantic, no
AMQP client and no SQLAlchemy.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final, Literal, Self
from uuid import UUID

from contracts.decode import decode
from contracts.events import AnyEvent, ConversationArchived, MessageCreated
from contracts.publishing import CloseReport, PublisherStats
from contracts.rejection import Rejection
from contracts.routing import EXCHANGE
from contracts.tracing import trace_headers

__all__ = [
    "ContractViolationError",
    "InMemoryPublisher",
    "PublishedMessage",
    "RefusedEvent",
]

CONTENT_TYPE: Final = "application/json"
PERSISTENT: Final = 2


class ContractViolationError(AssertionError):
    """The worker would dead-letter this event; ``rejection`` says why."""

    def __init__(self, event: AnyEvent, rejection: Rejection) -> None:
        super().__init__(
            f"the worker would dead-letter event {event.event_id} ({event.type}) as "
            f"{rejection.reason.value}: {rejection.detail}"
        )
        self.event = event
        self.rejection = rejection


@dataclass(frozen=True, slots=True)
class PublishedMessage:
    """One event as it went on the wire, and as the worker reads it back."""

    event: AnyEvent
    """What ``contracts.decode`` makes of ``body``: what the worker would store."""
    body: bytes
    exchange: str
    routing_key: str
    content_type: str
    delivery_mode: int
    message_id: str
    type: str
    via: Literal["publish_nowait", "publish"]
    """``publish_nowait`` (``enqueue`` too) or ``publish`` (waited for the confirm)."""
    headers: dict[str, str] = field(default_factory=dict)
    """The AMQP headers: the caller's trace headers, as ``Publisher`` adds them; empty
    outside a span or without the ``otel`` extra."""


@dataclass(frozen=True, slots=True)
class RefusedEvent:
    """An event the double refused, because the worker would dead-letter it."""

    event: AnyEvent
    rejection: Rejection


class InMemoryPublisher:
    """A ``Publisher`` that keeps what it is given; see the module's documentation."""

    def __init__(self) -> None:
        self.stats = PublisherStats()
        # True: drop as a full buffer does (publish, which bypasses the buffer, still sends).
        self.full = False
        self._messages: list[PublishedMessage] = []
        self._refused: list[RefusedEvent] = []
        self._closed = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Nothing to start: there is no connection."""

    def publish_nowait(self, event: AnyEvent) -> bool:
        """Keep ``event``; False (and counted as dropped) once closed or while ``full``.

        Raises :class:`ContractViolationError` for an event the worker would refuse.
        """
        if self.full or self._closed:
            self.stats.dropped += 1
            return False
        self._accept(event, "publish_nowait", trace_headers())
        self.stats.buffered += 1
        self.stats.sent += 1
        return True

    async def enqueue(self, event: AnyEvent) -> bool:
        """Like ``publish_nowait``: the in-memory buffer never waits for room."""
        await asyncio.sleep(0)  # a suspension point, as the real one may wait
        return self.publish_nowait(event)

    async def publish(self, event: AnyEvent) -> None:
        """Keep ``event`` as confirmed. Raises :class:`ContractViolationError` for an
        event the worker would refuse, and ``RuntimeError`` after ``close``."""
        if self._closed:
            raise RuntimeError("InMemoryPublisher.publish after close")
        headers = trace_headers()  # the caller's context, before any await, as Publisher
        await asyncio.sleep(0)  # the real one waits for the broker's confirm
        self._accept(event, "publish", headers)
        self.stats.sent += 1

    async def close(self, timeout_s: float = 10.0) -> CloseReport:
        """Stop accepting events; nothing is ever left unsent."""
        self._closed = True
        return CloseReport()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def messages(self) -> list[PublishedMessage]:
        """Every accepted event as it went on the wire, in order."""
        return list(self._messages)

    @property
    def events(self) -> list[AnyEvent]:
        """Every accepted event, in order, as the worker decodes it."""
        return [message.event for message in self._messages]

    @property
    def messages_created(self) -> list[MessageCreated]:
        return [event for event in self.events if isinstance(event, MessageCreated)]

    @property
    def conversations_archived(self) -> list[ConversationArchived]:
        return [event for event in self.events if isinstance(event, ConversationArchived)]

    @property
    def refused(self) -> list[RefusedEvent]:
        """The events refused with :class:`ContractViolationError`, in order."""
        return list(self._refused)

    def of_conversation(self, conversation_id: UUID | str) -> list[AnyEvent]:
        """The accepted events of one conversation, in order."""
        wanted = UUID(str(conversation_id))
        return [event for event in self.events if event.data.conversation_id == wanted]

    def clear(self) -> None:
        """Forget what was published and refused (the stats keep counting)."""
        self._messages.clear()
        self._refused.clear()

    def _accept(
        self,
        event: AnyEvent,
        via: Literal["publish_nowait", "publish"],
        headers: dict[str, str] | None,
    ) -> None:
        # The body exactly as contracts.Publisher encodes it, read back by the
        # worker's decoder: what is kept is what the worker would see.
        body = event.model_dump_json().encode()
        decoded = decode(body)
        if isinstance(decoded, Rejection):
            self._refused.append(RefusedEvent(event, decoded))
            raise ContractViolationError(event, decoded)
        self._messages.append(
            PublishedMessage(
                event=decoded,
                body=body,
                exchange=EXCHANGE,
                routing_key=event.type,
                content_type=CONTENT_TYPE,
                delivery_mode=PERSISTENT,
                message_id=str(event.event_id),
                type=event.type,
                via=via,
                headers=dict(headers or {}),
            )
        )
