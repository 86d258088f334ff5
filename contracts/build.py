"""One-line constructors for the chat runtime: ids and timestamps filled in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from contracts.enums import MessageRole
from contracts.events import (
    ConversationArchived,
    ConversationArchivedData,
    MessageCreated,
    MessageCreatedData,
)


def message_created(
    *,
    conversation_id: UUID | str,
    user_id: str,
    role: MessageRole | Literal["user", "assistant"],
    content: str,
    metadata: dict[str, Any] | None = None,
    message_id: UUID | str | None = None,
    created_at: datetime | None = None,
) -> MessageCreated:
    """A ``message.created`` event; a new ``message_id`` and now unless given.

    Pass your own ``message_id`` when the runtime may send the same message
    twice (retries): it is the idempotency key.
    """
    now = datetime.now(UTC)
    return MessageCreated.model_validate(
        {
            "event_id": uuid.uuid4(),
            "type": "message.created",
            "version": 1,
            "occurred_at": now,
            "data": MessageCreatedData.model_validate(
                {
                    "message_id": message_id or uuid.uuid4(),
                    "conversation_id": conversation_id,
                    "user_id": user_id,
                    "role": role,
                    "content": content,
                    "metadata": metadata,
                    "created_at": created_at or now,
                }
            ),
        }
    )


def conversation_archived(
    *, conversation_id: UUID | str, user_id: str, archived_at: datetime | None = None
) -> ConversationArchived:
    """A ``conversation.archived`` event, archived now unless ``archived_at`` is given."""
    now = datetime.now(UTC)
    return ConversationArchived.model_validate(
        {
            "event_id": uuid.uuid4(),
            "type": "conversation.archived",
            "version": 1,
            "occurred_at": now,
            "data": ConversationArchivedData.model_validate(
                {
                    "conversation_id": conversation_id,
                    "user_id": user_id,
                    "archived_at": archived_at or now,
                }
            ),
        }
    )
