"""The demo: a stream through the real worker, and a summary read back."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import URL

from contracts import ConversationArchived, MessageCreated
from tests.harness import declare_topology, running_worker, worker_settings
from worker.tools.demo.run import run_demo
from worker.tools.demo.stream import plan


def test_the_plan_has_the_asked_numbers_of_messages_conversations_and_mistakes() -> None:
    demo = plan(messages=1003, conversations=100, users=7, seed=1)
    messages = [e for e in demo.events if isinstance(e, MessageCreated)]
    archives = [e for e in demo.events if isinstance(e, ConversationArchived)]
    assert len(messages) == 1003
    assert {m.data.conversation_id for m in messages} == set(demo.conversation_ids)
    assert len(archives) == demo.archived == 5
    assert len(demo.invalid) == 4
    owners = {m.data.conversation_id: m.data.user_id for m in messages}
    assert all(owners[a.data.conversation_id] == a.data.user_id for a in archives)


async def test_the_demo_stores_its_stream_and_summarises_it(
    database_url: URL, amqp_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await declare_topology(amqp_url)
    settings = worker_settings(database_url, amqp_url)
    async with running_worker(settings):
        exit_code = await run_demo(
            settings, messages=600, conversations=40, users=5, rate_per_s=5000
        )
    assert exit_code == 0
    out = capsys.readouterr().out
    assert "stored 600 messages in 40 conversations (2 archived)" in out
    assert "malformed 1" in out
    assert "unknown_user 1" in out
    assert "unknown_type 1" in out
    assert "ownership_mismatch 1" in out
    assert "the last messages of conversation" in out


async def test_the_demo_says_what_to_start_when_no_worker_consumes(
    database_url: URL,
    amqp_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("worker.tools.demo.run.WORKER_WAIT_S", 1)
    settings = worker_settings(database_url, amqp_url)
    assert await run_demo(settings, messages=10, conversations=2, users=1, rate_per_s=100) == 1
    assert "start `chatstore worker`" in capsys.readouterr().out
