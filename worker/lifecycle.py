"""The composition root: builds the engine, connections and consumer, and runs them.

Lifecycle of ``chatstore worker``:
- connect to RabbitMQ (retrying with backoff), declare the topology, consume;
- on a lost broker connection: drop everything tied to the dead channel
  (its delivery tags are void; the broker redelivers them) and reconnect;
- on SIGTERM or SIGINT: stop consuming, finish the batch being written, return
  the rest to the queue, close, exit 0, all within ``drain_timeout_s``;
- on a fatal error (our bug, our configuration): exit 1 without draining the
  queue into the DLQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from typing import cast

import aio_pika
import aiormq
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.brokers import BrokerNode, BrokerNodes
from worker import exits, topology
from worker.database import create_engine
from worker.faults import Fault, classify
from worker.health import HealthServer, Readiness
from worker.ingest.backoff import Backoff
from worker.ingest.batch import BatchPolicy
from worker.ingest.consumer import BrokerLostError, Consumer
from worker.ingest.deadletter import DeadLetterRefusedError
from worker.ingest.flush import FatalError, Flusher
from worker.ingest.store import WRITE_FUNCTION
from worker.ingest.watchdog import WatchdogError
from worker.metrics import Metrics
from worker.settings import Settings
from worker.supervise.child import stop_when_supervisor_exits
from worker.unavailable import ServiceUnavailableError, describe, rabbitmq_at, short, vhost_refused

log = structlog.get_logger("chatstore.worker")

# Failures a reconnect cannot cure: wrong credentials or permissions. (A
# precondition failure is fatal only while declaring: see _declare.)
_BROKER_FATAL = (
    aiormq.exceptions.ProbableAuthenticationError,
    aiormq.exceptions.ChannelAccessRefused,
)
# Failures of the broker connection or channel that a reconnect can cure,
# including a channel the broker closed (e.g. its consumer_timeout) and a
# queue deleted under us (reconnecting declares it again).
_BROKER_LOST = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.AMQPChannelError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    TimeoutError,
    BrokerLostError,
    DeadLetterRefusedError,
)


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    handle_signals: bool = True,
    child: int | None = None,
) -> int:
    """Run the worker until ``stop`` is set (or SIGTERM/SIGINT); returns the exit code.

    ``handle_signals=False`` leaves the process's signals alone, for running
    several workers in one process (tests, benchmarks). ``child`` is the
    index of a process that ``chatstore worker --processes N`` started
    (``worker.supervise.child``): it serves no HTTP port (the supervisor
    serves one for all), writes its metrics where the supervisor reads them,
    logs its index in every line, and drains when the supervisor is gone.
    """
    stop = stop or asyncio.Event()
    if child is not None:
        # Before the signal handlers, which run in a copy of the context as it is now.
        structlog.contextvars.bind_contextvars(child=child)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    for signum in signals:
        loop.add_signal_handler(signum, _on_signal, stop, signum)
    metrics = Metrics()
    readiness = Readiness()
    readiness.watch(lambda ready: metrics.ready.set(float(ready)))
    health = HealthServer(metrics.registry, readiness)
    if settings.http_port and child is None:
        port = await health.start(settings.http_host, settings.http_port)
        log.info("http.listening", port=port, paths=["/metrics", "/healthz", "/readyz"])
    engine = create_engine(settings)
    worker = _Worker(settings, engine, metrics, readiness)
    supervised = stop_when_supervisor_exits(stop) if child is not None else contextlib.nullcontext()
    try:
        with supervised:
            return await worker.run(stop)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        await engine.dispose()
        await health.close()


def _on_signal(stop: asyncio.Event, signum: int) -> None:
    if not stop.is_set():
        log.info("worker.stopping", signal=signal.Signals(signum).name)
    stop.set()


class _Worker:
    def __init__(
        self, settings: Settings, engine: AsyncEngine, metrics: Metrics, readiness: Readiness
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._metrics = metrics
        self._readiness = readiness
        self._backoff = Backoff(settings.retry_initial_ms / 1000, settings.retry_max_s)
        self._nodes = BrokerNodes(settings.amqp_url)
        self._node: BrokerNode | None = None  # the node of the current connection
        self._refusals = 0  # nodes in a row that refused the vhost

    async def run(self, stop: asyncio.Event) -> int:
        session = asyncio.create_task(self._sessions(stop), name="worker-sessions")
        stopping = asyncio.create_task(stop.wait(), name="worker-stop")
        try:
            await asyncio.wait({session, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not session.done():
                # Stopping: the drain has drain_timeout_s from the signal on.
                try:
                    await asyncio.wait_for(
                        asyncio.shield(session), timeout=self._settings.drain_timeout_s
                    )
                except TimeoutError:
                    session.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await session
                    log.error(
                        "worker.drain_timeout",
                        drain_timeout_s=self._settings.drain_timeout_s,
                        note="unacknowledged deliveries return to the queue",
                    )
                    return exits.FAILURE
            return session.result()
        finally:
            stopping.cancel()

    async def _sessions(self, stop: asyncio.Event) -> int:
        """Connect, consume, and reconnect after broker failures, until stopped."""
        attempt = 0
        while not stop.is_set():
            try:
                await self._check_database(stop)
                if stop.is_set():
                    break
                await self._session(stop)
                return exits.OK
            except FatalError as error:
                log.error("worker.fatal", error=str(error), note="the queue is left as it is")
                return exits.FAILURE
            except WatchdogError as error:
                log.error("worker.stuck", error=str(error))
                return exits.FAILURE
            except _BROKER_FATAL as error:
                log.error("broker.refused", error=describe(error))
                return exits.FAILURE
            except _BROKER_LOST as error:
                if _is_tls_failure(error):  # a certificate will not fix itself
                    log.error("broker.tls_refused", error=describe(error))
                    return exits.FAILURE
                if self._readiness.broker:
                    attempt = 0  # it was consuming: a fresh failure, not one in a row
                self._readiness.broker = False
                # Each round over the nodes waits longer than the one before.
                delay = self._backoff.delay(attempt // len(self._nodes))
                attempt += 1
                log.warning(
                    "broker.lost",
                    node=self._node.address if self._node else None,
                    error=describe(error),
                    reconnect_in_s=round(delay, 2),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
        return exits.OK

    async def _check_database(self, stop: asyncio.Event) -> None:
        """Wait for the database, and fail fast if the schema is not there."""
        attempt = 0
        while not stop.is_set():
            try:
                async with self._engine.connect() as connection:
                    await connection.execute(text("SELECT 1 FROM conversations, messages LIMIT 0"))
                    # A schema before migration 0002 has no write function
                    # (42883, fatal below); one without the grant would fail
                    # only at the first batch.
                    may_write = await connection.scalar(
                        text("SELECT has_function_privilege(:function, 'EXECUTE')"),
                        {"function": WRITE_FUNCTION},
                    )
            except Exception as error:
                if classify(error) is not Fault.TRANSIENT:
                    raise FatalError(
                        f"database not usable ({describe(error)}); did `chatstore migrate` run?"
                    ) from error
                delay = self._backoff.delay(attempt)
                attempt += 1
                log.warning("database.unreachable", error=describe(error), retry_in_s=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
            else:
                if not may_write:
                    raise FatalError(
                        f"the database role may not EXECUTE {WRITE_FUNCTION}; "
                        "run deploy/postgres/grants.sql as the tables' owner"
                    )
                self._readiness.database = True
                return

    async def _session(self, stop: asyncio.Event) -> None:
        settings = self._settings
        self._node = node = self._nodes.next()
        try:
            connection = await aio_pika.connect(node.url, timeout=30)
        except aiormq.exceptions.InvalidFrameError as error:
            refused = vhost_refused(node.url, error)
            if refused is not None and self._refusals + 1 < len(self._nodes):
                # One node may refuse for a while (a vhost still starting on a
                # node that restarts): only every node refusing is configuration.
                self._refusals += 1
                raise BrokerLostError(f"{node.address} refused the vhost") from error
            # No reconnect opens a vhost that is missing or closed to us, nor
            # makes a server that is no AMQP broker speak it.
            raise refused or ServiceUnavailableError(rabbitmq_at(node.url), short(error)) from error
        self._refusals = 0
        async with connection:
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=settings.prefetch_count)
            await _declare(channel, settings.delivery_limit)
            dead_letters = await connection.channel(publisher_confirms=True)
            flusher = Flusher(
                self._engine,
                await dead_letters.get_underlay_channel(),
                backoff=self._backoff,
                metrics=self._metrics,
                readiness=self._readiness,
            )
            consumer = Consumer(
                cast(aiormq.Channel, await channel.get_underlay_channel()),
                topology.QUEUE,
                flusher,
                policy=BatchPolicy(settings.batch_max_size, settings.batch_max_wait_ms / 1000),
                readiness=self._readiness,
                watchdog_idle_s=settings.watchdog_idle_s,
            )
            log.info(
                "worker.consuming",
                node=node.address,
                queue=topology.QUEUE,
                prefetch=settings.prefetch_count,
                batch_max_size=settings.batch_max_size,
            )
            await consumer.run(stop)
        log.info("worker.stopped")


async def _declare(channel: aio_pika.abc.AbstractChannel, delivery_limit: int) -> None:
    try:
        await topology.declare(channel, delivery_limit=delivery_limit)
    except aiormq.exceptions.ChannelPreconditionFailed as error:
        raise FatalError(
            f"the broker has {topology.QUEUE} or {topology.DLQ} with other arguments "
            f"({describe(error)}): keep CHATSTORE_DELIVERY_LIMIT as it was, or delete the queue"
        ) from error


def _is_tls_failure(error: BaseException) -> bool:
    """Whether a certificate or TLS handshake problem is behind ``error``."""
    seen: list[BaseException] = []
    pending: list[object] = [error]
    while pending:
        item = pending.pop()
        if isinstance(item, ssl.SSLError):
            return True
        if isinstance(item, BaseException) and item not in seen:
            seen.append(item)
            pending += [item.__cause__, item.__context__, *item.args]
    return False
