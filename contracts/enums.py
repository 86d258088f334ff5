"""The closed sets of values the contract and the schema share, each defined once.

They are ``StrEnum``: a member is its string (``MessageRole.USER == "user"``),
so the wire format and the database columns hold the plain values.
"""

from __future__ import annotations

from enum import StrEnum


class MessageRole(StrEnum):
    """Who wrote a message: the role of a message.created event and of a stored message."""

    USER = "user"
    ASSISTANT = "assistant"


class ConversationStatus(StrEnum):
    """A stored conversation's status: active until archived, then archived for good."""

    ACTIVE = "active"
    ARCHIVED = "archived"
