"""chatstore's wire contract: event models, their decoder, and a publisher.

The chat runtime imports this package only; it never needs ``worker``::

    async with Publisher("amqp://chat-runtime:...@rabbitmq/") as publisher:
        publisher.publish_nowait(
            message_created(conversation_id=cid, user_id=uid, role="user", content=text)
        )
"""

from contracts.build import conversation_archived, message_created
from contracts.decode import MAX_BODY_BYTES, MAX_BODY_DEPTH, decode
from contracts.events import (
    CONTENT_MAX_CHARS,
    EVENT_TYPES,
    METADATA_MAX_BYTES,
    METADATA_MAX_DEPTH,
    SCHEMA_VERSION,
    USER_CONTENT_MAX_CHARS,
    AnyEvent,
    ConversationArchived,
    ConversationArchivedData,
    Event,
    MessageCreated,
    MessageCreatedData,
    event_adapter,
)
from contracts.publisher import CloseReport, Publisher, PublisherStats, WhenFull
from contracts.rejection import DETAIL_MAX_BYTES, Reason, Rejection

__all__ = [
    "CONTENT_MAX_CHARS",
    "DETAIL_MAX_BYTES",
    "EVENT_TYPES",
    "MAX_BODY_BYTES",
    "MAX_BODY_DEPTH",
    "METADATA_MAX_BYTES",
    "METADATA_MAX_DEPTH",
    "SCHEMA_VERSION",
    "USER_CONTENT_MAX_CHARS",
    "AnyEvent",
    "CloseReport",
    "ConversationArchived",
    "ConversationArchivedData",
    "Event",
    "MessageCreated",
    "MessageCreatedData",
    "Publisher",
    "PublisherStats",
    "Reason",
    "Rejection",
    "WhenFull",
    "conversation_archived",
    "decode",
    "event_adapter",
    "message_created",
]
