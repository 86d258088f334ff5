"""One batch, from deliveries to acknowledgements: the only place that acks.

decode -> write in one transaction (retrying transient failures, isolating
events whose data PostgreSQL refuses) -> commit -> publish the refused events
to the DLQ with confirms -> ack. The part after the commit is shielded from
cancellation, so a committed batch is never left half-settled by a shutdown.

Each batch is one ``process`` span, with a ``write_batch`` span per transaction
attempt and a ``settle`` span (worker/ingest/tracing.py; no-ops without the
``otel`` extra).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import aiormq
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import AnyEvent, Reason, Rejection, decode
from worker.faults import Fault, classify, constraint_of, sqlstate_of
from worker.health import Readiness
from worker.ingest import tracing
from worker.ingest.backoff import Backoff
from worker.ingest.deadletter import publish_dead_letters
from worker.ingest.delivery import Delivery, delivery_tag
from worker.ingest.store import WriteResult, write_batch
from worker.metrics import Metrics

log = structlog.get_logger("chatstore.flush")

OnRetry = Callable[[], Awaitable[None]]


class FatalError(Exception):
    """Our bug or our configuration: stop, and leave the queue as it is."""


REFUSALS_IN_A_ROW_LIMIT: Final = 50
"""Events refused by PostgreSQL one after another, with none stored between,
after which the worker stops: that is our bug or our schema, not bad data."""


class _RefusedDataError(Exception):
    """PostgreSQL refused the batch because of some event's data."""

    def __init__(self, description: str, *, refused_user: bool) -> None:
        super().__init__(description)
        self.refused_user = refused_user


def _describe_database_error(error: BaseException) -> str:
    sqlstate = sqlstate_of(error)
    cause = getattr(error, "orig", None) or error
    message = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return f"{sqlstate or type(error).__name__}: {message}"


def _log_orphaned_settle(settling: asyncio.Future[None]) -> None:
    if settling.cancelled():
        return
    if (error := settling.exception()) is not None:
        log.warning(
            "batch.unsettled",
            error=f"{type(error).__name__}: {error}"[:300],
            note="committed; the broker redelivers it and the write is idempotent",
        )


