"""chatstore's client library: the wire contract, its decoder, and a publisher.

The chat runtime imports this package, never ``worker``::

    async with Publisher("amqp://chat-runtime:...@rabbitmq/") as publisher:
        publisher.publish_nowait(
            message_created(conversation_id=cid, user_id=uid, role="user", content=text)
        )

Importing it loads pydantic only: the publisher (and with it aio-pika) is
loaded the first time ``Publisher`` or one of its types is used. The schema as
SQLAlchemy models is :mod:`contracts.models`, reading history back is
:mod:`contracts.history`; neither needs aio-pika.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from contracts.build import conversation_archived, message_created
from contracts.decode import MAX_BODY_BYTES, MAX_BODY_DEPTH, decode
from contracts.enums import ConversationStatus, MessageRole
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
from contracts.routing import CONVERSATION_ARCHIVED, EXCHANGE, MESSAGE_CREATED, ROUTING_KEYS

if TYPE_CHECKING:
    from contracts.publisher import Publisher, WhenFull
    from contracts.publishing import CloseReport, PublisherStats

# Loaded on first use (PEP 562), so that importing the contract, the models or
# the history repository does not load aio-pika.
_PUBLISHER_NAMES = frozenset({"CloseReport", "Publisher", "PublisherStats", "WhenFull"})


if not TYPE_CHECKING:  # type checkers see the imports above, and nothing else

    def __getattr__(name: str) -> Any:
        if name in _PUBLISHER_NAMES:
            value = getattr(importlib.import_module("contracts.publisher"), name)
            globals()[name] = value
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _PUBLISHER_NAMES)


__all__ = [
    "CONTENT_MAX_CHARS",
    "CONVERSATION_ARCHIVED",
    "DETAIL_MAX_BYTES",
    "EVENT_TYPES",
    "EXCHANGE",
    "MAX_BODY_BYTES",
    "MAX_BODY_DEPTH",
    "MESSAGE_CREATED",
    "METADATA_MAX_BYTES",
    "METADATA_MAX_DEPTH",
    "ROUTING_KEYS",
    "SCHEMA_VERSION",
    "USER_CONTENT_MAX_CHARS",
    "AnyEvent",
    "CloseReport",
    "ConversationArchived",
    "ConversationArchivedData",
    "ConversationStatus",
    "Event",
    "MessageCreated",
    "MessageCreatedData",
    "MessageRole",
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
