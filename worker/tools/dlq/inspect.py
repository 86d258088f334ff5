"""``chatstore dlq inspect``: counts by reason, oldest and newest, samples.

Letters are taken without acknowledgement and returned when the channel
closes, so the queue keeps every letter; only their delivery counters move.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from worker.tools.dlq.letters import Letter, read_letter
from worker.tools.progress import Progress
from worker.topology import DLQ
from worker.unavailable import rabbitmq_connection


@dataclass
class Summary:
    total: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    oldest: datetime | None = None
    newest: datetime | None = None
    samples: list[Letter] = field(default_factory=list)

    def add(self, letter: Letter, samples_per_reason: int) -> None:
        self.total += 1
        self.by_reason[letter.reason] += 1
        if letter.dead_lettered_at is not None:
            when = letter.dead_lettered_at
            self.oldest = when if self.oldest is None else min(self.oldest, when)
            self.newest = when if self.newest is None else max(self.newest, when)
        if self.by_reason[letter.reason] <= samples_per_reason:
            self.samples.append(letter)

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_reason": dict(self.by_reason.most_common()),
            "oldest": self.oldest.isoformat() if self.oldest else None,
            "newest": self.newest.isoformat() if self.newest else None,
            "samples": [
                asdict(sample) | {"dead_lettered_at": _iso(sample.dead_lettered_at)}
                for sample in self.samples
            ],
        }

    def as_text(self) -> str:
        lines = [f"{self.total} dead letters in {DLQ}"]
        lines += [f"  {reason:<20} {count:>8}" for reason, count in self.by_reason.most_common()]
        if self.oldest and self.newest:
            lines.append(f"oldest {_iso(self.oldest)}, newest {_iso(self.newest)}")
        for sample in self.samples:
            lines.append(
                f"- {sample.reason}: {sample.detail}\n"
                f"  event {sample.event_id} ({sample.event_type}), "
                f"replayed {sample.replays}x: {sample.body_sample!r}"
            )
        return "\n".join(lines)


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


async def inspect(amqp_url: str, *, samples_per_reason: int = 2) -> Summary:
    """Read every letter in the DLQ and put each one back."""
    summary = Summary()
    async with rabbitmq_connection(amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(DLQ, passive=True)
        waiting = queue.declaration_result.message_count or 0
        progress = Progress(waiting, "inspecting")
        # Unacknowledged letters are not handed out again, so get() walks the
        # queue once and ends when none is ready; closing returns them all.
        while summary.total < waiting:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            summary.add(read_letter(message), samples_per_reason)
            progress.advance()
        progress.done()
    return summary


def render(summary: Summary, *, as_json: bool) -> str:
    return json.dumps(summary.as_json(), indent=2) if as_json else summary.as_text()
