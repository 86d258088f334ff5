"""``chatstore archive --idle-for 90d``: a ``conversation.archived`` event per idle conversation.

Idle means active, with its latest activity before the cutoff (now minus
``--idle-for``). The latest activity is ``updated_at``: the latest of its
messages' ``created_at`` (CONTRACT.md section 3). A conversation without
``updated_at`` has no message at all (the leftover worker/ingest/store.py
describes): it counts as idle, so that it can be archived and purged too.

The events take the chat runtime's way: the real ``Publisher``, each
``publish`` awaited until the broker confirmed it, so the report counts only
confirmed events and the worker applies every guarantee to them (the owner
must match, the archive is sticky, a repeat changes nothing). Up to
``IN_FLIGHT`` publishes are awaited together, which is four times faster
than one at a time on a quorum queue (measured: 1,500 against 355 a second
on a loaded machine), but only right after a publish succeeded: after a
failure they go one at a time, so that only one of them reconnects. Each event names the
owner read from the row. ``archived_at`` is the moment the run started, the
same for every event: the worker sets ``updated_at`` to it, so "archived
before" for ``chatstore purge`` counts from the archive, not from the last
message.

The table is read in pages in id order (keyset), each page its own short
read, so memory stays bounded and no transaction stays open while
publishing. A rerun finds only the conversations still active: one whose
event waits in the queue is published again, which the worker absorbs. A
database error midway stops the run (``stop_reason`` ``"error"``) with the
report of what was published so far.

A conversation may receive a message between the page that read it as idle
and the worker storing its archive: it is archived all the same (the archive
is sticky), and the message is stored in it. Messages still land in an
archived conversation, and its purge waits for its latest one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import ConversationArchived, Publisher, conversation_archived
from worker import topology
from worker.database import create_engine
from worker.faults import sqlstate_of
from worker.settings import Settings
from worker.tools.progress import Progress
from worker.tools.retention.errors import DATABASE_ERRORS, one_line
from worker.tools.retention.stopping import stop_on_signals
from worker.unavailable import describe, rabbitmq_connection, using_postgres

PAGE_SIZE: Final = 500
"""Conversations read per page."""
EXAMPLES: Final = 10
"""Candidates the report shows by id."""
IN_FLIGHT: Final = 100
"""Publishes awaited together."""
FAILURES_IN_A_ROW: Final = 3
"""Publishes, one at a time, that may fail in a row before the run stops: the broker is gone."""
COUNT_TIMEOUT_S: Final = 10.0
"""The starting count's statement_timeout: past it the progress bar has no total."""

_IDLE = "status = 'active' AND (updated_at < :cutoff OR updated_at IS NULL)"
_COUNT = text(f"SELECT count(*) FROM conversations WHERE {_IDLE}")
_COUNT_TIMEOUT = text("SELECT set_config('statement_timeout', :ms, true)")
# Two statements rather than an "id > :after OR :after IS NULL": that would
# be a filter, not an index bound, and every page would scan from the start.
_FIRST_PAGE = text(f"""
    SELECT id, user_id, updated_at FROM conversations WHERE {_IDLE}
    ORDER BY id LIMIT :limit
""")
_NEXT_PAGE = text(f"""
    SELECT id, user_id, updated_at FROM conversations WHERE {_IDLE} AND id > :after
    ORDER BY id LIMIT :limit
""")


@dataclass
class ArchiveReport:
    dry_run: bool
    idle_for_s: int
    cutoff: datetime
    archived_at: datetime
    candidates: int | None = None  # counted at the start, for the progress bar; None: too slow
    seen: int = 0  # walked through: listed (a dry run) or published and failed
    published: int = 0
    failed: int = 0
    interrupted: bool = False
    stop_reason: str | None = None  # "signal", "publish_failures" or "error"
    last_error: str | None = None
    elapsed_s: float = 0.0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.interrupted and self.failed == 0

    def stop(self, reason: str) -> None:
        self.interrupted, self.stop_reason = True, reason

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "idle_for_s": self.idle_for_s,
            "cutoff": self.cutoff.isoformat(),
            "archived_at": self.archived_at.isoformat(),
            "candidates": self.candidates,
            "seen": self.seen,
            "published": self.published,
            "failed": self.failed,
            "interrupted": self.interrupted,
            "stop_reason": self.stop_reason,
            "last_error": self.last_error,
            "elapsed_s": round(self.elapsed_s, 3),
            "examples": self.examples,
        }

    def as_text(self) -> str:
        cutoff = f"idle since before {self.cutoff.isoformat()}"
        if self.dry_run:
            lines = [f"would archive {self.seen:,} conversations {cutoff}"]
            lines += [
                f"  {e['conversation_id']}  {e['user_id']}  last activity {e['updated_at']}"
                for e in self.examples
            ]
        else:
            lines = [
                f"archived {self.published:,} of {self.seen:,} conversations {cutoff} "
                f"(events confirmed by the broker; {self.failed:,} failed)"
            ]
        if self.last_error:
            lines.append(f"last failure: {self.last_error}")
        if self.stop_reason == "signal":
            lines.append("interrupted by a signal: run it again to go on")
        elif self.stop_reason == "publish_failures":
            lines.append(f"stopped after {FAILURES_IN_A_ROW} failed publishes in a row")
        elif self.stop_reason == "error":
            lines.append("stopped by a database error: run it again to go on")
        lines.append(f"in {self.elapsed_s:.1f} s")
        return "\n".join(lines)


