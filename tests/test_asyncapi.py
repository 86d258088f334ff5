"""The AsyncAPI document is valid, current, and says what the worker and the broker do.

The AsyncAPI parser (``@asyncapi/parser`` from the npm registry, at a pinned
version) validates the checked-in file and copies of it broken on purpose,
which must fail. The parser is installed once into
``~/.cache/chatstore-tests/npm/asyncapi-parser-VERSION`` and reused; without
node and npm the tests fail and say so. The headers and payloads the document
describes are checked with ajv, the parser's own JSON Schema validator,
against what a real worker and a real broker put on real dead letters.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import aio_pika
import pytest
import yaml

from contracts import Reason, Rejection, decode
from contracts.asyncapi import (
    ASYNCAPI_FILE,
    DEAD_LETTERED_AT_HEADER,
    DEATH_HEADER,
    DEFAULT_DELIVERY_LIMIT,
    DETAIL_HEADER,
    DLQ,
    QUEUE,
    REASON_HEADER,
    REASON_MEANINGS,
    REPLAYS_HEADER,
    asyncapi_document,
    render_asyncapi,
)
from contracts.jsonschema import SCHEMA_DIR, SCHEMA_FILE
from contracts.routing import EXCHANGE, ROUTING_KEYS
from tests.events import body, message_created
from tests.harness import queue_has, running_worker, take_dead_letters, wait_for
from worker import topology
from worker.ingest import deadletter
from worker.settings import Settings
from worker.tools.dlq import letters

PARSER_VERSION: Final = "3.6.6"
# The first install downloads about 170 packages (13 s on a quiet machine).
pytestmark = pytest.mark.timeout(600)

# Reads one JSON request on stdin: documents for the parser to validate, and
# instances for ajv to check against the document's components/schemas.
NODE_SCRIPT: Final = r"""
const fs = require('fs');
const path = require('path');
const request = JSON.parse(fs.readFileSync(0, 'utf8'));
const parserDir = path.dirname(
  require.resolve('@asyncapi/parser/package.json', { paths: [request.prefix] }));
const load = (name) => require(require.resolve(name, { paths: [parserDir] }));

async function main() {
  const out = { documents: {}, instances: [] };
  if (request.documents.length) {
    const { Parser, fromFile, DiagnosticSeverity } = load('@asyncapi/parser');
    const severity = Object.fromEntries(Object.entries(DiagnosticSeverity).map(([k, v]) => [v, k]));
    const parser = new Parser();
    for (const file of request.documents) {
      const diagnostics = await fromFile(parser, file).validate();
      out.documents[file] = diagnostics.map((d) => ({
        severity: severity[d.severity], code: String(d.code), path: d.path.join('/'),
        message: d.message,
      }));
    }
  }
  if (request.instances.length) {
    const Ajv = load('ajv').default;
    const addFormats = load('ajv-formats').default;
    const ajv = new Ajv({ strict: false, allErrors: true });
    addFormats(ajv);
    ajv.addSchema({ components: { schemas: request.schemas } }, 'asyncapi');
    for (const { schema, value } of request.instances) {
      const validate = ajv.getSchema(`asyncapi#/components/schemas/${schema}`);
      if (!validate) throw new Error(`no schema ${schema}`);
      out.instances.push(validate(value) ? [] : validate.errors.map(
        (e) => `${e.instancePath || '/'} ${e.message}`));
    }
  }
  process.stdout.write(JSON.stringify(out));
}
main().catch((error) => { console.error(error); process.exit(1); });
"""

CHECKED_IN: Final = SCHEMA_DIR / ASYNCAPI_FILE


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chatstore-tests" / "npm"


def _installed_version(prefix: Path) -> str | None:
    manifest = prefix / "node_modules" / "@asyncapi" / "parser" / "package.json"
    try:
        version = json.loads(manifest.read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError):
        return None
    return str(version)


@pytest.fixture(scope="session")
def parser_prefix() -> Path:
    """The npm prefix holding the pinned parser, installed on first use."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"the AsyncAPI tests need {' and '.join(missing)} (Debian: apt-get install nodejs npm)",
            pytrace=False,
        )
    prefix = _cache_root() / f"asyncapi-parser-{PARSER_VERSION}"
    if _installed_version(prefix) == PARSER_VERSION:
        return prefix
    prefix.parent.mkdir(parents=True, exist_ok=True)
    # Installed beside it, then renamed: an interrupted install leaves no half
    # a parser where the next run would take it as complete.
    staging = Path(tempfile.mkdtemp(prefix=f"{prefix.name}.", dir=prefix.parent))
    try:
        result = subprocess.run(
            [
                "npm",
                "install",
                "--prefix",
                str(staging),
                "--no-save",
                "--no-package-lock",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                f"@asyncapi/parser@{PARSER_VERSION}",
            ],
            capture_output=True,
            text=True,
            timeout=540,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"npm could not install @asyncapi/parser@{PARSER_VERSION}:\n"
                + (result.stderr or result.stdout)[-2000:],
                pytrace=False,
            )
        if _installed_version(prefix) != PARSER_VERSION:  # else another run just installed it
            shutil.rmtree(prefix, ignore_errors=True)  # a broken copy, if any
        with contextlib.suppress(OSError):  # another run installed it at the same time
            staging.rename(prefix)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    assert _installed_version(prefix) == PARSER_VERSION, f"no parser in {prefix}"
    return prefix


