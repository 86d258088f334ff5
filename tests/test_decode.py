"""Every rule of the wire format (CONTRACT.md section 1), decided by decode()."""

from __future__ import annotations

import json
import time
import tracemalloc
import uuid
from typing import Any

import pytest

from contracts import (
    DETAIL_MAX_BYTES,
    MAX_BODY_BYTES,
    METADATA_MAX_BYTES,
    ConversationArchived,
    MessageCreated,
    Reason,
    Rejection,
    decode,
)
from tests.events import body, conversation_archived, message_created


def rejection_of(raw: bytes) -> Rejection:
    result = decode(raw)
    assert isinstance(result, Rejection), f"expected a rejection, got {result!r}"
    assert len(result.detail.encode()) <= DETAIL_MAX_BYTES
    return result


def nested(depth: int) -> Any:
    """A JSON object nested ``depth`` levels ({} is 1)."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_a_valid_message_is_decoded_with_its_fields() -> None:
    event = message_created(role="assistant", metadata={"tokens": 12, "nested": {"a": [1, 2.5]}})
    result = decode(body(event))
    assert isinstance(result, MessageCreated)
    assert str(result.event_id) == event["event_id"]
    assert str(result.data.message_id) == event["data"]["message_id"]
    assert result.data.role == "assistant"
    assert result.data.metadata == {"tokens": 12, "nested": {"a": [1, 2.5]}}
    assert result.data.created_at.utcoffset() is not None


def test_a_valid_archive_is_decoded() -> None:
    event = conversation_archived(archived_at="2026-11-22T10:15:30.5-05:00")
    result = decode(body(event))
    assert isinstance(result, ConversationArchived)
    assert result.data.archived_at.isoformat() == "2026-11-22T10:15:30.500000-05:00"


def test_unknown_extra_fields_are_ignored() -> None:
    event = message_created(future_field=[1, 2])
    event["trace"] = {"id": "abc"}
    assert isinstance(decode(body(event)), MessageCreated)


def test_null_metadata_is_accepted() -> None:
    result = decode(body(message_created(metadata=None)))
    assert isinstance(result, MessageCreated)
    assert result.data.metadata is None


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"event_id": ', "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "list, not an object"),
        (b'"text"', "str, not an object"),
        (b"42", "int, not an object"),
        (b"null", "NoneType, not an object"),
        (b"[" * 100 + b"}" * 100, "not JSON"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_malformed(raw: bytes, needle: str) -> None:
    rejection = rejection_of(raw)
    assert rejection.reason is Reason.MALFORMED
    assert needle in rejection.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("message_id", "not-a-uuid"),
        ("conversation_id", 17),
        ("user_id", ""),
        ("user_id", "u" * 256),
        ("user_id", 42),
        ("role", "system"),
        ("content", ""),
        ("content", ["list"]),
        ("metadata", "a string"),
        ("metadata", [1, 2]),
        ("created_at", "2026-11-22T10:15:30"),  # naive
        ("created_at", "2026-11-22"),
        ("created_at", 1763806530),  # a Unix time is not RFC 3339
        ("created_at", "1763806530"),
        ("created_at", "yesterday"),
        ("created_at", "0001-01-01T00:00:00+01:00"),  # before year 1 in UTC
        ("created_at", "9999-12-31T23:59:59-01:00"),  # after year 9999 in UTC
    ],
)
def test_ill_typed_message_fields_are_invalid(field: str, value: object) -> None:
    rejection = rejection_of(body(message_created(**{field: value})))
    assert rejection.reason is Reason.INVALID
    assert field in rejection.detail


@pytest.mark.parametrize(
    "field", ["message_id", "conversation_id", "user_id", "role", "content", "created_at"]
)
def test_missing_message_fields_are_invalid(field: str) -> None:
    event = message_created()
    del event["data"][field]
    rejection = rejection_of(body(event))
    assert rejection.reason is Reason.INVALID
    assert f"data.{field}: Field required" in rejection.detail


@pytest.mark.parametrize("field", ["event_id", "occurred_at", "data", "version"])
def test_missing_envelope_fields_are_invalid(field: str) -> None:
    event = conversation_archived()
    del event[field]
    rejection = rejection_of(body(event))
    assert rejection.reason is Reason.INVALID
    assert field in rejection.detail


def test_a_missing_type_is_invalid() -> None:
    event = message_created()
    del event["type"]
    assert rejection_of(body(event)).reason is Reason.INVALID


@pytest.mark.parametrize("version", [0, -1, True, 1.0, "1", None])
def test_versions_other_than_the_integer_one_are_invalid(version: object) -> None:
    event = message_created()
    event["version"] = version
    assert rejection_of(body(event)).reason is Reason.INVALID


@pytest.mark.parametrize("version", [2, 99])
def test_a_version_above_one_is_unsupported(version: int) -> None:
    event = message_created()
    event["version"] = version
    event["data"] = {"a shape": "from the future"}
    rejection = rejection_of(body(event))
    assert rejection.reason is Reason.UNSUPPORTED_VERSION
    assert str(version) in rejection.detail


@pytest.mark.parametrize("event_type", ["message.deleted", "MESSAGE.CREATED", ""])
def test_an_unknown_type_is_unknown_type(event_type: str) -> None:
    event = message_created()
    event["type"] = event_type
    assert rejection_of(body(event)).reason is Reason.UNKNOWN_TYPE


def test_the_type_comes_from_the_body_and_must_match_the_data() -> None:
    event = message_created()
    event["type"] = "conversation.archived"
    assert rejection_of(body(event)).reason is Reason.INVALID


def test_user_content_of_1000_characters_is_accepted_and_1001_is_not() -> None:
    # Characters, not bytes: "é" is two bytes in UTF-8.
    assert isinstance(decode(body(message_created(content="é" * 1000))), MessageCreated)
    rejection = rejection_of(body(message_created(content="é" * 1001)))
    assert rejection.reason is Reason.INVALID
    assert "1001 characters" in rejection.detail


def test_assistant_content_may_be_100000_characters_but_not_more() -> None:
    ok = message_created(role="assistant", content="x" * 100_000)
    assert isinstance(decode(body(ok)), MessageCreated)
    too_long = message_created(role="assistant", content="x" * 100_001)
    assert rejection_of(body(too_long)).reason is Reason.INVALID


def metadata_of_serialised_size(size: int) -> dict[str, str]:
    overhead = len(json.dumps({"k": ""}, separators=(",", ":")))
    return {"k": "m" * (size - overhead)}


def test_metadata_of_exactly_16_kib_is_accepted_and_one_byte_more_is_not() -> None:
    assert isinstance(
        decode(body(message_created(metadata=metadata_of_serialised_size(16 * 1024)))),
        MessageCreated,
    )
    rejection = rejection_of(
        body(message_created(metadata=metadata_of_serialised_size(16 * 1024 + 1)))
    )
    assert rejection.reason is Reason.INVALID
    assert "16385 bytes" in rejection.detail


def test_metadata_size_counts_utf8_bytes_of_compact_json() -> None:
    # 5461 three-byte characters plus {"k":""} (8 bytes) = 16391 bytes > 16 KiB,
    # although it is only 5469 characters.
    rejection = rejection_of(body(message_created(metadata={"k": "€" * 5461})))
    assert rejection.reason is Reason.INVALID


def test_metadata_nested_32_levels_is_accepted_and_33_is_not() -> None:
    assert isinstance(decode(body(message_created(metadata=nested(32)))), MessageCreated)
    rejection = rejection_of(body(message_created(metadata=nested(33))))
    assert rejection.reason is Reason.INVALID
    assert "nested" in rejection.detail


def test_lists_count_as_nesting_levels_in_metadata() -> None:
    deep_list: Any = []  # 31 levels of lists inside the metadata object: 32 in all
    for _ in range(30):
        deep_list = [deep_list]
    assert isinstance(decode(body(message_created(metadata={"l": deep_list}))), MessageCreated)
    rejection = rejection_of(body(message_created(metadata={"l": [deep_list]})))
    assert rejection.reason is Reason.INVALID


@pytest.mark.parametrize(
    "data",
    [
        {"content": "a<NUL>b"},
        {"metadata": {"k": "v<NUL>"}},
        {"metadata": {"k<NUL>": "v"}},
        {"metadata": {"k": ["ok", {"deep": "<NUL>"}]}},
        {"user_id": "u<NUL>"},
    ],
)
def test_a_nul_character_anywhere_is_invalid(data: dict[str, Any]) -> None:
    raw = body(message_created(**data)).replace(b"<NUL>", b"\\u0000")
    # Without the NUL the same event is valid: the NUL alone is refused.
    assert isinstance(decode(raw.replace(b"\\u0000", b"")), MessageCreated)
    rejection = rejection_of(raw)
    assert rejection.reason is Reason.INVALID
    assert "NUL" in rejection.detail


def test_an_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    event = message_created(content="path\\u0000x")  # the six characters \u0000
    assert isinstance(decode(body(event)), MessageCreated)


def test_a_lone_surrogate_is_invalid() -> None:
    raw = body(message_created(content="PLACEHOLDER")).replace(b"PLACEHOLDER", b"a\\ud800b")
    assert rejection_of(raw).reason is Reason.INVALID


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_nan_and_infinity_are_invalid(constant: str) -> None:
    raw = body(message_created(metadata={"score": 0})).replace(
        b'"score": 0', f'"score": {constant}'.encode()
    )
    rejection = rejection_of(raw)
    assert rejection.reason is Reason.INVALID


def test_duplicate_keys_are_invalid_in_the_envelope_and_anywhere_inside() -> None:
    raw = body(message_created())
    in_envelope = raw.replace(b'"version": 1', b'"version": 1, "version": 1')
    in_metadata = raw.replace(b'{"model": "test"}', b'{"model": "a", "model": "b"}')
    for duplicated in (in_envelope, in_metadata):
        rejection = rejection_of(duplicated)
        assert rejection.reason is Reason.INVALID
        assert "duplicate key" in rejection.detail


def test_a_huge_integer_is_refused_without_raising() -> None:
    raw = body(message_created(metadata={"n": 0})).replace(b'"n": 0', b'"n": ' + b"9" * 5000)
    assert rejection_of(raw).reason is Reason.INVALID


def test_large_but_valid_integers_are_kept_exactly() -> None:
    result = decode(body(message_created(metadata={"n": 2**70})))
    assert isinstance(result, MessageCreated)
    assert result.data.metadata == {"n": 2**70}


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 1_000_000,
        b"[" * 500_000 + b"]" * 500_000,
        b'{"a":' * 200_000 + b"1" + b"}" * 200_000,
        b"[]" * (MAX_BODY_BYTES // 2),
        b'"' + b'\\"' * 900_000,  # a regex that backtracks would take hours
        b'{"a": [' + b'"\\"",' * 200_000 + b"1]}",
    ],
    ids=["unclosed", "deep-array", "deep-object", "wide", "escaped-quotes", "many-strings"],
)
def test_hostile_bodies_are_refused_quickly_in_bounded_memory(raw: bytes) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        rejection = rejection_of(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert rejection.reason in {Reason.MALFORMED, Reason.INVALID}
    # Generous bounds: these guard against recursion and blow-ups, not speed.
    assert elapsed < 5
    assert peak < 20 * len(raw) + 10_000_000


def test_a_body_over_the_size_limit_is_refused_before_parsing() -> None:
    rejection = rejection_of(b" " * (MAX_BODY_BYTES + 1))
    assert rejection.reason is Reason.INVALID
    assert "bytes" in rejection.detail


def test_a_body_nested_just_past_the_envelope_limit_is_invalid_not_a_crash() -> None:
    rejection = rejection_of(body(message_created(metadata=nested(200))))
    assert rejection.reason is Reason.INVALID


def test_details_are_cut_to_1_kib_and_never_carry_the_content() -> None:
    secret = "s3cret-" + "x" * 5000
    event = message_created(content=secret)
    event["data"]["role"] = "robot"
    event["data"]["message_id"] = "bad"
    event["data"]["conversation_id"] = "bad"
    event["data"]["created_at"] = "bad"
    for key in range(300):
        event[f"extra{key}"] = key
    rejection = rejection_of(body(event))
    assert "s3cret" not in rejection.detail


def test_a_long_detail_is_truncated_on_a_character_boundary() -> None:
    rejection = Rejection(Reason.INVALID, "é" * 2000)
    encoded = rejection.detail.encode()
    assert len(encoded) <= DETAIL_MAX_BYTES
    assert rejection.detail.endswith("…")


def test_uuid_fields_accept_any_case() -> None:
    event = message_created(message_id=str(uuid.uuid4()).upper())
    assert isinstance(decode(body(event)), MessageCreated)


@pytest.mark.parametrize("number", ["1e15", "1e9", "1E-4", "9e15"])
def test_the_small_body_shortcut_is_sound_for_numbers_that_grow_when_rewritten(
    number: str,
) -> None:
    # The decoder skips serialising metadata of bodies under a fifth of the
    # limit; the worst growth on rewriting is a short float literal.
    template = body(message_created(metadata={"n": []}))
    room = METADATA_MAX_BYTES // 5 - len(template)
    items = ",".join([number] * (room // (len(number) + 1)))
    raw = template.replace(b'"n": []', f'"n": [{items}]'.encode())
    assert len(raw) * 5 <= METADATA_MAX_BYTES
    result = decode(raw)
    assert isinstance(result, MessageCreated)
    assert result.data.metadata is not None
    rewritten = json.dumps(result.data.metadata, ensure_ascii=False, separators=(",", ":"))
    assert len(rewritten.encode()) <= METADATA_MAX_BYTES
