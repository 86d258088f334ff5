"""Opaque page cursors: the keyset of the last row of a page, and the query it is for."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

CursorKind = Literal["conversation", "message"]


class InvalidCursorError(ValueError):
    """A cursor that this repository did not make, or made for another query."""


@dataclass(frozen=True, slots=True)
class Keyset:
    """The position of a row in ``timestamp DESC NULLS FIRST, id DESC`` order."""

    at: datetime | None
    id: UUID


def encode_cursor(kind: CursorKind, key: Keyset) -> str:
    # The kind is inside, so a message cursor handed to the conversation list
    # is refused instead of silently paging somewhere odd.
    payload = [kind, None if key.at is None else key.at.isoformat(), str(key.id)]
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, kind: CursorKind) -> Keyset:
    try:
        found, at, id_ = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        key = Keyset(None if at is None else datetime.fromisoformat(at), UUID(id_))
        if key.at is not None and key.at.tzinfo is None:
            raise ValueError("a naive timestamp")
    except (binascii.Error, AttributeError, TypeError, ValueError):
        raise InvalidCursorError("malformed cursor") from None
    if found != kind:
        raise InvalidCursorError(f"not a {kind} cursor")
    return key
