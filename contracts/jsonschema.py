"""The contract's JSON Schema, exported to checked-in files for other languages.

``python -m contracts.jsonschema`` rewrites ``contracts/schemas/``: the JSON
Schema, and the AsyncAPI document of :mod:`contracts.asyncapi` beside it. A
test fails when the files there differ from what the models produce.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Final

from contracts.asyncapi import ASYNCAPI_FILE, render_asyncapi
from contracts.events import event_adapter

SCHEMA_DIR: Final = Path(__file__).parent / "schemas"
SCHEMA_FILE: Final = "event.schema.json"


def render_schema() -> str:
    """The JSON Schema of an event (the envelope, both data shapes) as stable text."""
    schema = event_adapter.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "chatstore event"
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def rendered_files() -> dict[str, str]:
    """File name to content, for everything under ``schemas/``."""
    return {SCHEMA_FILE: render_schema(), ASYNCAPI_FILE: render_asyncapi()}


def main() -> int:
    for name, content in rendered_files().items():
        path = SCHEMA_DIR / name
        path.write_text(content, encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
