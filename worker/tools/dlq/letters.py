"""Reading a dead letter: its reason, detail, event and history, whoever made it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from aio_pika.abc import AbstractIncomingMessage

from contracts import EVENT_TYPES, Reason
from worker.ingest.deadletter import DEAD_LETTERED_AT_HEADER, DETAIL_HEADER, REASON_HEADER

REPLAYS_HEADER: Final = "x-chatstore-replays"
BODY_SAMPLE_CHARS: Final = 200


@dataclass(frozen=True)
class Letter:
    reason: str
    detail: str
    event_id: str | None
    event_type: str | None
    dead_lettered_at: datetime | None
    replays: int
    body_sample: str


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _event_fields(body: bytes) -> tuple[str | None, str | None]:
    """Event id and type, if the body is a JSON object that has them."""
    try:
        document = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(document, dict):
        return None, None
    event_id, event_type = document.get("event_id"), document.get("type")
    return (
        event_id if isinstance(event_id, str) else None,
        event_type if isinstance(event_type, str) else None,
    )


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(_text(value)) if value is not None else None
    except ValueError:
        return None


def read_letter(message: AbstractIncomingMessage) -> Letter:
    """What an operator needs to know of one dead letter."""
    headers = dict(message.headers or {})
    deaths = headers.get("x-death")
    if REASON_HEADER in headers:
        reason = _text(headers[REASON_HEADER])
        detail = _text(headers.get(DETAIL_HEADER, ""))
        when = _parse_time(headers.get(DEAD_LETTERED_AT_HEADER))
    elif isinstance(deaths, list) and deaths:
        # Made by the broker: only the delivery limit dead-letters into the DLQ.
        death = deaths[0] if isinstance(deaths[0], dict) else {}
        reason = Reason.DELIVERY_LIMIT.value
        detail = (
            f"the broker dead-lettered it from {_text(death.get('queue', '?'))} "
            f"({_text(death.get('reason', '?'))})"
        )
        when = _parse_time(death.get("time"))
    else:
        reason, detail, when = "unknown", "no reason header and no x-death", None
    event_id, event_type = _event_fields(message.body)
    replays = headers.get(REPLAYS_HEADER, 0)
    return Letter(
        reason=reason,
        detail=detail,
        event_id=event_id or message.message_id,
        event_type=event_type or message.type,
        dead_lettered_at=when or message.timestamp,
        replays=replays if isinstance(replays, int) else 0,
        body_sample=message.body[:BODY_SAMPLE_CHARS].decode("utf-8", "replace"),
    )


def routing_key_for(letter: Letter) -> str:
    """Where a replayed letter goes: its type if the queue is bound to it.

    The worker reads the type from the body, never from the routing key, so a
    letter of an unknown or unreadable type is routed as a message and the
    worker decides again.
    """
    if letter.event_type in EVENT_TYPES:
        return letter.event_type
    return "message.created"
