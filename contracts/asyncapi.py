"""The contract as an AsyncAPI 3.0 document, exported beside the JSON Schema.

``python -m contracts.jsonschema`` writes it to ``contracts/schemas/asyncapi.yaml``;
tests/test_asyncapi.py validates it with the AsyncAPI parser and fails when it
is stale. The payloads are the models' own JSON Schema (the ``$defs`` of
``event.schema.json``, under ``components/schemas``).

The queues and the dead-letter headers belong to the worker (``worker.topology``,
``worker.ingest.deadletter``), which ``contracts`` never imports: their names
are repeated here, and the test checks them against the worker's.

Building the document needs nothing but the models; rendering it as YAML needs
PyYAML (the ``dev`` extra), imported only then, because only the build and the
tests render it.
"""

from __future__ import annotations

from typing import Any, Final

from contracts.events import (
    SCHEMA_VERSION,
    AnyEvent,
    ConversationArchived,
    MessageCreated,
    event_adapter,
)
from contracts.rejection import DETAIL_MAX_BYTES, Reason
from contracts.routing import CONVERSATION_ARCHIVED, EXCHANGE, MESSAGE_CREATED

ASYNCAPI_FILE: Final = "asyncapi.yaml"
ASYNCAPI_VERSION: Final = "3.0.0"
AMQP_BINDING_VERSION: Final = "0.3.0"

# The worker's names (worker.topology, worker.ingest.deadletter, worker.tools.dlq).
QUEUE: Final = "chatstore.events"
DLQ: Final = "chatstore.events.dlq"
DEFAULT_DELIVERY_LIMIT: Final = 20  # CHATSTORE_DELIVERY_LIMIT's default
REASON_HEADER: Final = "x-chatstore-reason"
DETAIL_HEADER: Final = "x-chatstore-detail"
DEAD_LETTERED_AT_HEADER: Final = "x-chatstore-dead-lettered-at"
REPLAYS_HEADER: Final = "x-chatstore-replays"
DEATH_HEADER: Final = "x-death"

REASON_MEANINGS: Final[dict[Reason, str]] = {
    Reason.MALFORMED: "not UTF-8, not JSON, or not a JSON object",
    Reason.INVALID: "fails the schema (a field missing or ill-typed, a naive timestamp, "
    "NUL, NaN, a duplicate key, a bound exceeded)",
    Reason.UNKNOWN_TYPE: "a type this worker does not know",
    Reason.UNSUPPORTED_VERSION: f"a version above the one this worker knows ({SCHEMA_VERSION})",
    Reason.UNKNOWN_USER: "user_id is not in users",
    Reason.OWNERSHIP_MISMATCH: "the conversation exists and belongs to another user",
    Reason.CONFLICT: "a message_id seen before with other content, conversation or user",
    Reason.DELIVERY_LIMIT: "the broker dead-lettered it after CHATSTORE_DELIVERY_LIMIT "
    "deliveries (reported from x-death; never in x-chatstore-reason)",
}

_SCHEMAS: Final = "#/components/schemas/"
_EXAMPLE_CONVERSATION: Final = "5f0c2a7e-3d1b-4c8e-9a6f-1b2c3d4e5f60"
_EXAMPLE_TIME: Final = "2026-11-22T10:15:30.123456+00:00"


def _ref(where: str) -> dict[str, str]:
    return {"$ref": where}


def _amqp(**fields: Any) -> dict[str, Any]:
    return {"amqp": {**fields, "bindingVersion": AMQP_BINDING_VERSION}}


def payload_schemas() -> dict[str, Any]:
    """The models' JSON Schema definitions, referring to each other under components."""
    schema = event_adapter.json_schema(ref_template=_SCHEMAS + "{model}")
    # Only the definitions: each message has its own payload, so the top-level
    # union (and its OpenAPI-style discriminator, which AsyncAPI spells
    # differently) is not needed.
    definitions: dict[str, Any] = schema["$defs"]
    return definitions


