"""The scenarios of ``chatstore bench``, in the order they run: the one registry.

A step runs when any of its ``scenarios`` (the ``--scenarios`` names) is
chosen, and puts what it measured into the section named ``key``, made by
``section`` the first time (two steps may share one, as (a)/(c) and (b) do).
A section gives the report its JSON, its table and its goals
(``worker.tools.bench.goals.Section``); every step's goals are listed, as
not run when its scenario was not chosen.

Adding a scenario: a name in ``options.SCENARIOS``, a section type, a
function ``async def run(run: Run, section) -> None``, and one ``Step`` below.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from worker.tools.bench import ingest
from worker.tools.bench.context import Run
from worker.tools.bench.goals import Goal, Section
from worker.tools.bench.ingest import Ingest
from worker.tools.bench.latency import Latency, run_latency
from worker.tools.bench.memory import Memory, run_memory
from worker.tools.bench.pooled import Pooled, run_pooled
from worker.tools.bench.reads import Reads, run_reads
from worker.tools.bench.tracing import TracingCost, run_tracing


@dataclass(frozen=True)
class Step:
    key: str
    scenarios: tuple[str, ...]
    section: Callable[[], Section]
    run: Callable[[Run, Section], Awaitable[None]]


async def _ingest_rounds(run: Run, section: Section) -> None:
    assert isinstance(section, Ingest)
    chosen = set(run.args.scenarios)
    await ingest.run_rounds(
        run.environment,
        ingest.bodies_for(run.args.events),
        rounds=run.args.rounds,
        with_raw="raw" in chosen,
        with_workers="worker" in chosen,
        log_dir=run.log_dir,
        into=section,
    )


async def _naive(run: Run, section: Section) -> None:
    assert isinstance(section, Ingest)
    section.naive = await ingest.run_naive(
        run.environment, ingest.bodies_for(run.args.naive_events)
    )


async def _latency(run: Run, section: Section) -> None:
    assert isinstance(section, Latency)
    await run_latency(
        run.environment,
        rates=run.args.rates,
        seconds=run.args.latency_seconds,
        log_dir=run.log_dir,
        into=section,
    )


async def _reads(run: Run, section: Section) -> None:
    assert isinstance(section, Reads)
    section.messages = await run.read_data_set()
    await run_reads(
        run.environment,
        readers=run.args.readers,
        processes=run.args.reader_processes,
        seconds=run.args.read_seconds,
        into=section,
    )


async def _pooled(run: Run, section: Section) -> None:
    assert isinstance(section, Pooled)
    await run_pooled(
        run.environment,
        messages=await run.read_data_set(),
        readers=run.args.pooled_readers,
        processes=run.args.pooled_processes,
        pool_size=run.args.pool_size,
        seconds=run.args.read_seconds,
        into=section,
    )


async def _memory(run: Run, section: Section) -> None:
    assert isinstance(section, Memory)
    section.result = await run_memory(
        run.environment,
        backlog=run.args.backlog,
        seconds=run.args.rss_seconds,
        log_dir=run.log_dir,
    )


async def _tracing(run: Run, section: Section) -> None:
    assert isinstance(section, TracingCost)
    await run_tracing(
        run.environment, events=run.args.tracing_events, rounds=run.args.rounds, into=section
    )


STEPS: Final = (
    Step("ingest", ("raw", "worker"), Ingest, _ingest_rounds),
    Step("ingest", ("naive",), Ingest, _naive),
    Step("latency", ("latency",), Latency, _latency),
    Step("reads", ("reads",), Reads, _reads),
    Step("pgbouncer", ("pgbouncer",), Pooled, _pooled),
    Step("rss", ("rss",), Memory, _memory),
    # Last: it empties the tables the read data set of (e) and (g) is in.
    Step("tracing", ("tracing",), TracingCost, _tracing),
)


async def run_chosen(run: Run) -> None:
    """Every step one of whose scenarios was chosen, in the registry's order."""
    chosen = set(run.args.scenarios)
    for step in STEPS:
        if chosen.intersection(step.scenarios):
            section = run.sections.setdefault(step.key, step.section())
            started = time.monotonic()
            await step.run(run, section)
            name = ",".join(sorted(chosen.intersection(step.scenarios)))
            run.step_seconds[name] = round(time.monotonic() - started, 1)


def goals(sections: dict[str, Section]) -> list[Goal]:
    """Every goal of every step, measured or not, each section's once."""
    found: list[Goal] = []
    for key in dict.fromkeys(step.key for step in STEPS):
        step = next(s for s in STEPS if s.key == key)
        found += (sections.get(key) or step.section()).goals()
    return found
