"""``chatstore purge --archived-before DATE``: delete archived conversations, batch by batch.

Runs as the maintenance role (``CHATSTORE_MAINTENANCE_DATABASE_URL``), the
only one of chatstore's roles that may delete; it checks the role's
privileges before it starts. Each batch (:mod:`.batches`) is one transaction
that deletes whole conversations with their messages and commits; the next
starts after the last id of the one before (keyset, id order). SIGINT or
SIGTERM stops the run once the batch in hand has committed; a kill rolls it
back. Either way a rerun simply goes on: what is left is still archived
before the cutoff.

A batch that runs into its statement timeout is rolled back and tried again
at half the size; one that waits too long for a lock, is chosen as a
deadlock's victim, or meets a worker's late message (40001, see
:mod:`.batches`) is tried again as it was; one that lost its connection (a
failover, a client timeout: :data:`worker.faults.Fault.TRANSIENT`) is tried
again on a new one. The run gives up, reporting it, when one conversation
alone is too slow or the retries keep failing; any other database error
stops it too (``stop_reason`` ``"error"``), with the report of what it
deleted so far.

A worker may store a late message for a conversation while it is purged: if
the delete wins, the worker, which creates conversations on first sight,
makes a new active conversation holding only the late messages, owned by
that message's user, whoever owned the purged one: the purge forgot the
owner (archive it again later).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from worker import exits
from worker.database import connect_args
from worker.faults import Fault, classify, sqlstate_of
from worker.settings import Settings
from worker.tools.progress import Progress
from worker.tools.retention.batches import COUNT_CANDIDATES, BatchResult, Bounds, run_batch
from worker.tools.retention.errors import DATABASE_ERRORS, one_line
from worker.tools.retention.stopping import stop_on_signals
from worker.unavailable import ServiceUnavailableError, postgres_at, using_postgres

log = structlog.get_logger("chatstore.purge")

RETRIES_IN_A_ROW: Final = 5
"""Failed attempts at one batch before the run gives up."""
_TIMED_OUT: Final = "57014"  # query_canceled: our statement_timeout
_TRY_AGAIN: Final = frozenset({"55P03", "40P01", "40001"})  # lock timeout, deadlock, serialization
_COUNT_TIMEOUT = text("SELECT set_config('statement_timeout', :ms, true)")

_PRIVILEGES = text("""
    SELECT current_user AS role,
           has_table_privilege('conversations', 'DELETE') AS can_delete,
           has_column_privilege('conversations', 'id', 'SELECT')
               AND has_column_privilege('conversations', 'status', 'SELECT')
               AND has_column_privilege('conversations', 'updated_at', 'SELECT') AS can_select,
           has_column_privilege('messages', 'conversation_id', 'SELECT') AS can_count
