"""Bytes off the wire to an event, or to the reason it is refused.

:func:`decode` is pure and total: it never raises for any input, and it
refuses hostile bodies (huge, deeply nested) in bounded time and memory.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Final

from pydantic import ValidationError

from contracts.events import (
    EVENT_TYPES,
    METADATA_MAX_BYTES,
    METADATA_MAX_DEPTH,
    SCHEMA_VERSION,
    WITHIN_METADATA_BOUNDS,
    AnyEvent,
    event_adapter,
)
from contracts.rejection import Reason, Rejection

MAX_BODY_BYTES: Final = 2 * 1024 * 1024
"""Larger than any valid event can be, even with every character escaped."""

MAX_BODY_DEPTH: Final = 2 + METADATA_MAX_DEPTH
"""Envelope (1) > data (2) > metadata, which may nest 32 levels itself."""

# Possessive quantifiers, and an unclosed string runs to the end of the text:
# no backtracking, so a body of many escaped quotes is linear, not quadratic.
_STRING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_EMPTY_PAIR = re.compile(r"\[\]|\{\}")
# Only these escapes can put a NUL or a lone surrogate into a parsed string
# (raw control characters are already a JSON syntax error).
_SUSPICIOUS_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


class _RefusedError(Exception):
    """Raised inside the JSON parser's hooks; becomes an ``invalid`` rejection."""


def decode(body: bytes) -> AnyEvent | Rejection:
    """The event in ``body``, or a :class:`Rejection` with the contract's reason."""
    if len(body) > MAX_BODY_BYTES:
        return Rejection(Reason.INVALID, f"body is {len(body)} bytes, over {MAX_BODY_BYTES}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        return Rejection(Reason.MALFORMED, f"body is not UTF-8: {error.reason} at {error.start}")
    # Fewer brackets than the limit cannot nest past it: the common case skips
    # the scan for two C-speed counts.
    brackets = body.count(b"{") + body.count(b"[")
    if brackets > MAX_BODY_DEPTH and (nesting_rejection := _check_nesting(text)):
        return nesting_rejection
    try:
        document = json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
        if _SUSPICIOUS_ESCAPE.search(text):
            _check_strings(document)
    except _RefusedError as refused:
        return Rejection(Reason.INVALID, str(refused))
    except json.JSONDecodeError as error:
        return Rejection(Reason.MALFORMED, f"body is not JSON: {error}")
    except ValueError as error:  # e.g. an integer past Python's digit limit
        return Rejection(Reason.INVALID, f"unreadable number: {error}")
    if not isinstance(document, dict):
        return Rejection(
            Reason.MALFORMED, f"body is a JSON {type(document).__name__}, not an object"
        )

    version = document.get("version")
    if type(version) is int and version > SCHEMA_VERSION:
        return Rejection(
            Reason.UNSUPPORTED_VERSION, f"version {version}; this worker knows {SCHEMA_VERSION}"
        )
    event_type = document.get("type")
    if isinstance(event_type, str) and event_type not in EVENT_TYPES:
        return Rejection(Reason.UNKNOWN_TYPE, f"unknown event type {event_type[:100]!r}")
    if version is not None and type(version) is not int:
        # pydantic would take True or 1.0 for the literal 1.
        return Rejection(Reason.INVALID, "version: must be an integer")
    try:
        return event_adapter.validate_python(
            document,
            context={WITHIN_METADATA_BOUNDS: _metadata_surely_bounded(len(body), brackets)},
        )
    except ValidationError as error:
        return Rejection(Reason.INVALID, _describe(error))


def _metadata_surely_bounded(body_bytes: int, brackets: int) -> bool:
    """Whether the metadata in a body this small cannot break its limits.

    Depth: the envelope and ``data`` take two of the brackets, so at most
    ``MAX_BODY_DEPTH`` brackets leave at most 32 for the metadata. Size:
    re-serialised compactly, JSON text grows only where a number is written
    longer (``1e15`` becomes ``1000000000000000.0``, 4.5 times), so a body
    under a fifth of the limit cannot hold metadata over it. This spares a
    ``json.dumps`` of every event's metadata, a tenth of the worker's time.
    """
    return brackets <= MAX_BODY_DEPTH and body_bytes * 5 <= METADATA_MAX_BYTES


def _check_nesting(text: str) -> Rejection | None:
    """Refuse text nested deeper than :data:`MAX_BODY_DEPTH`, without recursion.

    The C JSON parser recurses once per level and would raise RecursionError.
    Strings are blanked out, leaving only brackets; each pass then deletes the
    innermost empty pairs, so ``MAX_BODY_DEPTH`` passes empty any text nested
    no deeper. Every step is a C-speed regex pass over at most 2 MiB.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if len(brackets) <= 2 * MAX_BODY_DEPTH:
        return None
    for _ in range(MAX_BODY_DEPTH):
        brackets, removed = _EMPTY_PAIR.subn("", brackets)
        if not brackets:
            return None
        if not removed:
            # Outside strings, the brackets of any JSON text pair up.
            return Rejection(Reason.MALFORMED, "body is not JSON: unbalanced brackets")
    return Rejection(Reason.INVALID, f"JSON nested deeper than {MAX_BODY_DEPTH} levels")


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    document = dict(pairs)
    if len(document) != len(pairs):
        duplicated = [key for key, count in Counter(key for key, _ in pairs).items() if count > 1]
        raise _RefusedError(f"duplicate key {duplicated[0][:100]!r} in a JSON object")
    return document


def _refuse_constant(name: str) -> object:
    raise _RefusedError(f"{name} is not a JSON number")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _RefusedError(f"number {literal[:40]} is out of range")
    return value


def _check_strings(value: object) -> None:
    """Refuse NUL characters and lone surrogates anywhere: Postgres cannot store them."""
    if isinstance(value, str):
        if "\x00" in value:
            raise _RefusedError("a string contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _RefusedError("a string contains a lone surrogate") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


def _describe(error: ValidationError) -> str:
    problems = []
    for problem in error.errors(include_url=False, include_input=False, include_context=False):
        location = [str(part) for part in problem["loc"]]
        if location and location[0] in EVENT_TYPES:  # the union's tag, not a field
            location = location[1:]
        where = ".".join(location)
        problems.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    return "; ".join(problems)
