"""One reader process of scenarios (e) and (g): ``python -m worker.tools.bench.reader``.

Instructions (one JSON line, see ``worker.tools.bench.pipes``): ``url``,
``readers``, ``seconds``, ``seed`` and ``modes``. For each mode in turn it
prepares (connections open, the users and their conversations loaded), says
``ready``, waits for ``go``, runs its readers for the given seconds and
prints one JSON line: the latencies in seconds of each query, the errors,
and the SQL texts it ran. One process for all modes spares a start (a
second of imports) per mode.

Each reader loops without pause (a closed loop): the recent-50 conversations
of a random user, then the last-20 history of one of that user's
conversations. The modes:

- ``repository``: through :class:`contracts.history.Repository`, as an
  application calls it, on ``reader_engine`` with its defaults and a pool of
  ``readers`` connections;
- ``asyncpg``: the floor of (e): the same SQL, taken from
  ``contracts.history.queries`` as the repository compiles it, run straight
  on one asyncpg connection per reader with both statements prepared once;
- ``pooled``: (g): the repository on ``reader_engine(transaction_pooling=True)``,
  as an application behind PgBouncer in transaction mode runs it.

A failed call is counted, its message kept (the first few), and the loop
goes on; an error is a result to report, not a reason to stop measuring.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Final
from uuid import UUID

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.history import Repository, reader_engine
from contracts.history.queries import compiled, conversations_query, history_query
from worker.tools.bench.pipes import read_instructions, say
from worker.unavailable import describe

CONVERSATIONS_PAGE: Final = 50
HISTORY_PAGE: Final = 20
ERROR_SAMPLES: Final = 5

Listing = Callable[[str], Awaitable[object]]
History = Callable[[str, UUID], Awaitable[object]]


class _RecordingRepository(Repository):
    """The repository, noting the SQL texts it sends (a set add per call: nanoseconds),
    so the bench can check that its floor ran the very same statements."""

    sent: set[str]

    async def _run(self, sql: str, arguments: list[Any]) -> list[asyncpg.Record]:
        self.sent.add(sql)
        return await super()._run(sql, arguments)


class _Samples:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {"conversations": [], "history": []}
        self.errors = 0
        self.error_samples: list[str] = []

    def failed(self, error: Exception) -> None:
        self.errors += 1
        shown = describe(error)
        if len(self.error_samples) < ERROR_SAMPLES and shown not in self.error_samples:
            self.error_samples.append(shown)


async def _reader(
    listing: Listing,
    history: History,
    owned: dict[str, list[UUID]],
    rng: random.Random,
    deadline: float,
    samples: _Samples,
) -> None:
    users = list(owned)
    while time.perf_counter() < deadline:
        user = rng.choice(users)
        try:
            started = time.perf_counter()
            await listing(user)
            middle = time.perf_counter()
            samples.latencies["conversations"].append(middle - started)
            await history(user, rng.choice(owned[user]))
            samples.latencies["history"].append(time.perf_counter() - middle)
        except Exception as error:  # counted and reported: see the module
            samples.failed(error)
            await asyncio.sleep(0.01)  # a broken connection must not spin the loop


async def _open_connections(engine: AsyncEngine, count: int) -> None:
    # In autocommit: an open transaction would keep its PgBouncer server
    # connection, and with more readers than the pool the barrier never fills.
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def hold(ready: asyncio.Barrier) -> None:
        async with autocommit.connect() as connection:
            await connection.execute(text("SELECT 1"))
            await ready.wait()  # all at once, so the pool really opens ``count``

    barrier = asyncio.Barrier(count)
    await asyncio.gather(*(hold(barrier) for _ in range(count)))


async def _owned(engine: AsyncEngine) -> dict[str, list[UUID]]:
    owned: dict[str, list[UUID]] = defaultdict(list)
    async with engine.connect() as connection:
        for user_id, conversation_id in await connection.execute(
            text("SELECT user_id, id FROM conversations")
        ):
            owned[user_id].append(conversation_id)
    return owned


def floor_statements(engine: AsyncEngine) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The repository's two reads as it compiles them for ``engine``: (SQL, parameter names)."""
    return {
        "conversations": compiled(
            conversations_query(False, "start"), CONVERSATIONS_PAGE + 1, engine.dialect
        ),
        "history": compiled(history_query("start"), HISTORY_PAGE + 1, engine.dialect),
    }


async def main(config: dict[str, Any]) -> None:
    """Each mode of ``config["modes"]`` in turn, one JSON line of results each."""
    owned: dict[str, list[UUID]] | None = None
    for mode in config["modes"]:
        result, owned = await _measure(config, str(mode), owned)
        print(json.dumps(result), flush=True)


async def _measure(
    config: dict[str, Any], mode: str, owned: dict[str, list[UUID]] | None
) -> tuple[dict[str, Any], dict[str, list[UUID]]]:
    """One run of ``mode``: connections opened, ``ready``, ``go``, then the readers.
    Its connections are closed before the next mode opens its own."""
    readers = int(config["readers"])
    url = make_url(config["url"])
    # The engine an application builds, with the defaults it gets.
    pooling = mode == "pooled"
    engine = reader_engine(url, transaction_pooling=pooling, pool_size=readers, max_overflow=0)
    connections: list[asyncpg.Connection] = []
    try:
        owned = owned or await _owned(engine)
        sent: set[str]
        if mode == "asyncpg":
            statements = floor_statements(engine)
            dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
            connections = list(
                await asyncio.gather(*(asyncpg.connect(dsn) for _ in range(readers)))
            )
            calls = [await _prepared(c, statements) for c in connections]
            sent = {sql for sql, _ in statements.values()}
        else:
            await _open_connections(engine, readers)
            repository = _RecordingRepository(engine)
            repository.sent = sent = set()
            calls = [
                (
                    lambda user: repository.conversations(user, limit=CONVERSATIONS_PAGE),
                    lambda user, cid: repository.history(user, cid, limit=HISTORY_PAGE),
                )
            ] * readers
        say("ready")
        await asyncio.to_thread(sys.stdin.readline)  # "go"
        samples = _Samples()
        deadline = time.perf_counter() + float(config["seconds"])
        seed = int(config["seed"])
        await asyncio.gather(
            *(
                _reader(listing, history, owned, random.Random(seed * 1000 + n), deadline, samples)
                for n, (listing, history) in enumerate(calls)
            )
        )
        result = samples.latencies | {
            "errors": samples.errors,
            "error_samples": samples.error_samples,
            "sql": sorted(sent),
        }
        return result, owned
    finally:
        for connection in connections:
            await connection.close()
        await engine.dispose()


async def _prepared(
    connection: asyncpg.Connection, statements: dict[str, tuple[str, tuple[str, ...]]]
) -> tuple[Listing, History]:
    """The two reads on ``connection``, each a statement prepared once, its parameters
    in the repository's placeholder order."""
    listing_sql, listing_names = statements["conversations"]
    history_sql, history_names = statements["history"]
    listing_statement = await connection.prepare(listing_sql)
    history_statement = await connection.prepare(history_sql)

    async def listing(user: str) -> object:
        values = {"user_id": user}
        return await listing_statement.fetch(*(values[k] for k in listing_names))

    async def history(user: str, conversation_id: UUID) -> object:
        values: dict[str, object] = {"user_id": user, "conversation_id": conversation_id}
        return await history_statement.fetch(*(values[k] for k in history_names))

    return listing, history


if __name__ == "__main__":
    asyncio.run(main(read_instructions()))
