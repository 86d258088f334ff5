"""What the chat runtime needs of a publisher, as a ``Protocol``.

Type a dependency as :class:`EventPublisher` and pass either a
:class:`contracts.Publisher` (production) or a
:class:`contracts.testing.InMemoryPublisher` (unit tests); mypy checks that
both fit. Starting and stopping belong to whoever makes the publisher, so
they are not part of it, but ``close`` is: a runtime that shuts down reads
what could not be sent.

``PublisherStats`` and ``CloseReport``, which both publishers return, live
here, beside no AMQP client, so that the in-memory double returns the same
classes. The protocol names only read-only views of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from contracts.events import AnyEvent


@dataclass
class PublisherStats:
    """Counters since the publisher started."""

    buffered: int = 0
    sent: int = 0
    dropped: int = 0
    resent: int = 0
    reconnects: int = 0


@dataclass(frozen=True)
class CloseReport:
    """What ``close`` could not send before its timeout."""

    unsent: list[AnyEvent] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unsent


class PublisherCounters(Protocol):
    """The counters of :class:`contracts.PublisherStats`, read-only."""

    @property
    def buffered(self) -> int: ...
    @property
    def sent(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def resent(self) -> int: ...
    @property
    def reconnects(self) -> int: ...


class PublisherCloseReport(Protocol):
    """What :class:`contracts.CloseReport` tells: the events ``close`` could not send."""

    @property
    def unsent(self) -> Sequence[AnyEvent]: ...
    @property
    def complete(self) -> bool: ...


class EventPublisher(Protocol):
    """A publisher of the contract's events: ``Publisher`` or ``InMemoryPublisher``."""

    @property
    def stats(self) -> PublisherCounters: ...

    def publish_nowait(self, event: AnyEvent) -> bool:
        """Buffer ``event`` for sending; never blocks. False if dropped."""
        ...

    async def enqueue(self, event: AnyEvent) -> bool:
        """Like ``publish_nowait``, but may wait for room in the buffer."""
        ...

    async def publish(self, event: AnyEvent) -> None:
        """Send ``event`` and return once the broker has confirmed it."""
        ...

    async def close(self, timeout_s: float = 10.0) -> PublisherCloseReport:
        """Send what is buffered within ``timeout_s``; report what could not be sent."""
        ...
