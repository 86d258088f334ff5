"""The process exit codes of every ``chatstore`` command (CONTRACT.md section 5)."""

from __future__ import annotations

from typing import Final

OK: Final = 0
"""Success."""
FAILURE: Final = 1
"""Anything else: a server that failed, a worker that could not drain, a bug."""
USAGE: Final = 2
"""Bad usage or configuration; the one-line message names the problem."""
