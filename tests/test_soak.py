"""Soak: three worker processes, SIGKILLed again and again, against an exact ledger.

Everything published is known in advance: which messages must be stored, what
each conversation must look like, and which events must be dead-lettered with
which reason. At the end Postgres and the DLQ are compared with that ledger.

CHATSTORE_SOAK_EVENTS (default 10,000) and CHATSTORE_SOAK_KILL_EVERY_S (1.0)
size the run; CHATSTORE_SOAK_REPORT names a JSON file for the report.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from tests.db import fetch_all
from tests.events import body, conversation_archived, message_created
from tests.harness import (
    WorkerProcess,
    add_users,
    count,
    declare_topology,
    publish,
    queue_depth,
    take_dead_letters,
    wait_for,
    worker_settings,
)
from worker import topology

EVENTS = int(os.environ.get("CHATSTORE_SOAK_EVENTS", "10000"))
KILL_EVERY_S = float(os.environ.get("CHATSTORE_SOAK_KILL_EVERY_S", "1.0"))
PUBLISH_CHUNKS = 20  # published with pauses, so that kills land mid-stream
PUBLISH_PAUSE_S = 0.25
WORKERS = 3
SOAK_DELIVERY_LIMIT = 1000
USERS = [f"user-{n}" for n in range(10)]
START = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass
class Ledger:
    """What was published, and so what must be in Postgres and the DLQ."""

    wire: list[bytes] = field(default_factory=list)
    messages: dict[str, str] = field(default_factory=dict)  # message id -> content
    conversations: dict[str, dict[str, Any]] = field(default_factory=dict)
    dead: dict[bytes, str] = field(default_factory=dict)  # body -> reason
    published: Counter[str] = field(default_factory=Counter)

    def send(self, raw: bytes, kind: str) -> None:
        self.wire.append(raw)
        self.published[kind] += 1

    def touch(self, conversation_id: str, user: str, at: datetime, archived: bool) -> None:
        state = self.conversations.setdefault(
            conversation_id, {"user_id": user, "first": at, "last": at, "archived": False}
        )
        state["first"] = min(state["first"], at)
        state["last"] = max(state["last"], at)
        state["archived"] = state["archived"] or archived


def build_ledger(total: int, rng: random.Random) -> Ledger:
    ledger = Ledger()
    owners = {str(uuid.uuid4()): rng.choice(USERS) for _ in range(max(1, total // 25))}
    conversation_ids = list(owners)
    sent: list[bytes] = []
    while len(ledger.wire) < total:
        roll = rng.random()
        conversation_id = rng.choice(conversation_ids)
        user = owners[conversation_id]
        at = START + timedelta(seconds=rng.randrange(10_000_000))
        if roll < 0.80:
            event = message_created(
                conversation_id=conversation_id,
                user_id=user,
                role=rng.choice(["user", "assistant"]),
                content=f"message {len(ledger.wire)} " + "x" * rng.randrange(200),
                metadata={"n": len(ledger.wire), "tags": ["soak"]} if rng.random() < 0.5 else None,
                created_at=at.isoformat(),
            )
            ledger.messages[event["data"]["message_id"]] = event["data"]["content"]
            ledger.touch(conversation_id, user, at, archived=False)
            raw = body(event)
            sent.append(raw)
            ledger.send(raw, "message")
        elif roll < 0.83:
            archive = conversation_archived(
                conversation_id=conversation_id, user_id=user, archived_at=at.isoformat()
            )
            ledger.touch(conversation_id, user, at, archived=True)
            ledger.send(body(archive), "archive")
        elif roll < 0.93 and sent:
            ledger.send(rng.choice(sent), "duplicate")  # the same bytes again
        else:
            raw, reason = rng.choice(
                [
                    (b"not json " + uuid.uuid4().bytes.hex().encode(), "malformed"),
                    (body(message_created(user_id=user, content="")), "invalid"),
                    (body(message_created(user_id="nobody-" + uuid.uuid4().hex)), "unknown_user"),
                    (body(message_created(user_id=user) | {"type": "x.y"}), "unknown_type"),
                    (body(message_created(user_id=user) | {"version": 9}), "unsupported_version"),
                ]
            )
            ledger.dead[raw] = reason
            ledger.send(raw, f"dead:{reason}")
    return ledger


async def check_postgres(database_url: URL, ledger: Ledger) -> dict[str, int]:
    rows = await fetch_all(database_url, "SELECT id::text AS id, content FROM messages")
    stored = {row["id"]: row["content"] for row in rows}
    lost = set(ledger.messages) - set(stored)
    extra = set(stored) - set(ledger.messages)
    wrong = [m for m in set(stored) & set(ledger.messages) if stored[m] != ledger.messages[m]]
    assert not lost, f"{len(lost)} messages lost"
    assert not extra, f"{len(extra)} messages that were never published"
    assert not wrong, f"{len(wrong)} messages with other content"

    conversations = {
        str(row["id"]): row for row in await fetch_all(database_url, "SELECT * FROM conversations")
    }
    assert set(conversations) == set(ledger.conversations)
    for conversation_id, expected in ledger.conversations.items():
        row = conversations[conversation_id]
        assert row["user_id"] == expected["user_id"]
        assert row["created_at"] == expected["first"]
        assert row["updated_at"] == expected["last"]
        assert row["status"] == ("archived" if expected["archived"] else "active")
    return {"rows": len(stored), "lost": len(lost), "conversations": len(conversations)}


@pytest.mark.timeout(600)
async def test_three_workers_sigkilled_repeatedly_store_exactly_what_was_published(
    database_url: URL, amqp_url: str, tmp_path: Path
) -> None:
    ledger = build_ledger(EVENTS, random.Random(20261122))
    await add_users(database_url, *USERS)
    # Each SIGKILL hands the victim's unacknowledged deliveries back, and every
    # redelivery counts towards the queue's delivery limit: with kills a second
    # on a slow machine, the default of 20 dead-letters valid events as
    # delivery_limit. The limit guards against poison; here it must not bite.
    await declare_topology(amqp_url, delivery_limit=SOAK_DELIVERY_LIMIT)
    settings = worker_settings(
        database_url, amqp_url, drain_timeout_s=15.0, delivery_limit=SOAK_DELIVERY_LIMIT
    )
    workers = [
        WorkerProcess(settings, tmp_path / f"worker-{n}.log").start() for n in range(WORKERS)
    ]
    started = time.monotonic()
    kills = 0
    done = asyncio.Event()

    async def killer() -> None:
        nonlocal kills
        while not done.is_set():
            await asyncio.sleep(KILL_EVERY_S)
            if done.is_set():
                return
            victim = workers[kills % WORKERS]
            victim.send(signal.SIGKILL)
            await victim.wait()
            victim.start()
            kills += 1

    async def everything_arrived() -> bool:
        return (
            await count(database_url, "messages") == len(ledger.messages)
            and await queue_depth(amqp_url, topology.DLQ) >= len(ledger.dead)
            and await queue_depth(amqp_url, topology.QUEUE) == 0
        )

    async def three_kills() -> bool:
        return kills >= 3

    killing = asyncio.create_task(killer())
    try:
        chunk = -(-len(ledger.wire) // PUBLISH_CHUNKS)
        for start in range(0, len(ledger.wire), chunk):
            await publish(amqp_url, ledger.wire[start : start + chunk])
            await asyncio.sleep(PUBLISH_PAUSE_S)
        published_s = time.monotonic() - started
        kills_while_publishing = kills
        # Keep killing while the backlog drains, for at least three kills.
        await wait_for(three_kills, within_s=60, what="three kills")
        await wait_for(everything_arrived, within_s=240, what="every event handled")
        done.set()
        await killing
        for worker in workers:
            # A worker restarted a moment ago may still be importing, before
            # its signal handlers exist: SIGTERM would just kill it.
            await worker.wait_consuming()
            worker.send(signal.SIGTERM)
        exit_codes = [await worker.wait(within_s=30) for worker in workers]
    finally:
        done.set()
        killing.cancel()
        for worker in workers:
            worker.kill()
    elapsed_s = time.monotonic() - started
    assert exit_codes == [0] * WORKERS, [w.log()[-2000:] for w in workers]
    assert await queue_depth(amqp_url, topology.QUEUE) == 0  # nothing held back unacked

    postgres = await check_postgres(database_url, ledger)
    letters = await take_dead_letters(amqp_url)
    # Dead letters are at-least-once: a worker killed after publishing them and
    # before acking publishes them again. Each refused event must be there with
    # its reason; copies are counted, not hidden.
    reasons_by_body: dict[bytes, set[str]] = {}
    for letter in letters:
        reasons_by_body.setdefault(letter.body, set()).add(letter.reason)
    assert set(reasons_by_body) == set(ledger.dead)
    for raw, reason in ledger.dead.items():
        assert reasons_by_body[raw] == {reason}

    report = {
        "events_published": len(ledger.wire),
        "published_by_kind": dict(ledger.published),
        "workers": WORKERS,
        "sigkills": kills,
        "sigkills_while_publishing": kills_while_publishing,
        "rows_committed": postgres["rows"],
        "rows_expected": len(ledger.messages),
        "rows_lost": postgres["lost"],
        "rows_duplicated": 0,  # the primary key and the exact set comparison above
        "conversations": postgres["conversations"],
        "dead_letters_by_reason": dict(Counter(letter.reason for letter in letters)),
        "dead_letter_copies_beyond_one": len(letters) - len(ledger.dead),
        "publish_s": round(published_s, 2),
        "elapsed_s": round(elapsed_s, 2),
    }
    print("soak report:", json.dumps(report, indent=2))
    if path := os.environ.get("CHATSTORE_SOAK_REPORT"):
        await asyncio.to_thread(Path(path).write_text, json.dumps(report, indent=2) + "\n")
