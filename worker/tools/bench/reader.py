"""One reader process of scenario (e): ``python -m worker.tools.bench.reader``.

Talks to the bench over its pipes, so no URL ever shows in a process list:
it reads one JSON line of instructions, prepares (connections open, the
users and their conversations loaded), prints ``ready``, waits for ``go``,
then runs its readers for the given seconds and prints one JSON line of
latencies in seconds.

Each reader loops without pause (a closed loop): the recent-50 conversations
of a random user, then the last-20 history of one of that user's
conversations, both through :class:`contracts.history.Repository`, as an
application would call them.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import defaultdict
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts.history import Repository


async def _reader(
    repository: Repository,
    owned: dict[str, list[UUID]],
    rng: random.Random,
    deadline: float,
    samples: dict[str, list[float]],
) -> None:
    users = list(owned)
    while time.perf_counter() < deadline:
        user = rng.choice(users)
        started = time.perf_counter()
        await repository.conversations(user, limit=50)
        middle = time.perf_counter()
        await repository.history(user, rng.choice(owned[user]), limit=20)
        ended = time.perf_counter()
        samples["conversations"].append(middle - started)
        samples["history"].append(ended - middle)


async def _open_connections(engine: AsyncEngine, count: int) -> None:
    async def hold(ready: asyncio.Barrier) -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            await ready.wait()  # all at once, so the pool really opens ``count``

    barrier = asyncio.Barrier(count)
    await asyncio.gather(*(hold(barrier) for _ in range(count)))


async def main(config: dict[str, Any]) -> dict[str, list[float]]:
    readers = int(config["readers"])
    engine = create_async_engine(config["url"], pool_size=readers, max_overflow=0)
    try:
        owned: dict[str, list[UUID]] = defaultdict(list)
        async with engine.connect() as connection:
            for user_id, conversation_id in await connection.execute(
                text("SELECT user_id, id FROM conversations")
            ):
                owned[user_id].append(conversation_id)
        await _open_connections(engine, readers)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # "go"
        repository = Repository(engine)
        samples: dict[str, list[float]] = {"conversations": [], "history": []}
        deadline = time.perf_counter() + float(config["seconds"])
        seed = int(config["seed"])
        await asyncio.gather(
            *(
                _reader(repository, owned, random.Random(seed * 1000 + n), deadline, samples)
                for n in range(readers)
            )
        )
        return samples
    finally:
        await engine.dispose()


if __name__ == "__main__":
    instructions = json.loads(sys.stdin.readline())
    print(json.dumps(asyncio.run(main(instructions))), flush=True)
