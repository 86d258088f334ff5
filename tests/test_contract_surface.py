"""The contracts package stands alone, and its exported JSON Schema is current."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from contracts.jsonschema import SCHEMA_DIR, rendered_files

CONTRACTS = Path(__file__).parent.parent / "contracts"
# What the chat runtime's side may depend on: the standard library, pydantic
# and aio-pika (for the publisher).
ALLOWED_THIRD_PARTY = {"pydantic", "pydantic_core", "aio_pika", "aiormq"}
# The schema and the read side, moved here from worker/, use the database's.
DATABASE_PARTS = {"models.py": {"sqlalchemy"}, "history": {"sqlalchemy", "asyncpg"}}


def test_checked_in_json_schema_matches_the_models() -> None:
    for name, content in rendered_files().items():
        on_disk = (SCHEMA_DIR / name).read_text(encoding="utf-8")
        assert on_disk == content, f"{name} is stale: run python -m contracts.jsonschema"


def test_json_schema_carries_the_per_role_content_limit() -> None:
    schema = json.loads((SCHEMA_DIR / "event.schema.json").read_text())
    data = schema["$defs"]["MessageCreatedData"]
    assert data["then"]["properties"]["content"]["maxLength"] == 1000
    assert data["properties"]["content"]["maxLength"] == 100_000


def _imported_top_level_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_contracts_source_imports_only_the_standard_library_pydantic_and_aio_pika() -> None:
    for path in CONTRACTS.rglob("*.py"):
        third_party = {
            module
            for module in _imported_top_level_modules(path)
            if module not in sys.stdlib_module_names and module != "contracts"
        }
        part = path.relative_to(CONTRACTS).parts[0]
        allowed = ALLOWED_THIRD_PARTY | DATABASE_PARTS.get(part, set())
        assert third_party <= allowed, f"{path.name} imports {third_party}"


def test_importing_contracts_loads_nothing_from_worker() -> None:
    probe = (
        "import sys, contracts, contracts.jsonschema\n"
        "loaded = sorted(m for m in sys.modules if m == 'worker' or m.startswith('worker.'))\n"
        "print(','.join(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
