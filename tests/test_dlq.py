"""Operating the dead-letter queue: inspect leaves it as it is; replay moves letters
back without losing any, once, and guards against loops."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aio_pika
from sqlalchemy.engine import URL

from tests.events import body, message_created
from tests.harness import (
    add_users,
    count,
    publish,
    queue_depth,
    queue_has,
    running_worker,
    table_has,
    take_all,
    take_dead_letters,
    wait_for,
    worker_environment,
)
from worker import topology
from worker.settings import Settings
from worker.tools.dlq.inspect import inspect
from worker.tools.dlq.replay import ReplayFilter, replay


async def dead_letter(settings: Settings, amqp_url: str, events: list[bytes]) -> None:
    """Let a worker dead-letter ``events``."""
    before = await queue_depth(amqp_url, topology.DLQ)
    async with running_worker(settings):
        await publish(amqp_url, events)
        await wait_for(queue_has(amqp_url, topology.DLQ, before + len(events)))


def carols(count_: int) -> list[bytes]:
    return [body(message_created(user_id="carol")) for _ in range(count_)]


async def test_inspect_counts_by_reason_shows_samples_and_leaves_the_queue_as_it_was(
    settings: Settings, amqp_url: str
) -> None:
    await dead_letter(settings, amqp_url, [*carols(3), b"not json", b"[1]"])
    before = sorted(letter.body for letter in await _peek_all(amqp_url))
    # The broker returns the peeked letters when the connection closes, a
    # moment later: wait until all are ready again.
    await wait_for(queue_has(amqp_url, topology.DLQ, 5))

    summary = await inspect(amqp_url, samples_per_reason=1)

    assert summary.total == 5
    assert dict(summary.by_reason) == {"unknown_user": 3, "malformed": 2}
    assert summary.oldest is not None
    assert summary.newest is not None
    assert summary.oldest <= summary.newest
    assert {sample.reason for sample in summary.samples} == {"unknown_user", "malformed"}
    carol = next(sample for sample in summary.samples if sample.reason == "unknown_user")
    assert carol.event_type == "message.created"
    assert carol.event_id is not None
    assert "carol" in carol.detail
    after = sorted(letter.body for letter in await take_dead_letters(amqp_url))
    assert after == before


async def _peek_all(amqp_url: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every letter, returned to the queue when the connection closes."""
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.DLQ, passive=True)
        messages = []
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            messages.append(message)
        return messages


async def test_inspect_reports_broker_dead_letters_as_delivery_limit(amqp_url: str) -> None:
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        await topology.declare(channel, delivery_limit=1)
        await publish(amqp_url, carols(1))
        queue = await channel.get_queue(topology.QUEUE)
        for _ in range(2):
            await (await queue.get(timeout=5)).nack(requeue=True)
    await wait_for(queue_has(amqp_url, topology.DLQ, 1))
    summary = await inspect(amqp_url)
    assert dict(summary.by_reason) == {"delivery_limit": 1}
    assert "chatstore.events" in summary.samples[0].detail


async def test_replaying_unknown_user_letters_after_creating_the_user_commits_each_once(
    settings: Settings, database_url: URL, amqp_url: str
) -> None:
    await dead_letter(settings, amqp_url, [*carols(20), b"garbage"])
    await add_users(database_url, "carol")

    async with running_worker(settings):
        report = await replay(amqp_url, selection=ReplayFilter(reason="unknown_user"))
        assert report.replayed == 20
        assert report.filtered_out == 1
        await wait_for(table_has(database_url, "messages", 20))

        again = await replay(amqp_url, selection=ReplayFilter(reason="unknown_user"))
        assert again.replayed == 0  # a second replay is a no-op
        await wait_for(queue_has(amqp_url, topology.QUEUE, 0))

    assert await count(database_url, "messages") == 20
    # Letters a tool left are returned when its channel closes, a moment later.
    await wait_for(queue_has(amqp_url, topology.DLQ, 1))
    (left,) = await take_dead_letters(amqp_url)
    assert left.body == b"garbage"


