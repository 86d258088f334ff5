"""The bench's results: one JSON document, and tables for people ending with the goals.

Pure: takes the scenarios' sections and goals, returns data and text.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from worker.tools.bench.goals import Goal, Section


def document(
    sections: dict[str, Section],
    goals: list[Goal],
    options: dict[str, Any],
    machine: dict[str, Any],
) -> dict[str, Any]:
    """Everything measured, every round of it, as one JSON-ready object."""
    return {
        "machine": machine,
        "options": options,
        "scenarios": {name: section.document() for name, section in sections.items()},
        "goals": [dataclasses.asdict(goal) for goal in goals],
    }


def goals_table(goals: list[Goal]) -> list[str]:
    lines = ["| goal | target | measured (ratio: scenario / floor) | met |"]
    lines.append("| --- | --- | --- | --- |")
    for goal in goals:
        met = {True: "yes", False: "NO", None: "-"}[goal.met]
        lines.append(f"| {goal.what} | {goal.target} | {goal.measured} | {met} |")
    return lines


def table(sections: dict[str, Section], goals: list[Goal]) -> str:
    """The results as plain-text tables (Markdown), one per section, then the goals."""
    blocks = [section.table() for section in sections.values()]
    blocks.append(goals_table(goals))
    return "\n\n".join("\n".join(block) for block in blocks if block)
