"""The schema (CONTRACT.md section 3) as SQLAlchemy 2 typed declarative models.

This is the one definition of the tables. The Core tables that the history
repository and the bench build their queries on are ``Conversation.__table__``
and ``Message.__table__`` (exported as :data:`conversations` and
:data:`messages`), and the migrations in ``alembic/`` must match
:data:`metadata`, which ``alembic check`` verifies in the test suite.

The worker writes a batch with hand-written SQL (``worker/ingest/store.py``),
not through the ORM; the models are for programs that read or maintain the
history with sessions::

    async with AsyncSession(engine) as session:
        conversation = await session.get(Conversation, conversation_id)
        for message in await conversation.awaitable_attrs.messages:
            ...

An object made with the constructor gets ``created_at`` (and a conversation
``updated_at``) set to now unless given: that default lives in ``__init__``,
so a Core insert into :data:`conversations` or :data:`messages` never gets a
wall-clock time it did not ask for (the worker's timestamps come from the
events). A new id and ``active`` are column defaults, as the server's own
default is ``active``. The columns keep the contract's shape: ``created_at``
and ``updated_at`` are nullable with no server default.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final, cast

from sqlalchemy import (
    CheckConstraint,
    Enum,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from contracts.enums import ConversationStatus, MessageRole
from contracts.events import USER_CONTENT_MAX_CHARS

# Stable constraint names, so migrations can refer to them and downgrade cleanly.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
LABEL_MAX_CHARS: Final = 20
"""Width of the ``status`` and ``role`` columns."""


def _now() -> datetime:
    return datetime.now(UTC)


def _label(enum: type[ConversationStatus] | type[MessageRole]) -> Enum:
    # A varchar holding the enum's values, not a PostgreSQL ENUM type: adding
    # a value later is a new CHECK, not an ALTER TYPE. The CHECK is declared
    # on the table under the contract's constraint name, so Enum makes none.
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=LABEL_MAX_CHARS,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


def _one_of(column: str, enum: type[ConversationStatus] | type[MessageRole]) -> str:
    return f"{column} IN ({', '.join(repr(member.value) for member in enum)})"


class Base(AsyncAttrs, DeclarativeBase):
    """The declarative base; ``AsyncAttrs`` gives ``awaitable_attrs`` for lazy loads."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    """``users``: owned by the application that manages accounts.

    chatstore only reads it (an event of an unknown user is refused), and its
    migration creates this minimal shape only where no such table exists.
    """

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)


class Conversation(Base):
    """``conversations``: one user's conversation, active until archived."""

    __tablename__ = "conversations"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    user_id: Mapped[str] = mapped_column(
        String(255), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    status: Mapped[ConversationStatus] = mapped_column(
        _label(ConversationStatus),
        nullable=False,
        default=ConversationStatus.ACTIVE,
        server_default=text(f"'{ConversationStatus.ACTIVE.value}'"),
    )
    created_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    updated_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))

    def __init__(self, **values: Any) -> None:
        now = _now()
        values.setdefault("created_at", now)
        values.setdefault("updated_at", now)
        super().__init__(**values)

    # The database deletes a conversation's messages (ON DELETE CASCADE):
    # passive_deletes lets it, instead of loading every message to delete it.
    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Message.created_at",
    )

    __table_args__ = (
        CheckConstraint(_one_of("status", ConversationStatus), name="status"),
        Index(None, "user_id"),
        Index("ix_conversations_updated_at_desc", text("updated_at DESC")),
        Index(None, "user_id", "status"),
    )


class Message(Base):
    """``messages``: one chat message; its id is the event's idempotency key."""

    __tablename__ = "messages"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[str] = mapped_column(
        String(255), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    role: Mapped[MessageRole] = mapped_column(_label(MessageRole), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    # The declarative base reserves the attribute name ``metadata`` (the
    # tables' MetaData); the column keeps its name. none_as_null: None is SQL
    # NULL, as the worker stores it, not the JSON value 'null' (JSONB's default).
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB(none_as_null=True))
    created_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))

    conversation: Mapped[Conversation] = relationship(back_populates="messages")

    def __init__(self, **values: Any) -> None:
        values.setdefault("created_at", _now())
        super().__init__(**values)

    __table_args__ = (
        CheckConstraint(_one_of("role", MessageRole), name="role"),
        CheckConstraint(
            f"role != '{MessageRole.USER.value}' OR length(content) <= {USER_CONTENT_MAX_CHARS}",
            name="user_content_length",
        ),
        Index(None, "conversation_id"),
        Index(
            "ix_messages_conversation_id_created_at_desc",
            "conversation_id",
            text("created_at DESC"),
        ),
    )


__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "Conversation",
    "ConversationStatus",
    "Message",
    "MessageRole",
    "User",
    "conversations",
    "messages",
    "metadata",
    "users",
]

metadata: Final = Base.metadata
"""Every table of the schema: what Alembic compares the migrations with."""
users: Final = cast(Table, User.__table__)
conversations: Final = cast(Table, Conversation.__table__)
messages: Final = cast(Table, Message.__table__)
