"""The consumer's watchdog: consume again when deliveries stop while messages wait.

The broker can cancel a consumer (a quorum queue's failover, a deleted
queue), and aiormq drops the broker's ``basic.cancel`` without telling us; a
connection can also stall without closing. So every ``idle_s / 2`` the
watchdog looks: if the broker dropped the consumer, or nothing arrived for
``idle_s`` while the queue holds messages, it consumes again. Two such checks
in a row end the worker (:class:`WatchdogError`), so that it is restarted.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from worker.ingest.consumer import Consumer

WATCHDOG_STRIKES: Final = 2
"""Idle checks in a row that find messages waiting before the worker gives up."""


class WatchdogError(Exception):
    """Messages wait in the queue but none arrive, even after consuming again."""


async def watch(consumer: Consumer, *, idle_s: float, queue: str) -> None:
    """Watch ``consumer`` until cancelled; raises :class:`WatchdogError` when stuck."""
    strikes = 0
    while True:
        await asyncio.sleep(idle_s / 2)
        cancelled_by_broker = consumer.cancelled_by_broker
        idle = consumer.idle_s() >= idle_s
        if consumer.busy or (not cancelled_by_broker and not idle):
            strikes = 0
            continue
        waiting = await consumer.waiting()
        if not cancelled_by_broker and not waiting:
            strikes = 0
            continue
        strikes += 1
        if strikes >= WATCHDOG_STRIKES:
            raise WatchdogError(
                f"{waiting} messages wait in {queue} but none arrived for {idle_s * strikes:.0f} s"
            )
        await consumer.consume_again(waiting=waiting, cancelled_by_broker=cancelled_by_broker)
