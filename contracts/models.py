"""The tables chatstore writes (CONTRACT.md section 3), as SQLAlchemy Core.

The migrations under ``migrations/`` are the schema; these definitions must
match them, which ``alembic check`` verifies in the test suite.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID

# Stable constraint names, so migrations can refer to them and downgrade cleanly.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

users = Table(
    "users",
    metadata,
    # Owned by the application that manages accounts: chatstore only reads it,
    # and its migration creates this minimal shape only where none exists.
    Column("id", String(255), primary_key=True),
)

conversations = Table(
    "conversations",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "user_id",
        String(255),
        ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("status", String(20), nullable=False, server_default=text("'active'")),
    Column("created_at", TIMESTAMP(timezone=True)),
    Column("updated_at", TIMESTAMP(timezone=True)),
    CheckConstraint("status IN ('active', 'archived')", name="status"),
    Index(None, "user_id"),
    Index("ix_conversations_updated_at_desc", text("updated_at DESC")),
    Index(None, "user_id", "status"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "conversation_id",
        UUID(as_uuid=True),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "user_id",
        String(255),
        ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("role", String(20), nullable=False),
    Column("content", Text, nullable=False),
    Column("metadata", JSONB),
    Column("created_at", TIMESTAMP(timezone=True)),
    CheckConstraint("role IN ('user', 'assistant')", name="role"),
    CheckConstraint("role != 'user' OR length(content) <= 1000", name="user_content_length"),
    Index(None, "conversation_id"),
    Index(
        "ix_messages_conversation_id_created_at_desc",
        "conversation_id",
        text("created_at DESC"),
    ),
)
