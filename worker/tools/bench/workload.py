"""The events the bench publishes: valid ``message.created`` bodies of a realistic size.

Users and conversations are fixed by the event count, so every scenario of a
run sees the same stream: 100 users, one conversation per ten events, and
events spread round-robin over the conversations (as the lead's ingest test
does), so each batch of 500 touches 500 conversations, the hard case.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

USERS: Final = 100
EVENTS_PER_CONVERSATION: Final = 10
ROUTING_KEY: Final = "message.created"
_EPOCH: Final = datetime(2026, 1, 1, tzinfo=UTC)


def user_ids(count: int = USERS) -> list[str]:
    return [f"bench-user-{n}" for n in range(count)]


@dataclass(frozen=True)
class Workload:
    """A stream of ``events`` message.created events over fixed conversations."""

    events: int

    def conversations(self) -> list[tuple[str, str]]:
        """(conversation id, owner) pairs; deterministic for a given size."""
        users = user_ids()
        count = max(1, self.events // EVENTS_PER_CONVERSATION)
        return [(str(uuid.UUID(int=n + 1, version=4)), users[n % len(users)]) for n in range(count)]

    def bodies(self) -> Iterator[bytes]:
        """The events' bodies, generated lazily (a backlog of millions stays small)."""
        conversations = self.conversations()
        for n in range(self.events):
            conversation_id, user_id = conversations[n % len(conversations)]
            yield body(n, conversation_id, user_id, _EPOCH + timedelta(milliseconds=n))


def body(n: int, conversation_id: str, user_id: str, at: datetime) -> bytes:
    """The n-th event: alternating roles, ~120 characters of content, small metadata.

    ``at`` is both the envelope's ``occurred_at`` and the message's
    ``created_at``, so the latency scenario reads the publish time in the row.
    """
    moment = at.isoformat()
    event = {
        "event_id": str(uuid.uuid4()),
        "type": ROUTING_KEY,
        "version": 1,
        "occurred_at": moment,
        "data": {
            "message_id": str(uuid.uuid4()),
            "conversation_id": conversation_id,
            "user_id": user_id,
            "role": "assistant" if n % 2 else "user",
            "content": f"benchmark message {n} " + "lorem ipsum " * 8,
            "metadata": {"model": "bench", "tokens": n % 500},
            "created_at": moment,
        },
    }
    return json.dumps(event, separators=(",", ":")).encode()
