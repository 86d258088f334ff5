"""A one-line progress bar on a terminal; silence everywhere else."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``Progress(total, "replaying")``; call ``advance()``, then ``done()``.

    A ``total`` of None is unknown (a count that would have taken too long):
    the line then shows the count and the rate, without a bar.
    """

    def __init__(self, total: int | None, label: str, stream: TextIO | None = None) -> None:
        self._total = None if total is None else max(total, 0)
        self._label = label
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty()
        self._count = 0
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._drawn: int | None = None  # the count the line shows

    def advance(self, step: int = 1) -> None:
        self._count += step
        now = time.monotonic()
        finished = self._total is not None and self._count >= self._total
        if self._enabled and (now - self._last_draw >= 0.1 or finished):
            self._last_draw = now
            self._draw(now)

    def done(self) -> None:
        if self._enabled:
            if self._drawn != self._count:  # the last advance() may have drawn it already
                self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self, now: float) -> None:
        self._drawn = self._count
        rate = self._count / max(now - self._started, 1e-9)
        if self._total is None:
            self._stream.write(f"\r{self._label} {self._count:,} {rate:,.0f}/s")
            self._stream.flush()
            return
        width = 30
        fraction = min(1.0, self._count / self._total) if self._total else 1.0
        filled = int(width * fraction)
        self._stream.write(
            f"\r{self._label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{self._count:,}/{self._total:,} {fraction:4.0%} {rate:,.0f}/s"
        )
        self._stream.flush()
