"""Retention on the real servers: ``chatstore archive`` through the broker and a real
worker, ``chatstore purge`` in batches, interrupted and run again.

Tables are filled with INSERT ... SELECT, not through the broker: only what
the commands publish goes through it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from sqlalchemy.engine import URL

from tests.db import connect, fetch_all
from tests.events import message_created
from tests.harness import (
    add_users,
    count,
    publish,
    queue_depth,
    running_worker,
    table_has,
    take_dead_letters,
    wait_for,
    worker_environment,
    worker_settings,
)
from worker import exits, topology
from worker.arguments import duration, instant, past_instant
from worker.settings import Settings
from worker.tools.progress import Progress
from worker.tools.retention.archive import ArchiveReport, archive
from worker.tools.retention.batches import Bounds
from worker.tools.retention.purge import purge

NOW = datetime.now(UTC)
LONG_AGO = NOW - timedelta(days=200)
CUTOFF = NOW - timedelta(days=100)
RECENTLY = NOW - timedelta(days=10)


async def fill(
    url: URL,
    *,
    conversations: int,
    messages_each: int,
    status: str,
    updated_at: datetime | None,
    user: str = "alice",
    ids: list[uuid.UUID] | None = None,
) -> list[uuid.UUID]:
    """``conversations`` rows with ``messages_each`` messages each, all at or before
    ``updated_at`` (none without timestamps); their ids (``ids`` if given, in order)."""
    rows = await fetch_all(
        url,
        "INSERT INTO conversations (id, user_id, status, created_at, updated_at)"
        " SELECT coalesce(($5::uuid[])[n], gen_random_uuid()), $1, $2, $3, $3"
        " FROM generate_series(1, $4) AS n RETURNING id",
        user,
        status,
        updated_at,
        conversations,
        ids,
    )
    ids = [row["id"] for row in rows]
    if messages_each:
        await fetch_all(
            url,
            "INSERT INTO messages (id, conversation_id, user_id, role, content, created_at)"
            " SELECT gen_random_uuid(), c.id, $2, 'user', 'message ' || n,"
            "        $3::timestamptz - interval '1 minute' * n"
            " FROM unnest($1::uuid[]) AS c(id), generate_series(1, $4) AS n",
            ids,
            user,
            updated_at,
            messages_each,
        )
    return ids


async def statuses(url: URL) -> dict[uuid.UUID, str]:
    rows = await fetch_all(url, "SELECT id, status FROM conversations")
    return {row["id"]: row["status"] for row in rows}


async def messages_by_conversation(url: URL) -> dict[uuid.UUID, int]:
    rows = await fetch_all(
        url, "SELECT conversation_id AS id, count(*) AS n FROM messages GROUP BY 1"
    )
    return {row["id"]: int(row["n"]) for row in rows}


@pytest.fixture
async def purge_settings(database_url: URL, services_amqp_url: str) -> Settings:
    """Settings on this test's database, with the users alice and bob; purge never
    uses the broker, so no vhost of its own (making one takes a second or two)."""
    await add_users(database_url, "alice", "bob")
    return worker_settings(database_url, services_amqp_url)


def maintenance_settings(settings: Settings) -> Settings:
    """The test's superuser URL as the maintenance URL too (the roles are tested in
    test_least_privilege.py)."""
    return settings.model_copy(update={"maintenance_database_url": settings.database_url})


# --- archive ---------------------------------------------------------------


async def _idle_and_busy(url: URL) -> dict[str, list[uuid.UUID]]:
    return {
        "idle": [
            *await fill(
                url, conversations=3, messages_each=2, status="active", updated_at=LONG_AGO
            ),
            *await fill(
                url,
                conversations=2,
                messages_each=1,
                status="active",
                updated_at=LONG_AGO,
                user="bob",
            ),
            # The store's leftover: a conversation without a message or timestamps.
            *await fill(url, conversations=1, messages_each=0, status="active", updated_at=None),
        ],
        "busy": await fill(
            url, conversations=2, messages_each=3, status="active", updated_at=RECENTLY
        ),
        "archived": await fill(
            url, conversations=1, messages_each=1, status="archived", updated_at=LONG_AGO
        ),
    }


async def test_archive_dry_run_changes_nothing_and_the_real_run_archives_exactly_the_idle_ones(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    groups = await _idle_and_busy(database_url)
    before = await statuses(database_url)
    dry = await archive(settings, idle_for=timedelta(days=100), dry_run=True, stop=asyncio.Event())
    assert (dry.candidates, dry.seen, dry.published) == (6, 6, 0)
    assert {e["conversation_id"] for e in dry.examples} == {str(i) for i in groups["idle"]}
    assert await queue_depth(amqp_url) == 0  # a dry run publishes nothing...
    assert await statuses(database_url) == before  # ...and changes nothing

    report = await archive(
        settings, idle_for=timedelta(days=100), dry_run=False, stop=asyncio.Event()
    )
    assert (report.candidates, report.seen, report.published, report.failed) == (6, 6, 6, 0)
    assert report.complete
    assert await queue_depth(amqp_url) == 6  # confirmed: in the queue before any worker runs

    async with running_worker(settings):
        await wait_for(
            lambda: _archived_count(database_url, 7), what="the archives stored", within_s=20
        )
    after = await statuses(database_url)
    assert {after[i] for i in groups["idle"] + groups["archived"]} == {"archived"}
    assert {after[i] for i in groups["busy"]} == {"active"}
    assert await take_dead_letters(amqp_url) == []  # bob's went in as bob's: no mismatch
    # The archive time is the run's start, which is now each idle one's latest activity.
    rows = await fetch_all(
        database_url,
        "SELECT DISTINCT updated_at FROM conversations WHERE id = ANY($1::uuid[])",
        groups["idle"],
    )
    assert [row["updated_at"] for row in rows] == [report.archived_at]

    again = await archive(
        settings, idle_for=timedelta(days=100), dry_run=False, stop=asyncio.Event()
    )
    assert (again.candidates, again.seen, again.published) == (0, 0, 0)


async def _archived_count(url: URL, expected: int) -> bool:
    rows = await fetch_all(url, "SELECT count(*) AS n FROM conversations WHERE status = 'archived'")
    return int(rows[0]["n"]) == expected


async def _archive_under_way(
    settings: Settings, database_url: URL, amqp_url: str, stop: asyncio.Event | None = None
) -> asyncio.Task[ArchiveReport]:
    """An archive of 5,000 idle conversations, started and 200 events into its publishing."""
    await fill(database_url, conversations=5000, messages_each=0, status="active", updated_at=None)
    running = asyncio.create_task(
        archive(settings, idle_for=timedelta(days=100), dry_run=False, stop=stop or asyncio.Event())
    )

    async def under_way() -> bool:
        return running.done() or await queue_depth(amqp_url) >= 200

    await wait_for(under_way, what="the archive under way")
    return running


async def test_an_archive_whose_broker_fails_midway_counts_only_what_was_confirmed_and_stops(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    running = await _archive_under_way(settings, database_url, amqp_url)
    # From now on every publish fails: the broker closes the channel (404).
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        await channel.exchange_delete(topology.EXCHANGE)
    report = await asyncio.wait_for(running, timeout=60)
    assert report.stop_reason == "publish_failures"
    assert report.failed >= 3
    assert report.seen == report.published + report.failed
    assert 200 <= report.published < 5000
    # Every confirmed event is in the queue. A few more may be: routed, but their
    # confirm lost with the channel (at least once: a rerun sends them again).
    depth = await queue_depth(amqp_url)
    assert report.published <= depth <= report.published + report.failed


async def test_an_archive_stopped_midway_stops_after_the_events_in_hand(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    stop = asyncio.Event()
    running = await _archive_under_way(settings, database_url, amqp_url, stop)
    stop.set()  # what SIGINT and SIGTERM do (worker.tools.retention.stopping)
    report = await asyncio.wait_for(running, timeout=60)
    assert (report.interrupted, report.stop_reason, report.failed) == (True, "signal", 0)
    assert 200 <= report.published < 5000
    assert report.seen == report.published
    assert await queue_depth(amqp_url) == report.published


async def test_an_archive_whose_database_fails_midway_stops_with_its_report(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    running = await _archive_under_way(settings, database_url, amqp_url)
    # The next page waits for our lock; its backend is then terminated.
    connection = await connect(database_url)
    transaction = connection.transaction()
    await transaction.start()
    try:
        await connection.execute("LOCK TABLE conversations IN ACCESS EXCLUSIVE MODE")
        await wait_for(lambda: _someone_waits_for_a_lock(database_url), what="a page waiting")
        [backend] = [row["pid"] for row in await _lock_waiters(database_url)]
        await connection.execute("SELECT pg_terminate_backend($1)", backend)
        report = await asyncio.wait_for(running, timeout=60)
    finally:
        await transaction.rollback()
        await connection.close()
    assert (report.interrupted, report.stop_reason, report.failed) == (True, "error", 0)
    # The server's notice or the dropped socket, whichever the driver saw first.
    assert str(report.last_error).split(":")[0] in {"57P01", "08003"}, report.last_error
    assert "\n" not in str(report.last_error)
    assert report.published % 500 == 0  # whole pages, each published before the next read
    assert 500 <= report.published < 5000
    assert await queue_depth(amqp_url) == report.published


# --- purge -----------------------------------------------------------------


async def _purge_groups(url: URL) -> dict[str, list[uuid.UUID]]:
    return {
        "due": await fill(
            url, conversations=30, messages_each=5, status="archived", updated_at=LONG_AGO
        ),
        "archived_after": await fill(
            url, conversations=10, messages_each=5, status="archived", updated_at=RECENTLY
        ),
        "active_old": await fill(
            url, conversations=10, messages_each=5, status="active", updated_at=LONG_AGO
        ),
        "active_bare": await fill(
            url, conversations=2, messages_each=0, status="active", updated_at=None
        ),
    }


async def test_purge_deletes_only_what_was_archived_before_the_date_and_its_messages(
    purge_settings: Settings, database_url: URL
) -> None:
    groups = await _purge_groups(database_url)
    small = Bounds(conversations=7, messages=20, timeout_s=10, lock_timeout_s=2)

    dry = await purge(
        purge_settings, cutoff=CUTOFF, bounds=small, dry_run=True, stop=asyncio.Event()
    )
    assert (dry.candidates, dry.conversations, dry.messages) == (30, 30, 150)
    assert dry.batches == 8  # 20 messages: 4 conversations of 5 per batch
    assert await count(database_url, "conversations") == 52
    assert await count(database_url, "messages") == 250

    report = await purge(
        purge_settings, cutoff=CUTOFF, bounds=small, dry_run=False, stop=asyncio.Event()
    )
    assert (report.conversations, report.messages, report.batches) == (30, 150, 8)
    assert (report.interrupted, report.retries) == (False, 0)
    left = await statuses(database_url)
    kept = groups["archived_after"] + groups["active_old"] + groups["active_bare"]
    assert set(left) == set(kept)
    assert await messages_by_conversation(database_url) == {
        i: 5 for i in groups["archived_after"] + groups["active_old"]
    }

    again = await purge(
        purge_settings, cutoff=CUTOFF, bounds=small, dry_run=False, stop=asyncio.Event()
    )
    assert (again.conversations, again.messages) == (0, 0)


async def test_one_conversation_over_the_message_bound_is_a_batch_of_its_own(
    purge_settings: Settings, database_url: URL
) -> None:
    await fill(
        database_url, conversations=3, messages_each=50, status="archived", updated_at=LONG_AGO
    )
    tight = Bounds(conversations=100, messages=10, timeout_s=10, lock_timeout_s=2)
    report = await purge(
        purge_settings, cutoff=CUTOFF, bounds=tight, dry_run=False, stop=asyncio.Event()
    )
    assert (report.conversations, report.messages, report.batches) == (3, 150, 3)
    assert await count(database_url, "messages") == 0


async def test_a_starting_count_out_of_time_leaves_the_total_unknown_and_the_run_goes_on(
    purge_settings: Settings, database_url: URL
) -> None:
    await fill(
        database_url, conversations=30, messages_each=2, status="archived", updated_at=LONG_AGO
    )
    # Our lock on the whole table holds the count until its statement_timeout.
    connection = await connect(database_url)
    transaction = connection.transaction()
    await transaction.start()
    await connection.execute("LOCK TABLE conversations IN ACCESS EXCLUSIVE MODE")
    bounds = Bounds(conversations=10, messages=100, timeout_s=0.5, lock_timeout_s=30)
    running = asyncio.create_task(
        purge(purge_settings, cutoff=CUTOFF, bounds=bounds, dry_run=False, stop=asyncio.Event())
    )

    async def first_batch_waits() -> bool:
        return any("WITH page" in row["query"] for row in await _lock_waiters(database_url))

    try:
        await wait_for(first_batch_waits, what="the count given up, the first batch waiting")
    finally:
        await transaction.rollback()
        await connection.close()
    report = await asyncio.wait_for(running, timeout=30)
    assert report.candidates is None
    assert report.as_json()["candidates"] is None
    assert (report.conversations, report.messages, report.interrupted) == (30, 60, False)
    assert await count(database_url, "conversations") == 0


async def _lock_row(url: URL, conversation_id: uuid.UUID) -> tuple[asyncpg.Connection, Any]:
    """A transaction of our own holding ``conversation_id``'s row lock."""
    connection = await connect(url)
    transaction = connection.transaction()
    await transaction.start()
    await connection.execute(
        "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", conversation_id
    )
    return connection, transaction