""")


@dataclass
class PurgeReport:
    dry_run: bool
    cutoff: datetime
    candidates: int | None = None  # counted at the start, for the progress bar; None: too slow
    conversations: int = 0
    messages: int = 0
    batches: int = 0
    retries: int = 0
    batch_size: int = 0  # the bounds at the end (halved by timeouts)
    batch_messages: int = 0
    interrupted: bool = False
    stop_reason: str | None = None  # "signal", "retries" or "error"
    last_error: str | None = None
    elapsed_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "cutoff": self.cutoff.isoformat(),
            "candidates": self.candidates,
            "conversations": self.conversations,
            "messages": self.messages,
            "batches": self.batches,
            "retries": self.retries,
            "batch_size": self.batch_size,
            "batch_messages": self.batch_messages,
            "interrupted": self.interrupted,
            "stop_reason": self.stop_reason,
            "last_error": self.last_error,
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def as_text(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        lines = [
            f"{verb} {self.conversations:,} conversations and {self.messages:,} messages "
            f"archived before {self.cutoff.isoformat()}, in {self.batches:,} batches "
            f"({self.elapsed_s:.1f} s)"
        ]
        if self.retries:
            lines.append(f"{self.retries} batches tried again; last failure: {self.last_error}")
        if self.stop_reason == "signal":
            lines.append("interrupted by a signal after a committed batch: run it again to go on")
        elif self.stop_reason == "retries":
            lines.append(f"gave up after {RETRIES_IN_A_ROW} failed attempts at one batch")
        elif self.stop_reason == "error":
            lines.append(f"stopped by an error: {self.last_error}; run it again to go on")
        return "\n".join(lines)

    def stop(self, reason: str) -> None:
        self.interrupted, self.stop_reason = True, reason


def maintenance_engine(settings: Settings, bounds: Bounds) -> AsyncEngine:
    """One connection to ``settings``' database; the server's timeouts bound each batch.

    REPEATABLE READ: a batch's counts and its DELETE see one snapshot (see
    :mod:`.batches`).
    """
    arguments = connect_args(settings)
    # The client's own timeout only catches a server that stopped answering
    # (and a COMMIT waiting too long for a synchronous standby: see .batches).
    arguments["command_timeout"] = bounds.timeout_s + settings.database_timeout_s
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=1,
        max_overflow=0,
        connect_args=arguments,
        isolation_level="REPEATABLE READ",
    )


async def _check_privileges(engine: AsyncEngine, settings: Settings) -> None:
    async with engine.connect() as connection:
        row = (await connection.execute(_PRIVILEGES)).one()
    if not (row.can_delete and row.can_select and row.can_count):
        raise ServiceUnavailableError(
            postgres_at(settings.sqlalchemy_url),
            f"the role {row.role!r} may not purge: it needs DELETE and SELECT (id, status, "
            "updated_at) on conversations and SELECT (conversation_id) on messages; set "
            "CHATSTORE_MAINTENANCE_DATABASE_URL to the maintenance role, granted by "
            "deploy/postgres/grants.sql with -v maintenance=ROLE",
            exit_code=exits.USAGE,
        )


async def _count(engine: AsyncEngine, cutoff: datetime, timeout_s: float) -> int | None:
    """The candidates for the progress bar, or None if counting takes over ``timeout_s``.

    Only the bar needs it (the report's totals are the batches'), so a table
    too large to count in a batch's time gives an unknown total rather than
    a run that fails before it starts.
    """
    try:
        async with engine.begin() as connection:
            await connection.execute(_COUNT_TIMEOUT, {"ms": str(max(1, round(timeout_s * 1000)))})
            found = (await connection.execute(COUNT_CANDIDATES, {"cutoff": cutoff})).scalar_one()
    except DATABASE_ERRORS as error:
        if sqlstate_of(error) != _TIMED_OUT:
            raise
        log.warning("purge.count_skipped", reason="statement timeout", timeout_s=timeout_s)
        return None
    return int(found)


async def _one_batch(
    engine: AsyncEngine, cutoff: datetime, after: UUID | None, bounds: Bounds, dry_run: bool
) -> BatchResult:
    async with engine.begin() as connection:  # commits on leaving, rolls back on an error
        return await run_batch(
            connection, cutoff=cutoff, after=after, bounds=bounds, dry_run=dry_run
        )


async def purge(
    settings: Settings, *, cutoff: datetime, bounds: Bounds, dry_run: bool, stop: asyncio.Event
) -> PurgeReport:
    """Delete (or count) what was archived before ``cutoff``, until done or ``stop``.

    ``settings`` are the maintenance role's (:meth:`Settings.for_maintenance`).
    """
    started = time.monotonic()
    report = PurgeReport(dry_run=dry_run, cutoff=cutoff)
    engine = maintenance_engine(settings, bounds)
    narrate = not sys.stderr.isatty()  # a log line per batch where no bar is drawn
    try:
        with using_postgres(settings.sqlalchemy_url):
            await _check_privileges(engine, settings)
            report.candidates = await _count(engine, cutoff, bounds.timeout_s)
            progress = Progress(report.candidates, "dry run" if dry_run else "purging")
            after: UUID | None = None
            failures = 0
            while True:
                if stop.is_set():
                    report.stop("signal")
                    break
                batch_started = time.monotonic()
                try:
                    result = await _one_batch(engine, cutoff, after, bounds, dry_run)
                except DATABASE_ERRORS as error:
                    code = sqlstate_of(error)
                    report.last_error = one_line(error, settings.secrets())
                    reconnect = code != _TIMED_OUT and code not in _TRY_AGAIN
                    if reconnect and classify(error) is not Fault.TRANSIENT:
                        report.stop("error")  # a retry would not cure it
                        break
                    failures += 1
                    report.retries += 1
                    if failures >= RETRIES_IN_A_ROW or (code == _TIMED_OUT and bounds.smallest):
                        report.stop("retries")
                        break
                    if code == _TIMED_OUT:
                        bounds = bounds.halved()
                    log.warning(
                        "purge.retry",
                        sqlstate=code,
                        error=report.last_error,
                        batch_size=bounds.conversations,
                        batch_messages=bounds.messages,
                    )
                    if reconnect:
                        # The connection may be dead or mid-statement: start on a new one,
                        # and give a failover a few seconds.
                        await engine.dispose()
                        await _pause(stop, 0.5 * failures)
                    else:
                        await _pause(stop, 0.1 * failures)
                    continue
                failures = 0
                if result.last_id is None:
                    break  # nothing left after the cursor
                after = result.last_id
                report.batches += 1
                report.conversations += result.conversations
                report.messages += result.messages
                progress.advance(result.examined)
                if narrate:
                    log.info(
                        "purge.batch",
                        batch=report.batches,
                        dry_run=dry_run,
                        conversations=result.conversations,
                        messages=result.messages,
                        elapsed_ms=round((time.monotonic() - batch_started) * 1000),
                    )
            progress.done()
    finally:
        await engine.dispose()
    report.batch_size, report.batch_messages = bounds.conversations, bounds.messages
    report.elapsed_s = time.monotonic() - started
    return report


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but no longer than until ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def run(
    settings: Settings, *, cutoff: datetime, bounds: Bounds, dry_run: bool
) -> PurgeReport:
    """``purge`` until done, or until SIGINT or SIGTERM (after the batch in hand commits)."""
    with stop_on_signals() as stop:
        return await purge(settings, cutoff=cutoff, bounds=bounds, dry_run=dry_run, stop=stop)


def render(report: PurgeReport, *, as_json: bool) -> str:
    return json.dumps(report.as_json(), indent=2) if as_json else report.as_text()
