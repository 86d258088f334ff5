"""Building wire events for tests, as plain JSON-ready dicts."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any


def message_created(**data: Any) -> dict[str, Any]:
    """A valid ``message.created`` envelope; ``data`` fields override the defaults."""
    now = datetime.now(UTC).isoformat()
    return {
        "event_id": str(uuid.uuid4()),
        "type": "message.created",
        "version": 1,
        "occurred_at": now,
        "data": {
            "message_id": str(uuid.uuid4()),
            "conversation_id": str(uuid.uuid4()),
            "user_id": "user-1",
            "role": "user",
            "content": "hello",
            "metadata": {"model": "test"},
            "created_at": now,
        }
        | data,
    }


def conversation_archived(**data: Any) -> dict[str, Any]:
    """A valid ``conversation.archived`` envelope; ``data`` fields override the defaults."""
    now = datetime.now(UTC).isoformat()
    return {
        "event_id": str(uuid.uuid4()),
        "type": "conversation.archived",
        "version": 1,
        "occurred_at": now,
        "data": {"conversation_id": str(uuid.uuid4()), "user_id": "user-1", "archived_at": now}
        | data,
    }


def body(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode()