def example_events() -> tuple[MessageCreated, ConversationArchived]:
    """One valid event of each type, as the document's examples show them."""
    message = MessageCreated.model_validate(
        {
            "event_id": "0b6f4c1e-7a43-4c55-9a52-2f7c1f0d8a10",
            "type": MESSAGE_CREATED,
            "version": SCHEMA_VERSION,
            "occurred_at": _EXAMPLE_TIME,
            "data": {
                "message_id": "9d3e8a42-6b1f-4f7a-8c2d-3e4f5a6b7c8d",
                "conversation_id": _EXAMPLE_CONVERSATION,
                "user_id": "user-42",
                "role": "user",
                "content": "What is the capital of France?",
                "metadata": {"client": "web"},
                "created_at": _EXAMPLE_TIME,
            },
        }
    )
    archived = ConversationArchived.model_validate(
        {
            "event_id": "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f",
            "type": CONVERSATION_ARCHIVED,
            "version": SCHEMA_VERSION,
            "occurred_at": _EXAMPLE_TIME,
            "data": {
                "conversation_id": _EXAMPLE_CONVERSATION,
                "user_id": "user-42",
                "archived_at": _EXAMPLE_TIME,
            },
        }
    )
    return message, archived


# What contracts.Publisher adds with the otel extra. The worker only links its
# spans to them: a missing or malformed header never dead-letters an event.
_TRACE_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "Optional W3C trace context and baggage of the code that published the "
    "event (contracts.Publisher sets them with the otel extra installed, inside a span; "
    "baggage only when the context holds some). The worker links its batch span to the "
    "trace context and ignores it when missing or malformed; it ignores baggage.",
    "properties": {
        "traceparent": {"type": "string", "description": "W3C Trace Context traceparent"},
        "tracestate": {"type": "string", "description": "W3C Trace Context tracestate"},
        "baggage": {"type": "string", "description": "W3C Baggage"},
    },
}


def _event_message(event: AnyEvent, title: str, summary: str) -> dict[str, Any]:
    return {
        "name": event.type,
        "title": title,
        "summary": summary,
        "description": (
            "Properties: delivery_mode 2 (persistent), content_type application/json, "
            "message_id the event_id, type the event type (contracts.Publisher also sets "
            "timestamp). The worker depends on no property: the body alone is the event, "
            "and its type is read from the body, never from the routing key."
        ),
        "contentType": "application/json",
        "headers": _TRACE_HEADERS,
        "payload": _ref(_SCHEMAS + type(event).__name__),
        "bindings": _amqp(messageType=event.type),
        "examples": [{"name": event.type, "payload": event.model_dump(mode="json")}],
    }


def _dead_letter_schemas() -> dict[str, Any]:
    worker_reasons = [reason.value for reason in Reason if reason is not Reason.DELIVERY_LIMIT]
    replays = {
        "type": "integer",
        "minimum": 1,
        "description": "How many times `chatstore dlq replay` has replayed the letter; "
        "kept across trips to the DLQ (the replay loop guard reads it).",
    }
    return {
        "Reason": {
            "title": "Reason",
            "type": "string",
            "enum": [reason.value for reason in Reason],
            "description": "Why an event was not stored (contracts.Reason): "
            + "; ".join(f"`{reason.value}`: {REASON_MEANINGS[reason]}" for reason in Reason)
            + ".",
        },
        "XDeath": {
            "title": "x-death",
            "type": "array",
            "description": "RabbitMQ's own record of the times it dead-lettered the message, "
            "newest first; kept across replays.",
            "items": {
                "type": "object",
                "properties": {
                    "queue": {"type": "string"},
                    "reason": {
                        "type": "string",
                        "description": "delivery_limit: the worker never rejects a delivery, "
                        "so the delivery limit is the one way the broker dead-letters into the DLQ",
                    },
                    "count": {"type": "integer"},
                    "exchange": {"type": "string"},
                    "routing-keys": {"type": "array", "items": {"type": "string"}},
                    "time": {"description": "an AMQP timestamp"},
                },
            },
        },
        "WorkerDeadLetterHeaders": {
            "title": "Headers of a dead letter from the worker",
            "type": "object",
            "description": "The original's headers are kept, and these are added.",
            "required": [REASON_HEADER, DETAIL_HEADER, DEAD_LETTERED_AT_HEADER],
            "properties": {
                REASON_HEADER: {
                    "description": "One word: a reason of contracts.Reason other than "
                    "delivery_limit, which only the broker's letters have.",
                    "allOf": [_ref(_SCHEMAS + "Reason"), {"enum": worker_reasons}],
                },
                DETAIL_HEADER: {
                    "type": "string",
                    "maxLength": DETAIL_MAX_BYTES,
                    "description": f"Human-readable, at most {DETAIL_MAX_BYTES} bytes of UTF-8 "
                    "(cut at a character boundary, ending in …), for instance the field "
                    "that failed.",
                },
                DEAD_LETTERED_AT_HEADER: {
                    "type": "string",
                    "format": "date-time",
                    "description": "When the worker dead-lettered it: ISO 8601 in UTC, "
                    "with offset.",
                },
                REPLAYS_HEADER: replays,
                DEATH_HEADER: _ref(_SCHEMAS + "XDeath"),
            },
        },
        "BrokerDeadLetterHeaders": {
            "title": "Headers of a dead letter from the broker",
            "type": "object",
            "description": "The broker's letters (the delivery limit) cannot carry "
            "chatstore's headers; the tools report them as delivery_limit.",
            "required": [DEATH_HEADER],
            "properties": {DEATH_HEADER: _ref(_SCHEMAS + "XDeath"), REPLAYS_HEADER: replays},
        },
        "DeadLetterBody": {
            "title": "The original body",
            "description": "Byte for byte what was published: usually an event, but for "
            "malformed not even JSON. Its properties are kept too, except that "
            "delivery_mode is 2, and expiration and user_id are dropped.",
        },
    }


