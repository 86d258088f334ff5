"""The exported JSON Schema is current (the import boundaries: test_import_boundaries.py)."""

from __future__ import annotations

import json

from contracts.jsonschema import SCHEMA_DIR, rendered_files


def test_checked_in_json_schema_matches_the_models() -> None:
    for name, content in rendered_files().items():
        on_disk = (SCHEMA_DIR / name).read_text(encoding="utf-8")
        assert on_disk == content, f"{name} is stale: run python -m contracts.jsonschema"


def test_json_schema_carries_the_per_role_content_limit() -> None:
    schema = json.loads((SCHEMA_DIR / "event.schema.json").read_text())
    data = schema["$defs"]["MessageCreatedData"]
    assert data["then"]["properties"]["content"]["maxLength"] == 1000
    assert data["properties"]["content"]["maxLength"] == 100_000
