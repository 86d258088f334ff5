"""One batch of ``chatstore purge``: whole archived conversations, deleted in one statement.

A batch takes the next archived conversations in id order after the cursor,
up to a number of conversations and, counting their messages, up to a number
of messages (but always at least one conversation, however many messages it
holds). It deletes them with their messages (``ON DELETE CASCADE``) in one
transaction, so an interrupted purge leaves whole conversations only.

"Archived before the cutoff" is ``status = 'archived' AND updated_at <
cutoff``: the schema keeps no archive time of its own, and ``updated_at`` is
the latest of the archive's ``archived_at`` and every message's
``created_at``. So a conversation goes only once both its archive and its
last message are older than the cutoff; a late message that arrived after
the archive postpones it. An active conversation never matches, and none
becomes active again: the worker keeps an archive archived.

Each batch is one REPEATABLE READ transaction (the engine's isolation level,
:func:`.purge.maintenance_engine`): the page, the message counts and the
DELETE see one snapshot, so the counts are those of the rows deleted. A
worker that stored into one of them after the snapshot changed its row (every
message it stores moves ``updated_at``, and inserting a message locks the
row): the DELETE, after waiting for the worker's commit, fails with 40001
instead of deleting the newer row, and ``ON DELETE CASCADE`` fails the same
way on a message its snapshot does not hold. The batch is then rolled back
and tried again on a new snapshot, which takes the conversation if it is
still due (its late message was created before the cutoff: deleted with it,
and counted) and leaves it if not (created at or after the cutoff). Under
READ COMMITTED the DELETE would instead recheck the newer row and cascade to
a message it never counted. The DELETE still states both conditions: under
REPEATABLE READ they never differ from the page's, but they are what keeps an
active conversation safe whatever the isolation. Nothing takes a lock before
the delete: the maintenance role has no UPDATE, which ``FOR UPDATE`` needs.

Each batch sets ``statement_timeout`` and ``lock_timeout`` for its own
transaction only, and turns ``statement_timeout`` off again before COMMIT, so
that the server never cancels a COMMIT waiting for a synchronous standby. The
client's ``command_timeout`` (the batch timeout plus
``CHATSTORE_DATABASE_TIMEOUT_S``) still does: asyncpg then raises
TimeoutError and the delete may have committed on the primary only. For a
delete that is harmless: the run tries again on a new connection, the rows
are gone or still due, and a rerun finishes; the report does not count that
batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

CANDIDATE: Final = "c.status = 'archived' AND c.updated_at < :cutoff"

COUNT_CANDIDATES = text(f"SELECT count(*) FROM conversations AS c WHERE {CANDIDATE}")

_TIMEOUTS = text(
    "SELECT set_config('statement_timeout', :statement_ms, true), "
    "set_config('lock_timeout', :lock_ms, true)"
)
_NO_STATEMENT_TIMEOUT = text("SELECT set_config('statement_timeout', '0', true)")


def _batch_sql(*, first: bool, delete: bool) -> str:
    # The first batch has no cursor: "id > :after OR :after IS NULL" would be a
    # filter rather than an index bound, and every batch would scan from the start.
    after = "" if first else "AND c.id > :after"
    # Every conversation of the page with its messages counted, then the
    # longest prefix in id order within the message bound (at least one).
    selected = f"""
        WITH page AS MATERIALIZED (
            SELECT c.id,
                   (SELECT count(*) FROM messages AS m WHERE m.conversation_id = c.id) AS messages
            FROM conversations AS c
            WHERE {CANDIDATE} {after}
            ORDER BY c.id
            LIMIT :max_conversations
        ),
        batch AS MATERIALIZED (
            SELECT id, messages FROM (
                SELECT id, messages,
                       sum(messages) OVER (ORDER BY id) AS running,
                       row_number() OVER (ORDER BY id) AS position
                FROM page
            ) AS p
            WHERE running <= :max_messages OR position = 1
        )"""
    if delete:
        # The condition again, in the DELETE: see the module's docstring. The
        # messages counted in the page are the ones the cascade deletes: one
        # snapshot (REPEATABLE READ), or the batch fails with 40001.
        gone = f""",
        gone AS (
            DELETE FROM conversations AS c USING batch AS b
            WHERE c.id = b.id AND {CANDIDATE}
            RETURNING c.id, b.messages
        )"""
    else:
        gone = ", gone AS (SELECT id, messages FROM batch)"
    return f"""{selected}{gone}
        SELECT (SELECT id FROM batch ORDER BY id DESC LIMIT 1) AS last_id,
               (SELECT count(*) FROM batch) AS examined,
               (SELECT count(*) FROM gone) AS conversations,
               (SELECT coalesce(sum(messages), 0) FROM gone) AS messages
    """


_STATEMENTS = {
    (first, delete): text(_batch_sql(first=first, delete=delete))
    for first in (True, False)
    for delete in (True, False)
}


@dataclass(frozen=True)
class Bounds:
    """How much one batch may take: conversations, messages, and time."""

    conversations: int
    messages: int
    timeout_s: float
    lock_timeout_s: float

    def halved(self) -> Bounds:
        return Bounds(
            max(1, self.conversations // 2),
            max(1, self.messages // 2),
            self.timeout_s,
            self.lock_timeout_s,
        )

    @property
    def smallest(self) -> bool:
        return self.conversations == 1


@dataclass(frozen=True)
class BatchResult:
    last_id: UUID | None  # the cursor for the next batch; None: nothing was left
    examined: int  # conversations the batch took
    conversations: int  # of those, deleted (or, in a dry run, that would be)
    messages: int  # their messages, exactly: the ones deleted with them


async def run_batch(
    connection: AsyncConnection,
    *,
    cutoff: datetime,
    after: UUID | None,
    bounds: Bounds,
    dry_run: bool,
) -> BatchResult:
    """One batch inside the caller's transaction; the caller commits."""
    await connection.execute(
        _TIMEOUTS,
        {
            # At least 1 ms: 0 would turn the timeout off.
            "statement_ms": str(max(1, round(bounds.timeout_s * 1000))),
            "lock_ms": str(max(1, round(bounds.lock_timeout_s * 1000))),
        },
    )
    values: dict[str, Any] = {
        "cutoff": cutoff,
        "max_conversations": bounds.conversations,
        "max_messages": bounds.messages,
    }
    if after is not None:
        values["after"] = after
    row = (await connection.execute(_STATEMENTS[(after is None, not dry_run)], values)).one()
    await connection.execute(_NO_STATEMENT_TIMEOUT)
    return BatchResult(row.last_id, int(row.examined), int(row.conversations), int(row.messages))