def _node(
    prefix: Path,
    *,
    documents: list[Path] | None = None,
    instances: list[tuple[str, Any]] | None = None,
) -> dict[str, Any]:
    request = {
        "prefix": str(prefix),
        "documents": [str(path) for path in documents or []],
        "schemas": asyncapi_document()["components"]["schemas"],
        "instances": [{"schema": name, "value": value} for name, value in instances or []],
    }
    result = subprocess.run(
        ["node", "-e", NODE_SCRIPT],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"node failed:\n{result.stderr[-3000:]}"
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def _problems(diagnostics: list[dict[str, str]]) -> list[dict[str, str]]:
    """Errors and warnings: the parser's information and hints are advice."""
    return [d for d in diagnostics if d["severity"] in ("Error", "Warning")]


def _check(prefix: Path, schema: str, *values: Any) -> list[list[str]]:
    """ajv's errors for each value against ``components/schemas/<schema>``."""
    checked: list[list[str]] = _node(prefix, instances=[(schema, v) for v in values])["instances"]
    return checked


# Copies of the document broken on purpose, and what the parser must say.
Breakage = Callable[[dict[str, Any]], None]
BREAKAGES: Final[dict[str, tuple[Breakage, str, str]]] = {
    "a $ref to no schema": (
        lambda d: d["components"]["messages"]["messageCreated"].update(
            payload={"$ref": "#/components/schemas/NoSuchEvent"}
        ),
        "invalid-ref",
        "components/messages/messageCreated/payload",
    ),
    "info without its required title": (
        lambda d: d["info"].pop("title"),
        "asyncapi-document-resolved",
        "info",
    ),
    "an operation with another channel's message": (
        lambda d: d["operations"]["consumeEvents"]["messages"].append(
            {"$ref": "#/channels/deadLetters/messages/workerDeadLetter"}
        ),
        "asyncapi3-operation-messages-from-referred-channel",
        "operations/consumeEvents/messages",
    ),
    "a queue bound as a routing key without an exchange": (
        lambda d: d["channels"]["events"]["bindings"]["amqp"].update({"is": "routingKey"}),
        "asyncapi-document-resolved",
        "channels/events/bindings/amqp",
    ),
}


@pytest.fixture(scope="module")
def validations(parser_prefix: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The parser's diagnostics of the checked-in file and of each broken copy (one node run)."""
    directory = tmp_path_factory.mktemp("asyncapi")
    broken: dict[str, Path] = {}
    for name, (breakage, _, _) in BREAKAGES.items():
        document = copy.deepcopy(asyncapi_document())
        breakage(document)
        path = directory / f"{len(broken)}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        broken[name] = path
    found = _node(parser_prefix, documents=[CHECKED_IN, *broken.values()])["documents"]
    return {"checked_in": found[str(CHECKED_IN)]} | {n: found[str(p)] for n, p in broken.items()}


def test_checked_in_asyncapi_document_matches_the_models() -> None:
    on_disk = CHECKED_IN.read_text(encoding="utf-8")
    assert on_disk == render_asyncapi(), (
        f"{ASYNCAPI_FILE} is stale: run python -m contracts.jsonschema"
    )


def test_the_parser_finds_the_checked_in_document_valid(validations: dict[str, Any]) -> None:
    assert _problems(validations["checked_in"]) == []


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_the_parser_refuses_a_broken_copy(validations: dict[str, Any], breakage: str) -> None:
    _, code, where = BREAKAGES[breakage]
    errors = [d for d in validations[breakage] if d["severity"] == "Error"]
    assert any(e["code"] == code and e["path"].startswith(where) for e in errors), errors


def test_the_payload_schemas_are_the_json_schema_of_the_models() -> None:
    exported = (SCHEMA_DIR / SCHEMA_FILE).read_text(encoding="utf-8")
    definitions = json.loads(exported.replace('"#/$defs/', '"#/components/schemas/'))["$defs"]
    schemas = asyncapi_document()["components"]["schemas"]
    assert {name: schemas[name] for name in definitions} == definitions


def test_the_examples_are_events_the_worker_accepts(parser_prefix: Path) -> None:
    messages = asyncapi_document()["components"]["messages"]
    for name in ("messageCreated", "conversationArchived"):
        (example,) = messages[name]["examples"]
        event = decode(json.dumps(example["payload"]).encode())
        assert not isinstance(event, Rejection), event
        assert (
            event.type
            == messages[name]["name"]
            == messages[name]["bindings"]["amqp"]["messageType"]
        )
    created = messages["messageCreated"]["examples"][0]["payload"]
    too_long = copy.deepcopy(created)
    too_long["data"]["content"] = "x" * 1001  # a user's message: at most 1000 characters
    no_content = copy.deepcopy(created)
    del no_content["data"]["content"]
    valid, long_errors, missing_errors = _check(
        parser_prefix, "MessageCreated", created, too_long, no_content
    )
    assert valid == []
    assert any("/data/content" in e for e in long_errors), long_errors
    assert any("content" in e for e in missing_errors), missing_errors


def test_the_names_and_arguments_are_the_workers() -> None:
    document = asyncapi_document()
    channels = document["channels"]
    assert [channels[c]["address"] for c in ("messageCreated", "conversationArchived")] == list(
        ROUTING_KEYS
    )
    for name in ("messageCreated", "conversationArchived"):
        assert channels[name]["bindings"]["amqp"]["exchange"]["name"] == EXCHANGE
    assert (QUEUE, DLQ) == (topology.QUEUE, topology.DLQ)
    assert channels["events"]["address"] == QUEUE
    assert channels["deadLetters"]["address"] == DLQ
    assert Settings.model_fields["delivery_limit"].default == DEFAULT_DELIVERY_LIMIT
    events_binding = channels["events"]["bindings"]["amqp"]
    assert events_binding["x-arguments"] == topology.queue_arguments(DEFAULT_DELIVERY_LIMIT)
    assert channels["deadLetters"]["bindings"]["amqp"]["x-arguments"] == topology.DLQ_ARGUMENTS
    assert (REASON_HEADER, DETAIL_HEADER, DEAD_LETTERED_AT_HEADER, REPLAYS_HEADER) == (
        deadletter.REASON_HEADER,
        deadletter.DETAIL_HEADER,
        deadletter.DEAD_LETTERED_AT_HEADER,
        letters.REPLAYS_HEADER,
    )
    schemas = document["components"]["schemas"]
    assert schemas["Reason"]["enum"] == [reason.value for reason in Reason]
    assert set(REASON_MEANINGS) == set(Reason)


async def _redeclare_as_documented(amqp_url: str, document: dict[str, Any]) -> None:
    """Declare what the document describes; RabbitMQ refuses what differs from what exists."""
    channels = document["channels"]
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        exchange = channels["messageCreated"]["bindings"]["amqp"]["exchange"]
        await channel.declare_exchange(
            exchange["name"],
            aio_pika.ExchangeType(exchange["type"]),
            durable=exchange["durable"],
            auto_delete=exchange["autoDelete"],
        )
        for name in ("events", "deadLetters"):
            binding = channels[name]["bindings"]["amqp"]
            queue = binding["queue"]
            await channel.declare_queue(
                queue["name"],
                durable=queue["durable"],
                exclusive=queue["exclusive"],
                auto_delete=queue["autoDelete"],
                arguments=binding["x-arguments"],
            )


def _jsonable(value: Any) -> Any:
    """AMQP header values as JSON (x-death carries timestamps)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


async def test_the_broker_takes_the_documented_topology_as_the_workers(amqp_url: str) -> None:
    document = asyncapi_document()
    async with await aio_pika.connect(amqp_url) as connection:
        await topology.declare(await connection.channel(), delivery_limit=DEFAULT_DELIVERY_LIMIT)
    await _redeclare_as_documented(amqp_url, document)  # equal: accepted

    # Can fail: one argument other than the worker's is refused.
    changed = copy.deepcopy(document)
    changed["channels"]["events"]["bindings"]["amqp"]["x-arguments"]["x-overflow"] = "drop-head"
    with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
        await _redeclare_as_documented(amqp_url, changed)


async def test_a_broker_dead_letter_has_the_documented_headers(
    amqp_url: str, parser_prefix: Path
) -> None:
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await topology.declare(channel, delivery_limit=1)
        exchange = await channel.get_exchange(EXCHANGE)
        key = asyncapi_document()["channels"]["messageCreated"]["address"]
        await exchange.publish(aio_pika.Message(b"{}"), routing_key=key, mandatory=True)
        queue = await channel.declare_queue(QUEUE, passive=True)
        # Each requeue counts towards the delivery limit: past it, the broker dead-letters.
        while (message := await queue.get(fail=False)) is not None:
            await message.nack(requeue=True)
    await wait_for(queue_has(amqp_url, DLQ, 1))
    (letter,) = await take_dead_letters(amqp_url)
    headers = _jsonable(letter.headers)

    (errors,) = _check(parser_prefix, "BrokerDeadLetterHeaders", headers)
    assert errors == [], headers
    assert headers[DEATH_HEADER][0]["reason"] == "delivery_limit"
    assert headers[DEATH_HEADER][0]["queue"] == QUEUE
    assert _check(parser_prefix, "WorkerDeadLetterHeaders", headers) != [[]]


async def test_a_worker_dead_letter_has_the_documented_headers(
    settings: Settings, amqp_url: str, parser_prefix: Path
) -> None:
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE)
        for raw in (b"not json", body(message_created(user_id="carol"))):  # carol: no such user
            await exchange.publish(
                aio_pika.Message(raw, headers={"x-custom": "kept"}), routing_key="message.created"
            )
    async with running_worker(settings):
        await wait_for(queue_has(amqp_url, DLQ, 2))
    dead = await take_dead_letters(amqp_url)
    headers = [_jsonable(letter.headers) for letter in dead]

    assert _check(parser_prefix, "WorkerDeadLetterHeaders", *headers) == [[], []], headers
    assert sorted(h[REASON_HEADER] for h in headers) == ["malformed", "unknown_user"]
    assert all(h["x-custom"] == "kept" for h in headers)
    # Can fail: a reason the worker never writes, and a detail over 1 KiB.
    wrong = [
        headers[0] | {REASON_HEADER: Reason.DELIVERY_LIMIT.value},
        headers[0] | {DETAIL_HEADER: "x" * 1025},
    ]
    assert all(errors != [] for errors in _check(parser_prefix, "WorkerDeadLetterHeaders", *wrong))