async def _lock_waiters(url: URL) -> list[asyncpg.Record]:
    """The backends of this database waiting for a lock: ``pid`` and ``query``."""
    return await fetch_all(
        url,
        "SELECT pid, query FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock' ORDER BY pid",
    )


async def _someone_waits_for_a_lock(url: URL) -> bool:
    return len(await _lock_waiters(url)) > 0


def _waiting(url: URL, backends: int) -> Any:
    async def check() -> bool:
        return len(await _lock_waiters(url)) >= backends

    return check


async def test_a_batch_meeting_rows_changed_after_it_read_them_is_tried_again_and_spares_them(
    purge_settings: Settings, database_url: URL
) -> None:
    ids = sorted(
        await fill(
            database_url, conversations=20, messages_each=3, status="archived", updated_at=LONG_AGO
        )
    )
    moved, reopened = ids[10], ids[11]
    connection, transaction = await _lock_row(database_url, moved)
    # Both, so the DELETE takes neither before we change them, whatever its order.
    await connection.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", reopened)
    slow = Bounds(conversations=500, messages=20_000, timeout_s=30, lock_timeout_s=30)
    running = asyncio.create_task(
        purge(purge_settings, cutoff=CUTOFF, bounds=slow, dry_run=False, stop=asyncio.Event())
    )
    try:
        await wait_for(lambda: _someone_waits_for_a_lock(database_url), what="the purge blocked")
        # Each alone, after the batch read them: what a worker's late message
        # does (updated_at past the cutoff), and what no worker does (an
        # archive is sticky) but the DELETE must still refuse.
        await connection.execute("UPDATE conversations SET updated_at = now() WHERE id = $1", moved)
        await connection.execute(
            "UPDATE conversations SET status = 'active' WHERE id = $1", reopened
        )
        await transaction.commit()
    finally:
        await connection.close()
    report = await asyncio.wait_for(running, timeout=30)
    # The batch saw a row newer than its snapshot: rolled back, tried again
    # on a new one, which no longer holds the two.
    assert (report.conversations, report.messages, report.retries) == (18, 54, 1)
    assert str(report.last_error).startswith("40001: could not serialize access")
    assert await statuses(database_url) == {moved: "archived", reopened: "active"}
    assert await messages_by_conversation(database_url) == {moved: 3, reopened: 3}