async def test_a_dry_run_changes_nothing(settings: Settings, amqp_url: str) -> None:
    await dead_letter(settings, amqp_url, carols(5))
    report = await replay(amqp_url, selection=ReplayFilter(), dry_run=True)
    assert report.would_replay == 5
    assert report.replayed == 0
    assert await queue_depth(amqp_url, topology.QUEUE) == 0
    await wait_for(queue_has(amqp_url, topology.DLQ, 5))
    letters = await take_dead_letters(amqp_url)
    assert len(letters) == 5
    assert all(letter.reason == "unknown_user" for letter in letters)


async def test_replay_filters_by_type_and_stops_at_the_limit(
    settings: Settings, amqp_url: str
) -> None:
    await dead_letter(settings, amqp_url, carols(6))
    wrong_type = await replay(amqp_url, selection=ReplayFilter(event_type="conversation.archived"))
    assert wrong_type.replayed == 0
    await wait_for(queue_has(amqp_url, topology.DLQ, 6))
    limited = await replay(amqp_url, selection=ReplayFilter(), limit=4)
    assert limited.replayed == 4
    assert await queue_depth(amqp_url, topology.QUEUE) == 4
    await wait_for(queue_has(amqp_url, topology.DLQ, 2))


async def test_replayed_letters_lose_their_death_headers_and_count_replays(
    settings: Settings, amqp_url: str
) -> None:
    await dead_letter(settings, amqp_url, carols(1))
    await replay(amqp_url, selection=ReplayFilter())
    (replayed,) = await take_all(amqp_url, topology.QUEUE)
    assert replayed.headers["x-chatstore-replays"] == 1
    leftovers = [key for key in replayed.headers if key.startswith("x-chatstore-")]
    assert leftovers == ["x-chatstore-replays"]


async def test_the_loop_guard_leaves_letters_replayed_too_often(
    settings: Settings, amqp_url: str
) -> None:
    await dead_letter(settings, amqp_url, carols(1))
    for round_ in range(2):  # replayed, dead-lettered again, replayed...
        report = await replay(amqp_url, selection=ReplayFilter(), max_replays=2)
        assert report.replayed == 1, round_
        async with running_worker(settings):  # the worker refuses it again
            await wait_for(queue_has(amqp_url, topology.QUEUE, 0))
            await wait_for(queue_has(amqp_url, topology.DLQ, 1))
    guarded = await replay(amqp_url, selection=ReplayFilter(), max_replays=2)
    assert guarded.replayed == 0
    assert len(guarded.over_loop_guard) == 1
    await wait_for(queue_has(amqp_url, topology.DLQ, 1))


async def test_a_replay_killed_midway_loses_nothing(
    settings: Settings, amqp_url: str, tmp_path: Path
) -> None:
    letters = carols(300)
    await dead_letter(settings, amqp_url, letters)
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "worker", "dlq", "replay", "--rate", "200"],
        env=worker_environment(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: _some_replayed(amqp_url), within_s=20, what="replay under way")
        process.send_signal(signal.SIGKILL)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    replayed = {letter.body for letter in await take_all(amqp_url, topology.QUEUE)}
    # The killed replay's unacknowledged letter returns when the broker notices.
    await wait_for(lambda: _all_ready(amqp_url, len(letters) - len(replayed)))
    remaining = {letter.body for letter in await take_dead_letters(amqp_url)}
    assert 0 < len(replayed) < len(letters)
    assert replayed | remaining == set(letters)  # every letter is somewhere


async def _all_ready(amqp_url: str, at_least: int) -> bool:
    return await queue_depth(amqp_url, topology.DLQ) >= at_least


async def _some_replayed(amqp_url: str) -> bool:
    return await queue_depth(amqp_url, topology.QUEUE) >= 20


async def test_the_cli_prints_json_with_total_and_by_reason(
    settings: Settings, amqp_url: str
) -> None:
    await dead_letter(settings, amqp_url, [b"x", *carols(2)])
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "worker", "dlq", "inspect", "--json"],
        env=worker_environment(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["total"] == 3
    assert document["by_reason"] == {"unknown_user": 2, "malformed": 1}
    assert await queue_depth(amqp_url, topology.DLQ) == 3
