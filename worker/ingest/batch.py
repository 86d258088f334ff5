"""When a batch closes: pure logic, no broker, no clock of its own.

A batch opens with its first delivery and closes on the first of:
- it holds ``max_size`` deliveries;
- it has been open ``max_wait_s`` (a steady trickle cannot hold it open);
- no further delivery is waiting, so a lone event is never held back.

Under load deliveries pile up while the previous batch is being written, so
batches fill by themselves; when idle, each event is written at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_size: int
    max_wait_s: float

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError("max_size must be at least 1")
        if self.max_wait_s < 0:
            raise ValueError("max_wait_s must not be negative")

    def is_closed(self, *, size: int, age_s: float, waiting: int) -> bool:
        """Whether a batch of ``size``, open for ``age_s``, takes no more deliveries."""
        return size >= self.max_size or age_s >= self.max_wait_s or waiting == 0


class Pending(Generic[T]):
    """Deliveries received and not yet in a batch, oldest first."""

    def __init__(self) -> None:
        self._items: deque[T] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> None:
        self._items.append(item)

    def take(self, count: int) -> list[T]:
        """Up to ``count`` of the oldest items, removed from the pending ones."""
        items = self._items
        return [items.popleft() for _ in range(min(count, len(items)))]

    def take_all(self) -> list[T]:
        taken = list(self._items)
        self._items.clear()
        return taken
