"""Reading chat history back, for the chat application: a :class:`Repository`.

Loads SQLAlchemy and asyncpg, never aio-pika or the worker::

    from contracts.history import Repository, reader_engine

    repository = Repository(reader_engine("postgresql://app@db:5432/chatstore"))
    page = await repository.conversations("user-42", limit=20)
"""

from contracts.history.cursor import InvalidCursorError, Keyset, decode_cursor, encode_cursor
from contracts.history.engine import reader_engine, transaction_pooling_args
from contracts.history.repository import (
    MAX_CONVERSATIONS_PAGE,
    MAX_MESSAGES_PAGE,
    ConversationRow,
    MessageRow,
    Page,
    Repository,
)

__all__ = [
    "MAX_CONVERSATIONS_PAGE",
    "MAX_MESSAGES_PAGE",
    "ConversationRow",
    "InvalidCursorError",
    "Keyset",
    "MessageRow",
    "Page",
    "Repository",
    "decode_cursor",
    "encode_cursor",
    "reader_engine",
    "transaction_pooling_args",
]
