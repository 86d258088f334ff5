"""Fire-and-forget publishing for the chat runtime.

``publish_nowait(event)`` costs the caller microseconds and never raises: the
event goes into a bounded buffer that a background task sends with publisher
confirms and ``mandatory``. A lost connection is re-established with backoff;
events not confirmed, nacked or returned are sent again, never dropped. Only a
full buffer drops events, by the documented policy, and counts them.

``await publish(event)`` is the other way: it returns once the broker has
confirmed the event (or raises).

Delivery is at least once: an event whose confirm was lost with the
connection is sent again, and the worker's idempotency absorbs the copy.

With OpenTelemetry installed (the ``otel`` extra), each event carries the trace
context of the caller of ``publish_nowait`` or ``publish`` in its headers,
taken at that call, not when the background task sends it (see
:mod:`contracts.tracing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import NamedTuple, Self

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from contracts.brokers import BrokerNodes
from contracts.events import AnyEvent
from contracts.publishing import CloseReport, PublisherStats
from contracts.routing import EXCHANGE
from contracts.tracing import trace_headers

log = logging.getLogger("contracts.publisher")


class WhenFull(StrEnum):
    """What a full buffer does with a new event."""

    DROP_NEWEST = "drop_newest"
    """Drop the new event (counted, logged once per interval). The default."""
    BLOCK = "block"
    """``enqueue`` waits for room; ``publish_nowait``, which cannot wait, drops."""


class _UnroutableError(Exception):
    """The broker returned the event: nothing is bound for its type (yet)."""


class _Outgoing(NamedTuple):
    """An event to send, with the trace headers of the context that published it."""

    event: AnyEvent
    trace: dict[str, str] | None


def _message(outgoing: _Outgoing) -> aio_pika.Message:
    event = outgoing.event
    # The trace headers are the only headers a published event has (the
    # contract defines no others); a message without them has none at all.
    headers: dict[str, aio_pika.abc.FieldValue] = dict(outgoing.trace or {})
    return aio_pika.Message(
        event.model_dump_json().encode(),
        headers=headers or None,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(event.event_id),
        type=event.type,
        timestamp=datetime.now(UTC),
    )


class Publisher:
    """Publishes events to ``chat.events``; use ``async with Publisher(url) as p``.

    ``amqp_url`` is one node's URL, or a cluster's nodes as a comma-separated
    list (or a sequence of URLs) that agree on all but host and port. The
    publisher takes them in an order of its own, shuffled, and moves on to the
    next node whenever one cannot be reached or its connection is lost (see
    :mod:`contracts.brokers`). A list that is not one cluster raises
    :class:`~contracts.brokers.BrokerURLError` (a ``ValueError``) here.
    """

    def __init__(
        self,
        amqp_url: str | Sequence[str],
        *,
        buffer_size: int = 10_000,
        when_full: WhenFull = WhenFull.DROP_NEWEST,
        in_flight: int = 256,
        reconnect_max_s: float = 5.0,
        drop_log_interval_s: float = 10.0,
    ) -> None:
        if buffer_size < 1 or in_flight < 1:
            raise ValueError("buffer_size and in_flight must be at least 1")
        self._nodes = BrokerNodes(amqp_url)  # checked now: a bad list raises here
        self._buffer: deque[_Outgoing] = deque()
        self._buffer_size = buffer_size
        self._when_full = WhenFull(when_full)
        self._in_flight = in_flight
        self._reconnect_max_s = reconnect_max_s
        self._drop_log_interval_s = drop_log_interval_s
        self._last_drop_log = -float("inf")
        self._drops_since_log = 0
        self._has_events = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._sending: list[_Outgoing] = []  # taken from the buffer, not yet confirmed
        self._connection: AbstractConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._sender: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._opening = asyncio.Lock()
        self.stats = PublisherStats()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the background sender; connecting happens there, with retries."""
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_forever(), name="chatstore-publisher")

    def publish_nowait(self, event: AnyEvent) -> bool:
        """Buffer ``event`` for sending; never blocks, never raises. False if dropped."""
        if self._closing:
            self._drop("publisher closed")
            return False
        if len(self._buffer) >= self._buffer_size:
            self._drop(f"publisher buffer full ({self._buffer_size} events)")
            return False
        self._buffer.append(_Outgoing(event, trace_headers()))
        self.stats.buffered += 1
        self._has_events.set()
        if len(self._buffer) >= self._buffer_size:
            self._has_room.clear()
        return True

    async def enqueue(self, event: AnyEvent) -> bool:
        """Like ``publish_nowait``, but with ``WhenFull.BLOCK`` waits for room."""
        while self._when_full is WhenFull.BLOCK and len(self._buffer) >= self._buffer_size:
            if self._closing:
                break
            await self._has_room.wait()
        return self.publish_nowait(event)

    async def publish(self, event: AnyEvent) -> None:
        """Send ``event`` now and return once the broker has confirmed it.

        Raises ``RuntimeError`` once ``close`` has begun: a connection opened
        for it would outlive the publisher.
        """
        if self._closing:
            raise RuntimeError("Publisher.publish after close")
        outgoing = _Outgoing(event, trace_headers())  # the caller's context, before any await
        exchange = await self._ready_exchange()
        if self._closed:  # close() ran while this call connected
            await self._drop_connection()
            raise RuntimeError("Publisher.publish after close")
        try:
            await self._publish_confirmed(exchange, outgoing)
        except (_UnroutableError, aiormq.exceptions.DeliveryError):
            raise  # the broker answered (returned, or nacked it): the channel is fine
        except Exception:
            # The channel went with this error. Only it is given up: the
            # connection, which the background sender shares, is dropped by
            # whoever next fails to open a channel on it.
            if self._exchange is exchange:
                self._exchange = None
            raise
        self.stats.sent += 1

    async def close(self, timeout_s: float = 10.0) -> CloseReport:
        """Send what is buffered, within ``timeout_s``; report what could not be sent."""
        self._closing = True
        self._has_room.set()
        deadline = time.monotonic() + timeout_s
        while (self._buffer or self._sending) and time.monotonic() < deadline:
            if self._sender is None or self._sender.done():
                break
            await asyncio.sleep(0.01)
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        self._closed = True
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        report = CloseReport(
            unsent=[outgoing.event for outgoing in [*self._sending, *self._buffer]]
        )
        if report.unsent:
            log.error("publisher closed with %d events unsent", len(report.unsent))
        return report

    def _drop(self, cause: str) -> None:
        self.stats.dropped += 1
        self._drops_since_log += 1
        now = time.monotonic()
        if now - self._last_drop_log >= self._drop_log_interval_s:
            log.warning("%s: dropped %d events", cause, self._drops_since_log)
            self._last_drop_log = now
            self._drops_since_log = 0

    async def _ready_exchange(self) -> AbstractExchange:
        # One caller at a time opens what is missing: concurrent publish()
        # calls after a failure share one new channel instead of each
        # opening (and leaking) a connection of its own.
        async with self._opening:
            if self._exchange is not None and not (
                self._connection is None or self._connection.is_closed
            ):
                return self._exchange
            self._exchange = None
            if self._connection is None or self._connection.is_closed:
                self._connection = await self._connect()
            try:
                channel: AbstractChannel = await self._connection.channel(publisher_confirms=True)
                # The runtime may only write to chat.events: it never declares it.
                self._exchange = await channel.get_exchange(EXCHANGE, ensure=False)
            except Exception:
                # A connection that cannot open a channel is gone, whatever
                # aio-pika says: the next attempt connects anew.
                await self._drop_connection()
                raise
            return self._exchange

    async def _connect(self) -> AbstractConnection:
        """A connection to the next node that answers, each tried once; else the last error."""
        for attempt in range(len(self._nodes)):
            node = self._nodes.next()
            try:
                connection = await aio_pika.connect(node.url, timeout=10)
            except (aiormq.exceptions.AMQPConnectionError, OSError, TimeoutError) as error:
                log.warning("publisher: node %s: %s", node.address, type(error).__name__)
                if attempt == len(self._nodes) - 1:
                    raise
            else:
                log.info("publisher connected to node %s", node.address)
                return connection
        raise AssertionError("unreachable: a cluster has at least one node")

    async def _drop_connection(self) -> None:
        """Close what is left of a failed connection, so that none leaks.

        After the broker closes a connection, aio-pika may still call it open:
        the next attempt connects anew rather than trusting it.
        """
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=1)

    async def _publish_confirmed(self, exchange: AbstractExchange, outgoing: _Outgoing) -> None:
        event = outgoing.event
        confirmation = await exchange.publish(_message(outgoing), routing_key=event.type)
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise _UnroutableError(f"the broker returned event {event.event_id}")

    async def _send_forever(self) -> None:
        attempt = 0
        while True:
            try:
                exchange = await self._ready_exchange()
                attempt = 0
                await self._send_batches(exchange)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # Whatever was in flight goes back to the front, in order.
                self.stats.resent += len(self._sending)
                self._buffer.extendleft(reversed(self._sending))
                self._sending = []
                self._exchange = None
                await self._drop_connection()
                self.stats.reconnects += 1
                delay = min(self._reconnect_max_s, 0.05 * 2**attempt) * random.uniform(0.8, 1.2)
                attempt += 1
                log.warning("publisher: %s; retrying in %.2f s", type(error).__name__, delay)
                await asyncio.sleep(delay)

    async def _send_batches(self, exchange: AbstractExchange) -> None:
        while True:
            if not self._buffer:
                self._has_events.clear()
                await self._has_events.wait()
            count = min(self._in_flight, len(self._buffer))
            self._sending = [self._buffer.popleft() for _ in range(count)]
            self._has_room.set()
            # Pipelined: up to in_flight confirms awaited together.
            results = await asyncio.gather(
                *(self._publish_confirmed(exchange, outgoing) for outgoing in self._sending),
                return_exceptions=True,
            )
            failed = [
                outgoing
                for outgoing, result in zip(self._sending, results, strict=True)
                if isinstance(result, BaseException)
            ]
            self.stats.sent += len(self._sending) - len(failed)
            self._sending = failed
            if failed:
                first = next(r for r in results if isinstance(r, BaseException))
                raise first