@pytest.mark.parametrize("stored_first", [True, False], ids=["stored-first", "deleted-first"])
async def test_a_late_message_during_a_purge_is_deleted_and_counted_or_starts_a_new_conversation(
    settings: Settings, database_url: URL, amqp_url: str, stored_first: bool
) -> None:
    # Two rows in one batch, x before y both in id order and in the table, so
    # the DELETE reaches x first whichever way it scans.
    x, y = [
        (
            await fill(
                database_url,
                conversations=1,
                messages_each=2,
                status="archived",
                updated_at=LONG_AGO,
                ids=[i],
            )
        )[0]
        for i in sorted([uuid.uuid4(), uuid.uuid4()])
    ]
    slow = Bounds(conversations=500, messages=20_000, timeout_s=30, lock_timeout_s=30)
    maintenance = maintenance_settings(settings)

    def purging() -> asyncio.Task[Any]:
        return asyncio.create_task(
            purge(maintenance, cutoff=CUTOFF, bounds=slow, dry_run=False, stop=asyncio.Event())
        )

    async with running_worker(settings):
        if stored_first:
            # The worker's batch takes x's lock first (it waits for ours), the
            # purge's DELETE waits behind it: the late message, created before
            # the cutoff, is stored and acked before the delete reaches x.
            late = message_created(
                conversation_id=str(x),
                user_id="alice",
                created_at=(CUTOFF - timedelta(days=1)).isoformat(),
            )
            connection, transaction = await _lock_row(database_url, x)
            await publish(amqp_url, [late])
            await wait_for(_waiting(database_url, 1), what="the worker waiting for x")
            running = purging()
            await wait_for(_waiting(database_url, 2), what="the purge waiting behind it")
        else:
            # The purge deletes x, then waits for y; bob's late message for
            # alice's x waits for the purge's uncommitted delete of x.
            late = message_created(conversation_id=str(x), user_id="bob")
            connection, transaction = await _lock_row(database_url, y)
            running = purging()
            await wait_for(_waiting(database_url, 1), what="the purge waiting for y")
            await publish(amqp_url, [late])
            await wait_for(_waiting(database_url, 2), what="the worker waiting for the purge")
        await transaction.rollback()
        await connection.close()
        report = await asyncio.wait_for(running, timeout=30)
        if not stored_first:
            await wait_for(table_has(database_url, "messages", 1), what="the late message stored")
    # The worker drained on leaving: every event acked, none dead-lettered.
    assert await queue_depth(amqp_url) == 0
    assert await take_dead_letters(amqp_url) == []
    stored = await fetch_all(
        database_url,
        "SELECT c.id, c.user_id, c.status, m.id AS message_id"
        " FROM conversations AS c JOIN messages AS m ON m.conversation_id = c.id",
    )
    if stored_first:
        # Deleted with its conversation, and counted: 2 + 2 old and the late one.
        assert (report.conversations, report.messages, report.retries) == (2, 5, 1)
        assert str(report.last_error).startswith("40001")
        assert stored == []
    else:
        # The delete won: the worker made x anew, active, bob's, holding only
        # the late message (the purge forgot alice).
        assert (report.conversations, report.messages, report.retries) == (2, 4, 0)
        assert [tuple(row) for row in stored] == [
            (x, "bob", "active", uuid.UUID(late["data"]["message_id"]))
        ]


