"""Why an event is refused: the contract's dead-letter reasons, as values."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

DETAIL_MAX_BYTES: Final = 1024


class Reason(StrEnum):
    """The one-word reasons of CONTRACT.md section 4 (header ``x-chatstore-reason``)."""

    MALFORMED = "malformed"
    INVALID = "invalid"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_USER = "unknown_user"
    OWNERSHIP_MISMATCH = "ownership_mismatch"
    CONFLICT = "conflict"
    DELIVERY_LIMIT = "delivery_limit"


def truncate_utf8(text: str, max_bytes: int = DETAIL_MAX_BYTES) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character."""
    # backslashreplace: a lone surrogate must not make the header unencodable.
    encoded = text.encode("utf-8", "backslashreplace")
    if len(encoded) <= max_bytes:
        return encoded.decode()
    marker = "…"
    room = max_bytes - len(marker.encode())
    return encoded[:room].decode("utf-8", "ignore") + marker


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event that will not be stored, and why (``detail`` is at most 1 KiB)."""

    reason: Reason
    detail: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", truncate_utf8(self.detail))
