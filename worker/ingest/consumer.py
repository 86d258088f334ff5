"""The queue loop: takes deliveries, closes batches, hands them to the flusher.

Deliveries are taken on aiormq's channel under aio-pika's (``get_underlay_channel``):
aio-pika wraps each delivery in one more object and one more task, a third
of the per-event cost on this path, and the loop needs neither.
"""

from __future__ import annotations

import asyncio

import aiormq
import structlog

from worker.health import Readiness
from worker.ingest.batch import BatchPolicy, Pending
from worker.ingest.delivery import Delivery, delivery_tag
from worker.ingest.flush import Flusher
from worker.ingest.watchdog import watch

log = structlog.get_logger("chatstore.consumer")


class BrokerLostError(Exception):
    """The channel closed under the consumer: reconnect; unacked deliveries return."""


class Consumer:
    """Consumes one queue on one channel until told to stop, then drains."""

    def __init__(
        self,
        channel: aiormq.Channel,
        queue: str,
        flusher: Flusher,
        *,
        policy: BatchPolicy,
        readiness: Readiness,
        watchdog_idle_s: float,
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._flusher = flusher
        self._policy = policy
        self._readiness = readiness
        self._watchdog_idle_s = watchdog_idle_s
        self._pending: Pending[Delivery] = Pending()
        self._wake = asyncio.Event()
        self._consumer_tag: str | None = None
        self._failure: BaseException | None = None
        self._flushing = False
        self._paused = False
        self._stop = asyncio.Event()
        # Pause, resume, the watchdog and the drain all change whether the
        # channel consumes: one at a time, each deciding on fresh state.
        self._consuming = asyncio.Lock()
        self._last_delivery = asyncio.get_running_loop().time()
        self._resubscribing: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then settle or return everything held."""
        self._stop = stop
        self._channel.closing.add_done_callback(lambda _: self._wake.set())
        self._channel.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
        helpers = [
            asyncio.create_task(self._wake_on(stop), name="consumer-stop"),
            asyncio.create_task(self._watched(), name="consumer-watchdog"),
        ]
        try:
            async with self._consuming:
                await self._start_consuming()
            await self._loop(stop)
            await self._drain()
        finally:
            self._channel.on_consumer_cancel_callbacks.discard(self._on_broker_cancel)
            for helper in [*helpers, *self._resubscribing]:
                helper.cancel()

    async def _on_delivery(self, message: Delivery) -> None:
        self._pending.add(message)
        self._last_delivery = asyncio.get_running_loop().time()
        self._wake.set()

    def _on_broker_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        """The broker dropped our consumer (a deleted queue, a node going away): consume
        again at once rather than at the watchdog's next look.

        It runs in aiormq's channel reader, which must go on reading to receive
        the reply to a new ``basic.consume``: so the consume is a task of its own.
        """
        # Not compared with our tag here: a cancel can come right behind the
        # ConsumeOk, before basic_consume has returned the tag to us. The task
        # compares under the lock, after _start_consuming has recorded it.
        if frame.consumer_tag is not None:
            task = asyncio.create_task(self._consume_after_cancel(frame.consumer_tag))
            self._resubscribing.add(task)
            task.add_done_callback(self._resubscribing.discard)

    async def _consume_after_cancel(self, tag: str) -> None:
        try:
            async with self._consuming:
                if self._consumer_tag != tag:
                    return  # cancelled or renewed meanwhile
                self._consumer_tag = None
                log.warning("consumer.cancelled_by_broker", consumer_tag=tag, queue=self._queue)
                await self._start_consuming()
        except Exception as error:  # handed to the loop, which raises it (e.g. queue gone)
            self._failure = error
            self._wake.set()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    def _check_alive(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._channel.is_closed:
            raise BrokerLostError("the channel closed")

    async def _loop(self, stop: asyncio.Event) -> None:
        while True:
            self._check_alive()
            if stop.is_set():
                return
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = await self._collect()
            self._flushing = True
            try:
                await self._flusher.flush(batch, on_retry=self._pause)
            finally:
                self._flushing = False
            if self._paused:
                async with self._consuming:
                    self._paused = False
                    self._last_delivery = asyncio.get_running_loop().time()
                    await self._start_consuming()
                log.info("consumer.resumed")

    async def _collect(self) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        opened = loop.time()
        batch: list[Delivery] = []
        while True:
            batch += self._pending.take(self._policy.max_size - len(batch))
            # One turn of the event loop lets deliveries already read from the
            # socket reach the pending queue before deciding none is waiting.
            await asyncio.sleep(0)
            if self._policy.is_closed(
                size=len(batch), age_s=loop.time() - opened, waiting=len(self._pending)
            ):
                return batch

    async def _start_consuming(self) -> None:
        """Consume, unless already consuming, paused or stopping (hold the lock)."""
        if self._consumer_tag is not None or self._paused or self._stop.is_set():
            return
        result = await self._channel.basic_consume(self._queue, self._on_delivery, no_ack=False)
        self._consumer_tag = result.consumer_tag
        self._readiness.broker = True

    async def _stop_consuming(self) -> None:
        """Cancel the consumer; unacknowledged deliveries stay ours (hold the lock)."""
        tag, self._consumer_tag = self._consumer_tag, None
        if tag is not None and not self._channel.is_closed:
            await self._channel.basic_cancel(tag)

    async def _pause(self) -> None:
        """While the database is down: take no new deliveries, so other workers can."""
        # The batch being retried belongs to this channel: if it died, its
        # deliveries are void and the retry is pointless. Reconnect instead.
        self._check_alive()
        async with self._consuming:
            if not self._paused:
                self._paused = True
                await self._stop_consuming()
                log.warning("consumer.paused", reason="database unavailable; holding the batch")

    async def _drain(self) -> None:
        """Stop deliveries and return the ones not started to the queue."""
        async with self._consuming:
            await self._stop_consuming()
        await asyncio.sleep(0)  # deliveries sent before the cancel took effect
        returned = self._pending.take_all()
        if returned and not self._channel.is_closed:
            await self._channel.basic_nack(delivery_tag(returned[-1]), multiple=True, requeue=True)
        log.info("consumer.drained", returned=len(returned))

    # What the watchdog (worker/ingest/watchdog.py) looks at and does.

    @property
    def busy(self) -> bool:
        """Whether deliveries are being written, held back or waiting to be."""
        return self._flushing or self._paused or bool(self._pending)

    @property
    def cancelled_by_broker(self) -> bool:
        """Whether the broker dropped our consumer (queue failover, deletion)."""
        return self._consumer_tag is not None and self._consumer_tag not in self._channel.consumers

    def idle_s(self) -> float:
        """Seconds since the last delivery (or since consuming began)."""
        return asyncio.get_running_loop().time() - self._last_delivery

    async def waiting(self) -> int:
        """Messages ready in the queue, as the broker counts them."""
        declared = await self._channel.queue_declare(self._queue, passive=True)
        return int(declared.message_count or 0)

    async def consume_again(self, *, waiting: int, cancelled_by_broker: bool) -> None:
        """Cancel the consumer and consume anew, unless things moved meanwhile."""
        async with self._consuming:
            if self.busy:
                return  # deliveries arrived while the watchdog looked: not stuck
            log.warning(
                "watchdog.consume_again", waiting=waiting, cancelled_by_broker=cancelled_by_broker
            )
            await self._stop_consuming()
            await self._start_consuming()

    async def _watched(self) -> None:
        try:
            await watch(self, idle_s=self._watchdog_idle_s, queue=self._queue)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # handed to the loop, which raises it
            self._failure = error
            self._wake.set()
