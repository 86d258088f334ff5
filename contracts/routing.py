"""Where events go on the broker (CONTRACT.md section 1): the exchange and the routing keys.

Publishers send every event to :data:`EXCHANGE` with its type as the routing
key. The worker's queues (``worker.topology``) bind to these same names.
"""

from __future__ import annotations

from typing import Final

EXCHANGE: Final = "chat.events"
"""The topic exchange every event is published to."""

MESSAGE_CREATED: Final = "message.created"
CONVERSATION_ARCHIVED: Final = "conversation.archived"

ROUTING_KEYS: Final = (MESSAGE_CREATED, CONVERSATION_ARCHIVED)
"""One routing key per event type: the type itself."""
