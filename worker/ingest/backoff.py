"""Capped exponential backoff with jitter, for retries and reconnects."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    initial_s: float
    max_s: float

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0 is the first retry).

        Jitter of up to a fifth either way keeps many workers that lost the
        same database from retrying in lockstep.
        """
        base = min(self.max_s, self.initial_s * 2.0 ** min(attempt, 32))
        return base * random.uniform(0.8, 1.2)