def _dead_letter_message(who: str, headers: str, summary: str) -> dict[str, Any]:
    return {
        "name": f"{who}-dead-letter",
        "title": f"A dead letter from the {who}",
        "summary": summary,
        "headers": _ref(_SCHEMAS + headers),
        "payload": _ref(_SCHEMAS + "DeadLetterBody"),
    }


def _channels() -> dict[str, Any]:
    exchange = {"name": EXCHANGE, "type": "topic", "durable": True, "autoDelete": False}

    def routing_key(key: str, message: str) -> dict[str, Any]:
        return {
            "address": key,
            "title": f"{EXCHANGE}, routing key {key}",
            "description": f"Events of type {key} go to the topic exchange {EXCHANGE} "
            "with their type as the routing key. The chat runtime may only write to it; "
            "the worker declares it.",
            "messages": {message: _ref(f"#/components/messages/{message}")},
            "bindings": _amqp(**{"is": "routingKey", "exchange": exchange}),
        }

    def queue(name: str) -> dict[str, Any]:
        return {"name": name, "durable": True, "exclusive": False, "autoDelete": False}

    return {
        "messageCreated": routing_key(MESSAGE_CREATED, "messageCreated"),
        "conversationArchived": routing_key(CONVERSATION_ARCHIVED, "conversationArchived"),
        "events": {
            "address": QUEUE,
            "title": "The work queue",
            "description": f"Bound to {EXCHANGE} with {MESSAGE_CREATED} and "
            f"{CONVERSATION_ARCHIVED}. Every worker declares it at start with the same "
            "arguments, which are part of the contract: RabbitMQ refuses to declare a queue "
            "again with different ones. x-delivery-limit is CHATSTORE_DELIVERY_LIMIT "
            f"(default {DEFAULT_DELIVERY_LIMIT}).",
            "messages": {
                "messageCreated": _ref("#/components/messages/messageCreated"),
                "conversationArchived": _ref("#/components/messages/conversationArchived"),
            },
            "bindings": _amqp(
                **{
                    "is": "queue",
                    "queue": queue(QUEUE),
                    "x-arguments": {
                        "x-queue-type": "quorum",
                        "x-delivery-limit": DEFAULT_DELIVERY_LIMIT,
                        "x-dead-letter-exchange": "",
                        "x-dead-letter-routing-key": DLQ,
                        "x-dead-letter-strategy": "at-least-once",
                        "x-overflow": "reject-publish",
                    },
                }
            ),
        },
        "deadLetters": {
            "address": DLQ,
            "title": "The dead-letter queue",
            "description": "Events that will not be stored, each with its reason: from the "
            "worker (published through the default exchange) or from the broker (the "
            "delivery limit of the work queue). A letter may be there twice: dead-lettering "
            "is at least once.",
            "messages": {
                "workerDeadLetter": _ref("#/components/messages/workerDeadLetter"),
                "brokerDeadLetter": _ref("#/components/messages/brokerDeadLetter"),
            },
            "bindings": _amqp(
                **{"is": "queue", "queue": queue(DLQ), "x-arguments": {"x-queue-type": "quorum"}}
            ),
        },
    }


