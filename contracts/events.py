"""The wire contract as pydantic models (CONTRACT.md section 1).

Every event is an envelope whose ``type`` selects the shape of ``data``. The
models describe the shape; the rules pydantic cannot express on its own (no
NUL characters, no NaN, no duplicate keys, bounded nesting) are enforced by
:func:`contracts.decode` before the models see the JSON.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Self
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from contracts.enums import MessageRole
from contracts.routing import ROUTING_KEYS

WITHIN_METADATA_BOUNDS: Final = "within_metadata_bounds"
"""Validation context key: the caller has shown the metadata cannot exceed its
size and depth limits (see ``contracts.decode``), so they need no checking."""

SCHEMA_VERSION: Final = 1
"""The highest envelope ``version`` this code understands."""

USER_CONTENT_MAX_CHARS: Final = 1000
CONTENT_MAX_CHARS: Final = 100_000
METADATA_MAX_BYTES: Final = 16 * 1024
METADATA_MAX_DEPTH: Final = 32
USER_ID_MAX_CHARS: Final = 255

# RFC 3339 date-time with a mandatory offset. pydantic's own datetime parser is
# laxer (it takes Unix times, as numbers or digit strings), which the contract
# does not allow, so the shape is checked first.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)


def _require_rfc3339(value: object) -> object:
    if isinstance(value, datetime):  # built in Python, e.g. by the publisher
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 timestamp with an offset")
    return value


def _representable_in_utc(value: datetime) -> datetime:
    # 0001-01-01T00:00:00+01:00 is a valid offset time that has no UTC
    # equivalent in Python, and the database driver could not send it.
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None
    return value


Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_require_rfc3339),
    AfterValidator(_representable_in_utc),
    Field(json_schema_extra={"format": "date-time"}),
]
UserId = Annotated[str, Field(min_length=1, max_length=USER_ID_MAX_CHARS)]


def json_depth(value: object) -> int:
    """Nesting depth of a JSON value: a scalar is 0, ``{}`` and ``[]`` are 1."""
    if isinstance(value, dict):
        return 1 + max((json_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((json_depth(v) for v in value), default=0)
    return 0


class _Model(BaseModel):
    # Unknown fields are ignored for forward compatibility; models are values.
    model_config = ConfigDict(extra="ignore", frozen=True)


class MessageCreatedData(_Model):
    message_id: UUID
    conversation_id: UUID
    user_id: UserId
    role: MessageRole
    content: str = Field(min_length=1, max_length=CONTENT_MAX_CHARS)
    metadata: dict[str, Any] | None = Field(
        default=None,
        description=(
            f"At most {METADATA_MAX_BYTES} bytes once serialised as compact UTF-8 JSON, "
            f"nested at most {METADATA_MAX_DEPTH} levels (the object itself is level 1)."
        ),
    )
    created_at: Timestamp

    model_config = ConfigDict(
        json_schema_extra={
            # The per-role limit, so publishers in other languages see it too.
            "if": {"properties": {"role": {"const": MessageRole.USER.value}}},
            "then": {"properties": {"content": {"maxLength": USER_CONTENT_MAX_CHARS}}},
        }
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_is_bounded(
        cls, value: dict[str, Any] | None, info: ValidationInfo
    ) -> dict[str, Any] | None:
        if value is None:
            return None
        if info.context is not None and info.context.get(WITHIN_METADATA_BOUNDS):
            return value  # the decoder proved both bounds from the raw body
        depth = json_depth(value)
        if depth > METADATA_MAX_DEPTH:
            raise ValueError(f"nested {depth} levels, more than {METADATA_MAX_DEPTH}")
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
        if size > METADATA_MAX_BYTES:
            raise ValueError(f"{size} bytes once serialised, more than {METADATA_MAX_BYTES}")
        return value

    @model_validator(mode="after")
    def _user_content_is_short(self) -> Self:
        if self.role is MessageRole.USER and len(self.content) > USER_CONTENT_MAX_CHARS:
            raise ValueError(
                f"content of a user message has {len(self.content)} characters, "
                f"more than {USER_CONTENT_MAX_CHARS}"
            )
        return self


class ConversationArchivedData(_Model):
    conversation_id: UUID
    user_id: UserId
    archived_at: Timestamp


class _Envelope(_Model):
    event_id: UUID
    version: Literal[1] = Field(description="Envelope version; higher ones are dead-lettered.")
    occurred_at: Timestamp


class MessageCreated(_Envelope):
    """``message.created``: one chat message, keyed by ``data.message_id``."""

    type: Literal["message.created"]  # contracts.routing.MESSAGE_CREATED
    data: MessageCreatedData


class ConversationArchived(_Envelope):
    """``conversation.archived``: the conversation is closed for good."""

    type: Literal["conversation.archived"]  # contracts.routing.CONVERSATION_ARCHIVED
    data: ConversationArchivedData


AnyEvent = MessageCreated | ConversationArchived
"""Any event of the contract (the plain union, for annotations)."""

Event = Annotated[AnyEvent, Field(discriminator="type")]
"""Any event of the contract, discriminated on ``type`` (for validation)."""

EVENT_TYPES: Final[frozenset[str]] = frozenset(ROUTING_KEYS)

event_adapter: Final[TypeAdapter[AnyEvent]] = TypeAdapter(Event)
