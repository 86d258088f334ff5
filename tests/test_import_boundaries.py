"""Imports run one way (cli -> worker -> contracts), and each part loads only what it needs.

Every check runs in a fresh interpreter: what this test process has imported
already says nothing about what an import loads.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CONTRACTS = ROOT / "contracts"
# What each part of the client library may import besides the standard library.
ALLOWED_THIRD_PARTY = {
    # contracts itself; yarl is the URL parser of aiormq, read the same way by contracts.brokers
    "": {"pydantic", "pydantic_core", "aio_pika", "aiormq", "yarl"},
    # PyYAML only to render the AsyncAPI document, imported then: a build and test step.
    "asyncapi": {"yaml"},
    "models": {"sqlalchemy"},
    "history": {"sqlalchemy", "asyncpg"},
    # the otel extra's API, imported under a guard: absent, nothing is traced
    "tracing": {"opentelemetry"},
}


def _loaded_by(statement: str) -> set[str]:
    """The modules in sys.modules after running ``statement`` in a fresh interpreter."""
    probe = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(json.loads(result.stdout))


def _under(package: str, modules: set[str]) -> set[str]:
    return {m for m in modules if m == package or m.startswith(f"{package}.")}


def test_importing_contracts_loads_neither_sqlalchemy_nor_aio_pika_nor_the_worker() -> None:
    loaded = _loaded_by("import contracts, contracts.jsonschema")
    assert _under("worker", loaded) == set()
    assert _under("sqlalchemy", loaded) == set()
    assert _under("aio_pika", loaded) == set()  # until Publisher is used


def test_the_publisher_is_loaded_on_first_use_and_is_the_same_class() -> None:
    loaded = _loaded_by(
        "import contracts, contracts.publisher\n"
        "assert contracts.Publisher is contracts.publisher.Publisher\n"
        "from contracts import WhenFull"
    )
    assert "aio_pika" in loaded
    assert _under("worker", loaded) == set()


@pytest.mark.parametrize("module", ["contracts.models", "contracts.history"])
def test_models_and_history_load_neither_aio_pika_nor_the_worker(module: str) -> None:
    loaded = _loaded_by(f"import {module}")
    assert module in loaded
    assert _under("worker", loaded) == set()
    assert _under("aio_pika", loaded) == set()
    assert _under("aiormq", loaded) == set()


def test_the_documented_imports_work() -> None:
    _loaded_by(
        "from contracts.history import Repository, Page, ConversationRow, MessageRow, "
        "InvalidCursorError, reader_engine\n"
        "from contracts.models import Conversation, Message, ConversationStatus, MessageRole\n"
        "from contracts import EXCHANGE, ROUTING_KEYS, ConversationStatus, MessageRole, Publisher"
    )


def test_the_worker_composition_root_loads_no_tool() -> None:
    loaded = _loaded_by("import worker.lifecycle")
    assert "worker.ingest.consumer" in loaded
    assert _under("worker.tools", loaded) == set()


def test_the_cli_loads_a_tool_only_when_its_command_runs() -> None:
    # Parsing needs the bench's option table; nothing else of any tool.
    loaded = _loaded_by("import worker.cli\nworker.cli._parser().parse_args(['worker'])")
    assert _under("worker.tools", loaded) == {
        "worker.tools",
        "worker.tools.bench",
        "worker.tools.bench.options",
    }
    assert "worker.lifecycle" not in loaded  # the worker itself, only once it runs


def _imported_top_level_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_the_client_library_source_imports_only_what_each_part_may() -> None:
    for path in CONTRACTS.rglob("*.py"):
        part = path.relative_to(CONTRACTS).parts[0].removesuffix(".py")
        allowed = ALLOWED_THIRD_PARTY[""] | ALLOWED_THIRD_PARTY.get(part, set())
        third_party = {
            module
            for module in _imported_top_level_modules(path)
            if module not in sys.stdlib_module_names and module != "contracts"
        }
        assert third_party <= allowed, f"{path.relative_to(ROOT)} imports {third_party}"


def test_the_worker_never_imports_the_cli_and_contracts_never_import_the_worker() -> None:
    for path in (ROOT / "worker").rglob("*.py"):
        if path.name not in ("cli.py", "__main__.py"):
            assert "worker.cli" not in path.read_text(), f"{path.relative_to(ROOT)} imports the cli"
    for path in CONTRACTS.rglob("*.py"):
        assert "worker" not in _imported_top_level_modules(path), path.relative_to(ROOT)


def test_the_asyncapi_document_needs_pyyaml_only_to_render() -> None:
    # Building it is the contract's own data; only rendering the YAML file needs the dev extra.
    loaded = _loaded_by(
        "import contracts.asyncapi, contracts.jsonschema\ncontracts.asyncapi.asyncapi_document()"
    )
    assert _under("yaml", loaded) == set()
    assert "yaml" in _loaded_by("import contracts.asyncapi\ncontracts.asyncapi.render_asyncapi()")


def test_the_test_double_and_the_protocol_load_what_contracts_loads() -> None:
    loaded = _loaded_by(
        "from contracts.testing import InMemoryPublisher, ContractViolationError\n"
        "from contracts.publishing import EventPublisher\n"
        "import asyncio, uuid, contracts\n"
        "p = InMemoryPublisher()\n"
        "p.publish_nowait(contracts.message_created(conversation_id=uuid.uuid4(), "
        "user_id='u', role='user', content='hi'))\n"
        "asyncio.run(p.close())"
    )
    for package in ("worker", "sqlalchemy", "aio_pika", "aiormq", "yaml"):
        assert _under(package, loaded) == set(), package
