"""``chatstore dlq replay``: dead letters back to ``chat.events``, one at a time.

Each letter is taken, published with a confirm, and only then acknowledged:
a replay interrupted at any point loses nothing (at worst a letter is both
replayed and still in the DLQ, and the worker's idempotency absorbs it).
Letters it leaves (filtered out, over the loop guard, a dry run) stay
unacknowledged until the end and return to the DLQ when the channel closes.
Safe while workers run: they never consume the DLQ.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

from worker.tools.dlq.letters import REPLAYS_HEADER, Letter, read_letter, routing_key_for
from worker.tools.progress import Progress
from worker.topology import DLQ, EXCHANGE
from worker.unavailable import rabbitmq_connection

# Headers that described the letter's death, not the event: a replayed event
# starts clean (the broker's own x-death history is kept).
_STRIPPED_PREFIXES = ("x-chatstore-",)
_STRIPPED_HEADERS = frozenset({"x-delivery-count"})


@dataclass(frozen=True)
class ReplayFilter:
    reason: str | None = None
    event_type: str | None = None

    def matches(self, letter: Letter) -> bool:
        return (self.reason is None or letter.reason == self.reason) and (
            self.event_type is None or letter.event_type == self.event_type
        )


@dataclass
class ReplayReport:
    dry_run: bool
    seen: int = 0
    replayed: int = 0
    would_replay: int = 0
    filtered_out: int = 0
    over_loop_guard: list[str | None] = field(default_factory=list)  # their event ids
    unroutable: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"by_reason": dict(self.by_reason)}

    def as_text(self) -> str:
        verb = "would replay" if self.dry_run else "replayed"
        count = self.would_replay if self.dry_run else self.replayed
        lines = [f"{verb} {count} of {self.seen} dead letters seen"]
        lines += [f"  {reason:<20} {n:>8}" for reason, n in self.by_reason.most_common()]
        if self.filtered_out:
            lines.append(f"left {self.filtered_out} that the filter did not match")
        if self.over_loop_guard:
            lines.append(
                f"left {len(self.over_loop_guard)} replayed too often already (loop guard): "
                + ", ".join(str(event_id) for event_id in self.over_loop_guard[:10])
            )
        if self.unroutable:
            lines.append(f"left {self.unroutable} that the broker could not route")
        return "\n".join(lines)


def replayed_message(message: AbstractIncomingMessage, replays: int) -> aio_pika.Message:
    """The letter as a fresh event: same body and properties, death headers gone."""
    headers = {
        key: value
        for key, value in (message.headers or {}).items()
        if not key.startswith(_STRIPPED_PREFIXES) and key not in _STRIPPED_HEADERS
    }
    headers[REPLAYS_HEADER] = replays
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


async def replay(
    amqp_url: str,
    *,
    selection: ReplayFilter,
    limit: int | None = None,
    dry_run: bool = False,
    rate_per_s: float | None = None,
    max_replays: int = 3,
) -> ReplayReport:
    """Move matching letters from the DLQ back to ``chat.events``."""
    report = ReplayReport(dry_run=dry_run)
    async with rabbitmq_connection(amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        queue = await channel.declare_queue(DLQ, passive=True)
        waiting = queue.declaration_result.message_count or 0
        progress = Progress(waiting, "dry run" if dry_run else "replaying")
        interval = 1 / rate_per_s if rate_per_s else 0.0
        next_at = time.monotonic()
        while report.seen < waiting and (limit is None or _done(report) < limit):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            report.seen += 1
            progress.advance()
            letter = read_letter(message)
            if not selection.matches(letter):
                report.filtered_out += 1
            elif letter.replays >= max_replays:
                report.over_loop_guard.append(letter.event_id)
            elif dry_run:
                report.would_replay += 1
                report.by_reason[letter.reason] += 1
            else:
                if interval:
                    next_at = max(next_at + interval, time.monotonic())
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                if await _publish(exchange, message, letter):
                    await message.ack()
                    report.replayed += 1
                    report.by_reason[letter.reason] += 1
                else:
                    report.unroutable += 1
        progress.done()
    return report


def _done(report: ReplayReport) -> int:
    return report.would_replay if report.dry_run else report.replayed


async def _publish(
    exchange: AbstractExchange, message: AbstractIncomingMessage, letter: Letter
) -> bool:
    """Publish with a confirm; False if the broker returned it (nothing bound)."""
    confirmation = await exchange.publish(
        replayed_message(message, letter.replays + 1),
        routing_key=routing_key_for(letter),
        mandatory=True,
    )
    return isinstance(confirmation, aiormq.spec.Basic.Ack)


def render(report: ReplayReport, *, as_json: bool) -> str:
    return json.dumps(report.as_json(), indent=2) if as_json else report.as_text()