async def test_a_batch_out_of_time_is_halved_one_out_of_lock_time_retried_then_given_up(
    purge_settings: Settings, database_url: URL
) -> None:
    ids = sorted(
        await fill(
            database_url, conversations=8, messages_each=2, status="archived", updated_at=LONG_AGO
        )
    )
    connection, transaction = await _lock_row(database_url, ids[0])  # in every batch
    try:
        statement = Bounds(conversations=8, messages=100, timeout_s=0.3, lock_timeout_s=30)
        timed_out = await purge(
            purge_settings, cutoff=CUTOFF, bounds=statement, dry_run=False, stop=asyncio.Event()
        )
        lock = Bounds(conversations=8, messages=100, timeout_s=30, lock_timeout_s=0.1)
        locked_out = await purge(
            purge_settings, cutoff=CUTOFF, bounds=lock, dry_run=False, stop=asyncio.Event()
        )
    finally:
        await transaction.rollback()
        await connection.close()
    # 8, 4, 2, then 1 conversation: still out of time, so it gives up.
    assert (timed_out.stop_reason, timed_out.retries, timed_out.batch_size) == ("retries", 4, 1)
    assert timed_out.last_error == "57014: canceling statement due to statement timeout"
    assert (locked_out.stop_reason, locked_out.retries, locked_out.batch_size) == ("retries", 5, 8)
    assert str(locked_out.last_error).startswith("55P03: canceling statement due to lock timeout")
    assert timed_out.conversations == locked_out.conversations == 0
    assert await messages_by_conversation(database_url) == {i: 2 for i in ids}


