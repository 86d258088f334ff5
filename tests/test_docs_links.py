"""Every relative link in the README and docs/ leads to a file of this checkout.

Files move (the layout changed once already), and a link to a path that is
gone, or to something outside the repository that only its authors had,
fails for every reader while it looks fine in the source. These tests read
the Markdown as text: no server, no network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import unquote

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
DOCUMENTS: Final = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
# Links that leave the checkout on purpose, and so are not checked here.
IGNORED_SCHEMES: Final = ("http://", "https://", "mailto:")

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target), with an optional title; the target is
# either <anything but angle brackets> or a run without spaces or parentheses.
_INLINE_LINK = re.compile(
    r"\[[^\]]*\]\(\s*(<[^>\n]*>|[^\s()<>]+)"  # [text](target
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"  # an optional "title", then )
)
# [label]: target, a reference definition on a line of its own.
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>\n]*>|\S+)", re.MULTILINE)


@dataclass(frozen=True)
class Link:
    """A link target as written, and the line of its document it is on."""

    target: str
    line: int


def _prose(text: str) -> str:
    """``text`` with code blocks and code spans blanked out, lines kept in place."""
    lines: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        opened = _FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
            lines.append("")
        elif fence is not None:
            if line.strip().startswith(fence[0] * len(fence)):
                fence = None
            lines.append("")
        else:
            # A link whose text is code, [`x`](y), keeps its target.
            lines.append(_CODE_SPAN.sub("", line))
    return "\n".join(lines)


def links_in(text: str) -> list[Link]:
    """Every inline and reference link target of a Markdown text, outside code."""
    prose = _prose(text)
    found = [*_INLINE_LINK.finditer(prose), *_REFERENCE.finditer(prose)]
    return sorted(
        (Link(m.group(1).strip("<>"), prose.count("\n", 0, m.start()) + 1) for m in found),
        key=lambda link: link.line,
    )


def local_path(target: str) -> str | None:
    """The path part of a link into the checkout; None for a URL or a pure #anchor."""
    if target.lower().startswith(IGNORED_SCHEMES):
        return None
    path = target.split("#", 1)[0].split("?", 1)[0]
    return unquote(path) or None


def problems(document: Path, text: str) -> list[str]:
    """What is wrong with the links of ``text``, read as the file ``document``."""
    found: list[str] = []
    for link in links_in(text):
        path = local_path(link.target)
        if path is None:
            continue
        resolved = (document.parent / path).resolve()
        where = f"line {link.line}: {link.target}"
        if not resolved.is_relative_to(ROOT):
            found.append(f"{where} leads outside the repository, to {resolved}")
        elif not resolved.exists():
            found.append(f"{where} leads to {resolved.relative_to(ROOT)}, which does not exist")
    return found


def _name(document: Path) -> str:
    return str(document.relative_to(ROOT))


def test_the_checked_documents_include_the_readme_and_the_contract() -> None:
    names = {_name(document) for document in DOCUMENTS}
    assert {"README.md", "docs/CONTRACT.md", "docs/SCHEMA.md"} <= names


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_every_relative_link_leads_to_a_path_inside_the_checkout(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    assert problems(document, text) == [], f"{_name(document)} has broken links"


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_no_document_refers_to_the_shared_folder_outside_the_repository(document: Path) -> None:
    # ../shared holds the project's working notes, which readers of the
    # repository do not have: what they need from there belongs in docs/.
    for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), start=1):
        assert "../shared" not in line, f"{_name(document)} line {number}: {line.strip()}"


def test_links_are_found_inline_by_reference_and_in_images_but_not_in_code() -> None:
    text = "\n".join(
        [
            "See [the contract](CONTRACT.md#exit-codes) and [`SCHEMA.md`](SCHEMA.md).",
            '![diagram](<images/a diagram.png> "Title") and [ref][r].',
            "```python",
            "handlers[0](event)  # [not](a-link.md)",
            "```",
            "Inline code `[also not](a-link.md)` is skipped.",
            "[r]: ../README.md",
        ]
    )
    assert links_in(text) == [
        Link("CONTRACT.md#exit-codes", 1),
        Link("SCHEMA.md", 1),
        Link("images/a diagram.png", 2),
        Link("../README.md", 7),
    ]


def test_urls_and_pure_anchors_are_not_checked_and_anchors_are_cut_off() -> None:
    assert local_path("https://keepachangelog.com/en/1.1.0/") is None
    assert local_path("HTTP://example.org") is None
    assert local_path("mailto:ops@example.org") is None
    assert local_path("#exit-codes") is None
    assert local_path("CONTRACT.md#exit-codes") == "CONTRACT.md"
    assert local_path("a%20diagram.png") == "a diagram.png"


def test_a_missing_target_and_a_way_out_of_the_repository_are_both_reported() -> None:
    document = ROOT / "docs" / "EXAMPLE.md"  # only its folder matters
    text = (
        "[fine](CONTRACT.md#settings) [fine too](../alembic/versions/) [web](https://x.org)\n"
        "[gone](../worker/repository.py) [out](../../shared/CONTRACT.md) [root](/etc/hosts)\n"
    )
    reported = problems(document, text)
    assert len(reported) == 3, reported
    assert "line 2: ../worker/repository.py leads to worker/repository.py" in reported[0]
    assert "line 2: ../../shared/CONTRACT.md leads outside the repository" in reported[1]
    assert "line 2: /etc/hosts leads outside the repository" in reported[2]