def _operations() -> dict[str, Any]:
    publish = _amqp(deliveryMode=2, mandatory=True, timestamp=True)

    def runtime_sends(channel: str, key: str) -> dict[str, Any]:
        return {
            "action": "send",
            "channel": _ref(f"#/channels/{channel}"),
            "title": f"The chat runtime publishes {key}",
            "summary": "With publisher confirms; contracts.Publisher sends again whatever "
            "was not confirmed (at least once).",
            "tags": [{"name": "chat-runtime"}],
            "bindings": publish,
            "messages": [_ref(f"#/channels/{channel}/messages/{channel}")],
        }

    return {
        "publishMessageCreated": runtime_sends("messageCreated", MESSAGE_CREATED),
        "publishConversationArchived": runtime_sends("conversationArchived", CONVERSATION_ARCHIVED),
        "consumeEvents": {
            "action": "receive",
            "channel": _ref("#/channels/events"),
            "title": "The worker stores events",
            "summary": "Acknowledged only once the transaction holding the effect has "
            "committed, or its dead letter has been confirmed.",
            "tags": [{"name": "worker"}],
            "bindings": _amqp(ack=True),
            "messages": [
                _ref("#/channels/events/messages/messageCreated"),
                _ref("#/channels/events/messages/conversationArchived"),
            ],
        },
        "deadLetter": {
            "action": "send",
            "channel": _ref("#/channels/deadLetters"),
            "title": "The worker dead-letters an event it refuses",
            "summary": "Through the default exchange, with confirms and mandatory, before it "
            "acknowledges the delivery.",
            "tags": [{"name": "worker"}],
            "bindings": _amqp(deliveryMode=2, mandatory=True),
            "messages": [_ref("#/channels/deadLetters/messages/workerDeadLetter")],
        },
    }


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the contract, as plain data."""
    message, archived = example_events()
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "chatstore",
            "version": str(SCHEMA_VERSION),
            "description": "The events a chat runtime publishes for chatstore to store, and "
            "the dead letters of those it refuses. Generated from contracts (python -m "
            "contracts.jsonschema); docs/CONTRACT.md is the reference, and contracts.decode "
            "enforces what a schema cannot say (no NUL, no duplicate keys, the nesting bound).",
            "license": {"name": "MIT"},
            "tags": [
                {"name": "chat-runtime", "description": "What the chat runtime does"},
                {"name": "worker", "description": "What the chatstore worker does"},
            ],
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {
                "host": "{host}",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "A RabbitMQ node, or each node of a cluster in turn.",
                "variables": {"host": {"default": "localhost:5672"}},
            }
        },
        "channels": _channels(),
        "operations": _operations(),
        "components": {
            "schemas": {**payload_schemas(), **_dead_letter_schemas()},
            "messages": {
                "messageCreated": _event_message(
                    message, "A chat message", "One chat message, keyed by data.message_id."
                ),
                "conversationArchived": _event_message(
                    archived, "A conversation archived", "The conversation is closed for good."
                ),
                "workerDeadLetter": _dead_letter_message(
                    "worker", "WorkerDeadLetterHeaders", "An event the worker refused."
                ),
                "brokerDeadLetter": _dead_letter_message(
                    "broker", "BrokerDeadLetterHeaders", "A delivery that hit the delivery limit."
                ),
            },
        },
    }


def render_asyncapi() -> str:
    """The document as stable YAML text (needs PyYAML, the ``dev`` extra)."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - the dev extra has it
        raise RuntimeError(
            "rendering the AsyncAPI document needs PyYAML: pip install 'chatstore[dev]'"
        ) from None

    class _Dumper(yaml.SafeDumper):
        # Spelled out where a part repeats, with no &anchors and *aliases to follow.
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return yaml.dump(
        asyncapi_document(),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
        indent=2,
    )
