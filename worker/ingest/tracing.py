"""The spans of one batch, as OpenTelemetry's messaging conventions describe batch processing.

- ``process chat.events`` (CONSUMER): the whole flush of one batch, with a link
  to each event's producer context (the ``traceparent`` its publisher put in
  the headers), ``messaging.batch.message_count`` and the RabbitMQ attributes;
- ``write_batch``, its child: one span per database transaction attempt, so a
  retried write shows each failed attempt (with its SQLSTATE) and the one that
  committed; halving a batch to isolate refused events adds one per half;
- ``settle chat.events``, its child: the dead-letter publish and the ack.

The import of OpenTelemetry is guarded here, and only here: without the
``otel`` extra every function returns a context manager that does nothing.
With the API but no SDK configured, the spans are the API's no-op spans, and
nothing per delivery is read: links and attributes are built only for a span
that records. A header that is missing, malformed or of another type gives no
link, and never an error.

Tracing never changes what is stored, acked or dead-lettered. The SDK calls
each span processor's ``on_start`` and ``on_end`` without catching what they
raise, so a buggy processor (the operator's, or an exporter's) would raise
out of starting a span, before the batch is written, or out of ending one,
after the ack. Each span is therefore started and ended here under a guard:
a failure is logged the first time (``tracing.failed``) and the batch goes on
without that span.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Final

import structlog

from contracts.routing import EXCHANGE
from worker.faults import sqlstate_of
from worker.ingest.delivery import Delivery

if TYPE_CHECKING:
    from opentelemetry.trace import Span as Span  # re-exported for flush's annotations
    from pamqp.common import FieldTable

try:
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import Getter
except ImportError:  # the otel extra is not installed: no spans
    trace = None  # type: ignore[assignment]

_SYSTEM: Final = "rabbitmq"
# Named by the destination, as the conventions ask; for RabbitMQ that is the
# exchange, and the worker's queue is bound to chat.events only (a replayed
# dead letter is published there too).
_PROCESS: Final = f"process {EXCHANGE}"
_SETTLE: Final = f"settle {EXCHANGE}"

log = structlog.get_logger("chatstore.tracing")
# The (step, span name) pairs that failed once: logged the first time only,
# as a buggy processor would fail every batch alike.
_failures_logged: set[tuple[str, str]] = set()


def _log_failure(step: str, name: str) -> None:
    """Log, with the exception being handled, that ``step`` of span ``name`` failed."""
    if (step, name) not in _failures_logged:
        _failures_logged.add((step, name))
        log.error(
            "tracing.failed",
            step=step,
            span=name,
            exc_info=True,
            note="the batch goes on without this span; the same failure again is not logged",
        )


if trace is not None:
    # A proxy until a tracer provider is set (by the worker, or by
    # opentelemetry-instrument), and the API's no-op tracer while none is.
    _TRACER: Final = trace.get_tracer("chatstore.worker")

    def _ready_tracer() -> trace.Tracer | None:
        return _TRACER

    class _HeaderGetter(Getter["FieldTable"]):
        """Reads AMQP headers as text: a value of any other type is absent.

        The stock getter hands an int header to the W3C propagator, which
        raises TypeError on it; a stray header must not fail the batch.
        """

        def get(self, carrier: FieldTable, key: str) -> list[str] | None:
            value = carrier.get(key)
            if isinstance(value, bytes):
                try:
                    value = value.decode("ascii")
                except UnicodeDecodeError:
                    return None
            return [value] if isinstance(value, str) else None

        def keys(self, carrier: FieldTable) -> list[str]:
            return list(carrier)

    _GETTER: Final = _HeaderGetter()

    @contextlib.contextmanager
    def _current_span(
        tracer: trace.Tracer, name: str, kind: trace.SpanKind = trace.SpanKind.INTERNAL
    ) -> Iterator[Span | None]:
        """A span current while the body runs, as ``start_as_current_span`` makes it.

        Yields None when the span could not start; a failure to end it is
        logged. What the body raises goes on unchanged, recorded on the span.
        """
        span: Span | None = None
        try:
            span = tracer.start_span(name, kind=kind)
        except Exception:
            _log_failure("start", name)
        if span is None:
            yield None  # outside the except: the body's errors chain to nothing of ours
            return
        try:
            with trace.use_span(span, end_on_exit=False):
                yield span
        finally:
            try:
                span.end()
            except Exception:
                _log_failure("end", name)

else:

    def _ready_tracer() -> trace.Tracer | None:
        return None


def _shared(values: Iterator[str | None]) -> str | None:
    """The one value all the deliveries agree on, else None."""
    first = next(values, None)
    return first if all(value == first for value in values) else None


def _add_links(span: Span, batch: Sequence[Delivery], *, per_routing_key: bool) -> None:
    """Link ``span`` to the producer context of each delivery that carries a valid one.

    Each link names its message; its routing key too when the batch has
    several (else the span has it). Each attribute costs about 3 us a link.
    """
    for delivery in batch:
        headers = delivery.header.properties.headers
        if not headers:
            continue
        try:
            context = propagate.extract(headers, getter=_GETTER)
        except Exception:  # a third-party propagator's bug: no link, the event goes on
            continue
        producer = trace.get_current_span(context).get_span_context()
        if not producer.is_valid:
            continue
        attributes: dict[str, str] = {}
        if delivery.header.properties.message_id:
            attributes["messaging.message.id"] = delivery.header.properties.message_id
        if per_routing_key and delivery.routing_key:
            attributes["messaging.rabbitmq.destination.routing_key"] = delivery.routing_key
        span.add_link(producer, attributes)


@contextlib.contextmanager
def processing(batch: Sequence[Delivery]) -> Iterator[Span | None]:
    """The ``process`` span of ``batch``, current while the batch is flushed.

    Yields the span when it records (for :func:`record_outcome`), else None.
    """
    tracer = _ready_tracer()
    if tracer is None:
        yield None
        return
    with _current_span(tracer, _PROCESS, trace.SpanKind.CONSUMER) as span:
        if span is None or not span.is_recording():
            yield None
            return
        try:
            _describe(span, batch)
        except Exception:  # the span lacks some attributes or links; the batch goes on
            _log_failure("describe", _PROCESS)
        yield span


def _describe(span: Span, batch: Sequence[Delivery]) -> None:
    """The attributes and links of the ``process`` span of ``batch``."""
    span.set_attributes(
        {
            "messaging.system": _SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            # Set for every batch, even of one: the flush is a batch operation.
            "messaging.batch.message_count": len(batch),
        }
    )
    if (exchange := _shared(delivery.exchange for delivery in batch)) is not None:
        span.set_attribute("messaging.destination.name", exchange)
    routing_key = _shared(delivery.routing_key for delivery in batch)
    if routing_key:
        span.set_attribute("messaging.rabbitmq.destination.routing_key", routing_key)
    url = batch[-1].channel.connection.url
    if url.host:
        span.set_attribute("server.address", url.host)
        if url.port:
            span.set_attribute("server.port", url.port)
    _add_links(span, batch, per_routing_key=routing_key is None)


def record_outcome(
    span: Span | None, *, inserted: int, duplicates: int, archived: int, dead_lettered: int
) -> None:
    """What the batch did, on its ``process`` span (if it records)."""
    if span is not None:
        span.set_attributes(
            {
                "chatstore.batch.inserted": inserted,
                "chatstore.batch.duplicates": duplicates,
                "chatstore.batch.archived": archived,
                "chatstore.batch.dead_lettered": dead_lettered,
            }
        )


@contextlib.contextmanager
def transaction(*, database: str | None, events: int, attempt: int) -> Iterator[None]:
    """One attempt at writing ``events`` in one transaction (``attempt`` from 1).

    An attempt that fails ends with the exception recorded, error status and
    ``error.type`` (the SQLSTATE when there is one).
    """
    tracer = _ready_tracer()
    if tracer is None:
        yield
        return
    with _current_span(tracer, "write_batch") as span:
        if span is None:
            yield
            return
        if span.is_recording():
            span.set_attributes(
                {
                    "db.system.name": "postgresql",
                    "chatstore.write.events": events,
                    "chatstore.write.attempt": attempt,
                }
            )
            if database:
                span.set_attribute("db.namespace", database)
        try:
            yield
        except Exception as error:
            if span.is_recording():
                span.set_attribute("error.type", sqlstate_of(error) or type(error).__qualname__)
            raise


@contextlib.contextmanager
def settling(*, messages: int, dead_letters: int) -> Iterator[None]:
    """The ``settle`` span: the dead-letter publish (if any) and the ack of the batch."""
    tracer = _ready_tracer()
    if tracer is None:
        yield
        return
    with _current_span(tracer, _SETTLE) as span:
        if span is not None and span.is_recording():
            span.set_attributes(
                {
                    "messaging.system": _SYSTEM,
                    "messaging.operation.type": "settle",
                    # One basic.ack with multiple=True settles the whole batch.
                    "messaging.operation.name": "ack",
                    "messaging.batch.message_count": messages,
                    "chatstore.settle.dead_letters": dead_letters,
                }
            )
        yield