def _purge_command(*arguments: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "worker",
        "purge",
        "--archived-before",
        CUTOFF.isoformat(),
        *arguments,
    ]


async def _start_purge_in_batches_of_10(
    environment: dict[str, str], log: Path, *, stdout: int
) -> asyncio.subprocess.Process:
    """``chatstore purge --batch-size 10 --json`` in a child, its stderr in ``log``;
    it waits up to 60 s for a lock, so a test can hold one of its rows."""
    # The child has its own copy of the descriptor: ours is closed at once.
    with log.open("wb") as stream:
        return await asyncio.create_subprocess_exec(
            *_purge_command("--batch-size", "10", "--lock-timeout", "60", "--json"),
            env=environment,
            stdout=stdout,
            stderr=stream,
        )


async def _four_hundred_archived_and_five_active(
    database_url: URL,
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """400 archived conversations (in id order) and 5 active ones, 10 messages each."""
    ids = sorted(
        await fill(
            database_url,
            conversations=400,
            messages_each=10,
            status="archived",
            updated_at=LONG_AGO,
        )
    )
    kept = await fill(
        database_url, conversations=5, messages_each=10, status="active", updated_at=LONG_AGO
    )
    return ids, kept


async def test_a_purge_interrupted_midway_leaves_whole_conversations_and_a_rerun_finishes(
    purge_settings: Settings, database_url: URL, tmp_path: Path
) -> None:
    ids, kept = await _four_hundred_archived_and_five_active(database_url)
    # The 11th batch of 10 waits for this row while the signal arrives: the
    # first ten have committed, and the 11th commits once the lock is gone.
    connection, transaction = await _lock_row(database_url, ids[105])
    process = await _start_purge_in_batches_of_10(
        worker_environment(maintenance_settings(purge_settings)),
        tmp_path / "purge.log",
        stdout=subprocess.PIPE,
    )
    try:
        await wait_for(lambda: _someone_waits_for_a_lock(database_url), what="the purge blocked")
        assert await count(database_url, "conversations") == 405 - 100
        process.send_signal(signal.SIGINT)
        await asyncio.sleep(0.2)  # the handler runs; the batch still waits
        await transaction.rollback()
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        await connection.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == exits.FAILURE, (tmp_path / "purge.log").read_text()
    report = json.loads(stdout)
    assert (report["interrupted"], report["stop_reason"]) == (True, "signal")
    assert (report["conversations"], report["messages"], report["batches"]) == (110, 1100, 11)

    # Whole conversations only: every one left has all its messages, and the
    # ones deleted are the first in id order.
    left = await messages_by_conversation(database_url)
    assert set(left) == set(ids[110:]) | set(kept)
    assert set(left.values()) == {10}

    rerun = await asyncio.to_thread(
        subprocess.run,
        _purge_command("--json"),
        env=worker_environment(maintenance_settings(purge_settings)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rerun.returncode == exits.OK, rerun.stderr
    finished = json.loads(rerun.stdout)
    assert (finished["conversations"], finished["messages"]) == (290, 2900)
    assert finished["interrupted"] is False
    assert await messages_by_conversation(database_url) == {i: 10 for i in kept}


async def _backend_gone(url: URL, pid: int) -> bool:
    rows = await fetch_all(url, "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = $1", pid)
    return int(rows[0]["n"]) == 0


async def test_a_killed_purge_loses_only_its_batch_and_a_failed_database_still_gives_the_report(
    purge_settings: Settings, database_url: URL, services_admin_url: URL, tmp_path: Path
) -> None:
    ids, kept = await _four_hundred_archived_and_five_active(database_url)
    environment = worker_environment(maintenance_settings(purge_settings))

    # 1. SIGKILL while the 11th batch of 10 waits for our lock on one of its rows.
    connection, transaction = await _lock_row(database_url, ids[105])
    killed = await _start_purge_in_batches_of_10(
        environment, tmp_path / "killed.log", stdout=subprocess.DEVNULL
    )
    try:
        await wait_for(lambda: _someone_waits_for_a_lock(database_url), what="the purge blocked")
        [backend] = [row["pid"] for row in await _lock_waiters(database_url)]
        killed.kill()
        await killed.wait()
    finally:
        await transaction.rollback()
        await connection.close()
    # Its backend runs the DELETE once our lock is gone, but never gets a COMMIT.
    await wait_for(lambda: _backend_gone(database_url, backend), what="the killed backend gone")
    left = await messages_by_conversation(database_url)
    assert set(left) == set(ids[100:]) | set(kept)  # exactly ten batches
    assert set(left.values()) == {10}  # each with all its messages

    # 2. The database fails under the 11th batch of the next run (its backend
    # terminated, as in a failover, and no new connection accepted): the run
    # stops with its report, which counts the ten batches it committed.
    connection, transaction = await _lock_row(database_url, ids[205])
    admin = await asyncpg.connect(services_admin_url.render_as_string(hide_password=False))
    database = f'"{database_url.database}"'
    failed = await _start_purge_in_batches_of_10(
        environment, tmp_path / "failed.log", stdout=subprocess.PIPE
    )
    try:
        await wait_for(lambda: _someone_waits_for_a_lock(database_url), what="the purge blocked")
        [backend] = [row["pid"] for row in await _lock_waiters(database_url)]
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
        await admin.execute("SELECT pg_terminate_backend($1)", backend)
        stdout, _ = await asyncio.wait_for(failed.communicate(), timeout=60)
    finally:
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
        await admin.close()
        await transaction.rollback()
        await connection.close()
        if failed.returncode is None:
            failed.kill()
            await failed.wait()
    assert failed.returncode == exits.FAILURE, (tmp_path / "failed.log").read_text()
    report = json.loads(stdout)
    assert (report["interrupted"], report["stop_reason"]) == (True, "error")
    assert (report["conversations"], report["messages"], report["batches"]) == (100, 1000, 10)
    # Terminated: tried again on a new connection, which the database refused.
    assert report["retries"] == 1
    assert report["last_error"].startswith("55000: "), report["last_error"]
    assert "not currently accepting connections" in report["last_error"]
    left = await messages_by_conversation(database_url)
    assert set(left) == set(ids[200:]) | set(kept)
    assert set(left.values()) == {10}

    # 3. A rerun finishes.
    rerun = await asyncio.to_thread(
        subprocess.run,
        _purge_command("--json"),
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rerun.returncode == exits.OK, rerun.stderr
    finished = json.loads(rerun.stdout)
    assert (finished["conversations"], finished["messages"]) == (200, 2000)
    assert await messages_by_conversation(database_url) == {i: 10 for i in kept}


# --- the command line ------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["archive", "--idle-for", "90x"], "chatstore: archive --idle-for: not a duration: '90x'"),
        (
            ["purge", "--archived-before", "2026-01-01"],
            "chatstore: CHATSTORE_MAINTENANCE_DATABASE_URL: not set",
        ),
        (
            ["purge", "--archived-before", "2999-01-01"],
            "chatstore: purge --archived-before: 2999-01-01T00:00:00+00:00 is in the future: "
            "it would take conversations archived from now until then too",
        ),
    ],
)
def test_a_bad_argument_or_a_missing_maintenance_url_is_one_line_and_exit_2(
    arguments: list[str], expected: str, tmp_path: Path
) -> None:
    # Host "db" does not resolve here: a command that connected first would say so.
    environment = worker_environment(Settings(database_url="postgresql://u:secret@db/x"))
    result = subprocess.run(
        [sys.executable, "-m", "worker", *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == exits.USAGE
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(expected), result.stderr
    assert "secret" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("90", "not a duration: '90'"),
        ("-5d", "not a duration: '-5d'"),
        ("1.5d", "not a duration: '1.5d'"),
        ("0s", "must be above 0, not 0s"),
        ("36501d", "must be at most 36500d, not 36501d"),
        ("9" * 5000 + "d", "not a duration"),
    ],
)
def test_a_bad_duration_is_refused_with_the_reason(value: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="^" + re.escape(message)):
        duration(value)


def test_durations_read_as_their_units() -> None:
    assert [duration(v) for v in ("90d", "12h", "30m", "45s", "1_000s")] == [
        timedelta(days=90),
        timedelta(hours=12),
        timedelta(minutes=30),
        timedelta(seconds=45),
        timedelta(seconds=1000),
    ]


def test_a_cutoff_later_than_now_is_refused_and_one_before_is_not() -> None:
    a_second_ago = datetime.now(UTC) - timedelta(seconds=1)
    assert past_instant(a_second_ago.isoformat()) == a_second_ago
    in_a_minute = datetime.now(UTC) + timedelta(minutes=1)
    with pytest.raises(argparse.ArgumentTypeError, match="is in the future"):
        past_instant(in_a_minute.isoformat())


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_progress_line_without_a_total_shows_the_count_and_no_bar() -> None:
    unknown, known = _Terminal(), _Terminal()
    for stream, total in ((unknown, None), (known, 40)):
        progress = Progress(total, "purging", stream)
        progress.advance(10)
        progress.done()
    assert unknown.getvalue().startswith("\rpurging 10 ")
    assert "[" not in unknown.getvalue()
    assert known.getvalue().startswith("\rpurging [#######.......................] 10/40  25% ")


def test_a_date_is_midnight_utc_and_a_naive_time_is_utc() -> None:
    assert instant("2026-09-01") == datetime(2026, 9, 1, tzinfo=UTC)
    assert instant("2026-09-01T12:00") == datetime(2026, 9, 1, 12, tzinfo=UTC)
    offset = instant("2026-09-01T12:00:00+02:00")
    assert offset == datetime(2026, 9, 1, 10, tzinfo=UTC)
    for bad in ("last tuesday", "2026-02-30", "2026-09-01T25:00", ""):
        with pytest.raises(argparse.ArgumentTypeError, match=r"^not an ISO date"):
            instant(bad)


def test_the_finished_progress_line_is_drawn_once() -> None:
    stream = _Terminal()
    progress = Progress(40, "purging", stream)
    progress.advance(40)  # finished: drawn at once
    progress.done()
    assert stream.getvalue().count("\r") == 1
    assert "40/40 100%" in stream.getvalue()
    assert stream.getvalue().endswith("\n")