class Flusher:
    """Writes batches and settles their deliveries."""

    def __init__(
        self,
        engine: AsyncEngine,
        dead_letter_channel: aiormq.abc.AbstractChannel,
        *,
        backoff: Backoff,
        metrics: Metrics,
        readiness: Readiness,
    ) -> None:
        self._engine = engine
        self._dead_letter_channel = dead_letter_channel
        self._backoff = backoff
        self._metrics = metrics
        self._readiness = readiness
        self._refusals_in_a_row = 0
        self._database = engine.url.database  # for the transaction spans

    async def flush(self, batch: Sequence[Delivery], *, on_retry: OnRetry | None = None) -> None:
        """Store, dead-letter and acknowledge ``batch`` (deliveries of one channel, in order).

        ``on_retry`` is awaited before each wait for a transient failure to pass.
        """
        with tracing.processing(batch) as span:
            await self._flush(batch, on_retry, span)

    async def _flush(
        self, batch: Sequence[Delivery], on_retry: OnRetry | None, span: tracing.Span | None
    ) -> None:
        started = time.perf_counter()
        events: list[AnyEvent] = []
        positions: list[int] = []  # the batch position of each event
        rejections: dict[int, Rejection] = {}
        for position, delivery in enumerate(batch):
            decoded = decode(delivery.body)
            if isinstance(decoded, Rejection):
                rejections[position] = decoded
            else:
                events.append(decoded)
                positions.append(position)

        result = await self._write(events, on_retry) if events else WriteResult()
        committed_at = time.time()
        for event_position, rejection in result.rejections.items():
            rejections[positions[event_position]] = rejection
        tracing.record_outcome(
            span,
            inserted=result.inserted,
            duplicates=result.duplicates,
            archived=result.archived,
            dead_lettered=len(rejections),
        )

        settling = asyncio.ensure_future(self._settle(batch, rejections))
        try:
            await asyncio.shield(settling)
        except asyncio.CancelledError:
            # Cancelled from outside (a drain that ran out of time): the settle
            # finishes or fails on its own; its outcome is logged, not lost.
            settling.add_done_callback(_log_orphaned_settle)
            raise
        self._record(batch, events, result, rejections, committed_at, started)

    async def _settle(self, batch: Sequence[Delivery], rejections: dict[int, Rejection]) -> None:
        with tracing.settling(messages=len(batch), dead_letters=len(rejections)):
            if rejections:
                letters = [
                    (batch[position], rejections[position]) for position in sorted(rejections)
                ]
                await publish_dead_letters(self._dead_letter_channel, letters)
            # The batch holds every unsettled delivery of its channel up to its
            # last one, in order: one ack with multiple=True settles them all.
            last = batch[-1]
            await last.channel.basic_ack(delivery_tag(last), multiple=True)

    async def _write(self, events: Sequence[AnyEvent], on_retry: OnRetry | None) -> WriteResult:
        """Write ``events``, halving the batch to find the ones PostgreSQL refuses."""
        try:
            return await self._write_retrying(events, on_retry)
        except _RefusedDataError as fault:
            if len(events) == 1:
                self._refusals_in_a_row += 1
                if self._refusals_in_a_row >= REFUSALS_IN_A_ROW_LIMIT:
                    raise FatalError(
                        f"PostgreSQL refused {self._refusals_in_a_row} events in a row "
                        f"and stored none; the last: {fault}"
                    ) from fault
                # A foreign key on users: the user was deleted since we looked.
                reason = Reason.UNKNOWN_USER if fault.refused_user else Reason.INVALID
                return WriteResult(
                    rejections={0: Rejection(reason, f"PostgreSQL refused it: {fault}")}
                )
        middle = len(events) // 2
        result = await self._write(events[:middle], on_retry)
        result.merge(await self._write(events[middle:], on_retry), offset=middle)
        return result

    async def _write_retrying(
        self, events: Sequence[AnyEvent], on_retry: OnRetry | None
    ) -> WriteResult:
        attempt = 0
        while True:
            try:
                with tracing.transaction(
                    database=self._database, events=len(events), attempt=attempt + 1
                ):
                    result = await write_batch(self._engine, events)
            except Exception as error:
                fault = classify(error)
                if fault is Fault.DATA:
                    constraint = constraint_of(error) or ""
                    raise _RefusedDataError(
                        _describe_database_error(error),
                        refused_user=sqlstate_of(error) == "23503"
                        and constraint.endswith("_users"),
                    ) from error
                if fault is Fault.FATAL:
                    raise FatalError(_describe_database_error(error)) from error
                # One failure may be a stale pooled connection; a second one
                # means the database is away: give the deliveries back meanwhile.
                if attempt >= 1 and on_retry is not None:
                    await on_retry()
                await self._wait_to_retry(error, attempt)
                attempt += 1
            else:
                if attempt:
                    self._readiness.database = True
                    log.info("database.recovered", retries=attempt)
                if len(result.rejections) < len(events):
                    self._refusals_in_a_row = 0
                return result

    async def _wait_to_retry(self, error: BaseException, attempt: int) -> None:
        sqlstate = sqlstate_of(error)
        delay = self._backoff.delay(attempt)
        self._readiness.database = False
        self._metrics.retries.labels(sqlstate or "none").inc()
        log.warning(
            "batch.retry",
            sqlstate=sqlstate,
            error=_describe_database_error(error)[:300],
            attempt=attempt + 1,
            delay_s=round(delay, 3),
        )
        await asyncio.sleep(delay)

    def _record(
        self,
        batch: Sequence[Delivery],
        events: Sequence[AnyEvent],
        result: WriteResult,
        rejections: dict[int, Rejection],
        committed_at: float,
        started: float,
    ) -> None:
        metrics = self._metrics
        metrics.batch_size.observe(len(batch))
        metrics.flush_seconds.observe(time.perf_counter() - started)
        metrics.events.labels("inserted", "").inc(result.inserted)
        metrics.events.labels("duplicate", "").inc(result.duplicates)
        metrics.events.labels("archived", "").inc(result.archived)
        for rejection in rejections.values():
            metrics.events.labels("dead_lettered", rejection.reason.value).inc()
        for position, event in enumerate(events):
            if position not in result.rejections:
                metrics.lag_seconds.observe(committed_at - event.occurred_at.timestamp())
        log.info(
            "batch.flushed",
            size=len(batch),
            inserted=result.inserted,
            duplicates=result.duplicates,
            archived=result.archived,
            rejected=len(rejections),
            elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
        )