async def _count(engine: AsyncEngine, cutoff: datetime, timeout_s: float) -> int | None:
    """The candidates for the progress bar, or None if counting takes too long.

    Only the bar needs it, so a table too large to count in ``timeout_s``
    gives an unknown total rather than a failed run.
    """
    try:
        async with engine.begin() as connection:
            await connection.execute(_COUNT_TIMEOUT, {"ms": str(max(1, round(timeout_s * 1000)))})
            found = (await connection.execute(_COUNT, {"cutoff": cutoff})).scalar_one()
    except DATABASE_ERRORS as error:
        if sqlstate_of(error) != "57014":  # query_canceled: our statement_timeout
            raise
        return None
    return int(found)


async def _page(engine: AsyncEngine, cutoff: datetime, after: UUID | None) -> list[Row[Any]]:
    values: dict[str, Any] = {"cutoff": cutoff, "limit": PAGE_SIZE}
    async with engine.connect() as connection:
        if after is None:
            result = await connection.execute(_FIRST_PAGE, values)
        else:
            result = await connection.execute(_NEXT_PAGE, values | {"after": after})
        return list(result)


async def _broker_ready(amqp_url: str) -> None:
    """The broker answers and a worker has declared its queue (else one line, naming it)."""
    async with rabbitmq_connection(amqp_url) as connection:
        channel = await connection.channel()
        # Passive: needs no permission, and an event nothing would route is refused here.
        await channel.declare_queue(topology.QUEUE, passive=True)


class _Sender:
    """Publishes events, ``IN_FLIGHT`` at a time while the broker answers, else one by one."""

    def __init__(self, publisher: Publisher, report: ArchiveReport, progress: Progress) -> None:
        self._publisher = publisher
        self._report = report
        self._progress = progress
        self._healthy = False  # the first publish connects, alone
        self._failures_in_a_row = 0

    async def send(self, events: list[ConversationArchived], stop: asyncio.Event) -> None:
        pending = deque(events)
        while pending and not self._report.interrupted:
            if stop.is_set():
                self._report.stop("signal")
            elif self._healthy:
                window = [pending.popleft() for _ in range(min(IN_FLIGHT, len(pending)))]
                results = await asyncio.gather(
                    *(self._publisher.publish(event) for event in window), return_exceptions=True
                )
                for result in results:
                    self._count(result if isinstance(result, BaseException) else None)
                # A failure may have cost the connection: the next one reconnects alone.
                self._healthy = not any(isinstance(r, BaseException) for r in results)
            else:
                try:
                    await self._publisher.publish(pending.popleft())
                except Exception as error:  # any failure of one publish is that event's
                    self._count(error)
                    self._failures_in_a_row += 1
                    if self._failures_in_a_row >= FAILURES_IN_A_ROW:
                        self._report.stop("publish_failures")
                else:
                    self._count(None)
                    self._failures_in_a_row, self._healthy = 0, True

    def _count(self, error: BaseException | None) -> None:
        self._report.seen += 1
        if error is None:
            self._report.published += 1
        else:
            self._report.failed += 1
            self._report.last_error = describe(error)
        self._progress.advance()


async def archive(
    settings: Settings, *, idle_for: timedelta, dry_run: bool, stop: asyncio.Event
) -> ArchiveReport:
    """Publish ``conversation.archived`` for every idle conversation, until done or ``stop``."""
    started = time.monotonic()
    now = datetime.now(UTC)
    report = ArchiveReport(
        dry_run=dry_run,
        idle_for_s=int(idle_for.total_seconds()),
        cutoff=now - idle_for,
        archived_at=now,
    )
    await _broker_ready(settings.amqp_url)
    engine = create_engine(settings)
    publisher = None if dry_run else Publisher(settings.amqp_url)
    try:
        with using_postgres(settings.sqlalchemy_url):
            # Within the client's own timeout, which would end the run instead.
            count_s = min(COUNT_TIMEOUT_S, settings.database_timeout_s / 2)
            report.candidates = await _count(engine, report.cutoff, count_s)
            progress = Progress(report.candidates, "dry run" if dry_run else "archiving")
            sender = None if publisher is None else _Sender(publisher, report, progress)
            after: UUID | None = None
            while not report.interrupted:
                if stop.is_set():
                    report.stop("signal")
                    break
                try:
                    page = await _page(engine, report.cutoff, after)
                except DATABASE_ERRORS as error:
                    # What was published stays published: report it, and a rerun goes on.
                    report.last_error = one_line(error, settings.secrets())
                    report.stop("error")
                    break
                if not page:
                    break
                after = page[-1].id
                report.examples += [
                    _example(row) for row in page[: EXAMPLES - len(report.examples)]
                ]
                if sender is None:
                    report.seen += len(page)
                    progress.advance(len(page))
                    continue
                events = [
                    conversation_archived(
                        conversation_id=row.id, user_id=row.user_id, archived_at=now
                    )
                    for row in page
                ]
                await sender.send(events, stop)
            progress.done()
    finally:
        if publisher is not None:
            await publisher.close(timeout_s=5)
        await engine.dispose()
    report.elapsed_s = time.monotonic() - started
    return report


def _example(row: Row[Any]) -> dict[str, Any]:
    updated_at: datetime | None = row.updated_at
    return {
        "conversation_id": str(row.id),
        "user_id": row.user_id,
        "updated_at": updated_at.isoformat() if updated_at else None,
    }


async def run(settings: Settings, *, idle_for: timedelta, dry_run: bool) -> ArchiveReport:
    """``archive`` until done, or until SIGINT or SIGTERM (after the publish in hand)."""
    with stop_on_signals() as stop:
        return await archive(settings, idle_for=idle_for, dry_run=dry_run, stop=stop)


def render(report: ArchiveReport, *, as_json: bool) -> str:
    return json.dumps(report.as_json(), indent=2) if as_json else report.as_text()
