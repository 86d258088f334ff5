"""What every scenario of one ``chatstore bench`` is given (see ``scenarios``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from worker.tools.bench import database, fill
from worker.tools.bench.goals import Section
from worker.tools.sandbox import Sandbox


@dataclass
class Run:
    """One ``chatstore bench``: where it runs, what was asked, what it measured so far."""

    environment: Sandbox
    args: argparse.Namespace
    log_dir: Path
    sections: dict[str, Section] = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)  # what took how long
    _filled: int | None = None  # messages in the read data set, once written

    async def read_data_set(self) -> int:
        """Write the read data set of (e) and (g) the first time one asks; its size."""
        if self._filled is None:
            await database.stop_commit_clock(self.environment.dsn)  # no trigger on the COPY
            await fill.fill(self.environment.dsn, self.args.messages)
            self._filled = self.args.messages
        return self._filled
