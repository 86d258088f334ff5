"""chatstore's wire contract: event models and their decoder.

The chat runtime imports this package only; it never needs ``worker``.
"""

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
    "ConversationArchived",
    "ConversationArchivedData",
    "Event",
    "MessageCreated",
    "MessageCreatedData",
    "Reason",
    "Rejection",
    "decode",
    "event_adapter",
]
