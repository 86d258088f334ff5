"""A realistic chat stream, pure: users, conversations, turns, archives, mistakes."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from contracts import AnyEvent, conversation_archived, message_created

QUESTIONS = (
    "How do I reset my password?",
    "Can you summarise this article for me?",
    "What is the capital of Australia?",
    "Write a haiku about autumn rain.",
    "Why does my Python script say 'ModuleNotFoundError'?",
    "Translate 'good morning' into Portuguese.",
    "What should I cook with leeks and potatoes?",
    "Explain quorum queues like I am five.",
)
ANSWERS = (
    "Sure. Open Settings, choose Security, then 'Reset password'.",
    "Here is a three-sentence summary of the main points.",
    "Canberra. Many people guess Sydney, which is the largest city.",
    "Grey rain on the roof / the maple lets go slowly / one leaf, then the next.",
    "The package is not installed in the environment your script runs in.",
    "'Bom dia'.",
    "A leek and potato soup: sweat the leeks, add potatoes and stock, simmer, blend.",
    "Several rabbits keep the same list of carrots, so losing one rabbit loses no carrot.",
)


@dataclass(frozen=True)
class DemoPlan:
    users: list[str]
    events: list[AnyEvent]
    invalid: list[bytes]  # bodies a buggy publisher would send
    conversation_ids: list[uuid.UUID]
    archived: int


def _turns(
    rng: random.Random, conversation_id: uuid.UUID, user: str, start: datetime, count: int
) -> Iterator[AnyEvent]:
    at = start
    topic = 0
    for turn in range(count):
        at += timedelta(seconds=rng.randrange(5, 120))
        asking = turn % 2 == 0
        if asking:
            topic = rng.randrange(len(QUESTIONS))
        yield message_created(
            conversation_id=conversation_id,
            user_id=user,
            role="user" if asking else "assistant",
            content=(QUESTIONS if asking else ANSWERS)[topic],
            metadata=None if asking else {"model": "demo-1", "tokens": rng.randrange(20, 400)},
            created_at=at,
        )


def plan(*, messages: int, conversations: int, users: int, seed: int = 7) -> DemoPlan:
    """``messages`` messages spread over ``conversations``, a few archived, a few broken."""
    rng = random.Random(seed)
    user_ids = [f"demo-user-{n}" for n in range(users)]
    conversation_ids = [
        uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(conversations)
    ]
    start = datetime.now(UTC) - timedelta(days=1)
    base, extra = divmod(messages, conversations)
    events: list[AnyEvent] = []
    for number, conversation_id in enumerate(conversation_ids):
        owner = user_ids[number % users]
        turns = base + (1 if number < extra else 0)
        events += _turns(rng, conversation_id, owner, start, turns)
    rng.shuffle(events)  # many conversations at once, as a runtime sends them
    archived = conversation_ids[: max(1, conversations // 20)]
    for number, conversation_id in enumerate(archived):
        events.append(
            conversation_archived(conversation_id=conversation_id, user_id=user_ids[number % users])
        )
    invalid = [
        b"{'this': 'is not JSON'}",
        json.dumps(
            {
                "event_id": str(uuid.uuid4()),
                "type": "message.deleted",
                "version": 1,
                "occurred_at": start.isoformat(),
                "data": {},
            }
        ).encode(),
        message_created(
            conversation_id=uuid.uuid4(),
            user_id="someone-we-never-met",
            role="user",
            content="hello?",
        )
        .model_dump_json()
        .encode(),
        message_created(
            conversation_id=conversation_ids[0],
            user_id=user_ids[1 % users],
            role="user",
            content="writing into someone else's conversation",
        )
        .model_dump_json()
        .encode(),
    ]
    return DemoPlan(user_ids, events, invalid, conversation_ids, len(archived))
