"""The bench's results: one JSON document, a table for people, and the goals checked.

Pure: takes the scenarios' results, returns data and text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from worker.tools.bench.ingest import IngestResult
from worker.tools.bench.latency import LatencyResult
from worker.tools.bench.memory import MemoryResult
from worker.tools.bench.reads import ReadResult
from worker.tools.bench.stats import Percentiles, ratio

INGEST_LABELS = {
    "raw": "(a) raw: consume + ack, no work",
    "naive": "(b) naive: 1 tx + 1 ack per event",
    "worker_1": "(c) chatstore worker, 1 process",
    "worker_2": "(c) chatstore worker, 2 processes",
}


@dataclass(frozen=True, slots=True)
class Goal:
    what: str
    target: str
    measured: str
    met: bool | None  # None: not measured in this run


@dataclass
class Results:
    ingest: dict[str, IngestResult] = dataclasses.field(default_factory=dict)
    latency: LatencyResult | None = None
    reads: ReadResult | None = None
    memory: MemoryResult | None = None

    def best_worker(self) -> tuple[str, IngestResult] | None:
        workers = [(k, v) for k, v in self.ingest.items() if k.startswith("worker")]
        return max(workers, key=lambda kv: kv[1].events_per_s, default=None)


def ratios(results: Results) -> dict[str, float | None]:
    raw, naive = _rate(results.ingest.get("raw")), _rate(results.ingest.get("naive"))
    out: dict[str, float | None] = {}
    for name, result in results.ingest.items():
        if name.startswith("worker"):
            out[f"{name}/raw"] = ratio(result.events_per_s, raw)
            out[f"{name}/naive"] = ratio(result.events_per_s, naive)
    return out


def _rate(result: IngestResult | None) -> float | None:
    return None if result is None else result.events_per_s


def goals(results: Results) -> list[Goal]:
    best = results.best_worker()
    rate = _rate(best[1]) if best else None
    shown = None
    if best:
        plural = "es" if best[1].processes > 1 else ""
        shown = f"{best[1].events_per_s:,.0f}/s ({best[1].processes} process{plural})"
    found: list[Goal] = [
        _goal("ingest rate", ">= 12,000 events/s", rate, 12_000, shown),
        _goal("ingest vs (a)", ">= 0.8", ratio(rate, _rate(results.ingest.get("raw"))), 0.8),
        _goal("ingest vs (b)", ">= 13x", ratio(rate, _rate(results.ingest.get("naive"))), 13),
    ]
    latency = results.latency
    at = f" at {latency.target_rate:,.0f}/s" if latency else ""
    found += [
        _at_most(
            f"publish-to-commit p95{at}",
            "<= 20 ms",
            latency.latency.p95_ms if latency else None,
            20,
        ),
        _at_most(
            f"publish-to-commit p99{at}",
            "<= 50 ms",
            latency.latency.p99_ms if latency else None,
            50,
        ),
    ]
    reads = results.reads
    size = f" at {reads.messages:,} messages" if reads else ""
    for query in ("history", "conversations"):
        p95 = getattr(reads, query).p95_ms if reads else None
        found.append(_at_most(f"{query} read p95{size}", "<= 5 ms (at 5,000,000)", p95, 5))
    memory = results.memory
    peak = memory.peak_rss_mib if memory else None
    found.append(_at_most("worker peak RSS (backlog)", "<= 150 MiB", peak, 150))
    return found


def _goal(
    what: str, target: str, value: float | None, least: float, shown: str | None = None
) -> Goal:
    if value is None:
        return Goal(what, target, "not run", None)
    return Goal(what, target, shown or f"{value:g}", value >= least)


def _at_most(what: str, target: str, value: float | None, most: float) -> Goal:
    if value is None:
        return Goal(what, target, "not run", None)
    return Goal(what, target, f"{value:g}", value <= most)


def document(results: Results, options: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    """Everything measured, as one JSON-ready object."""
    scenarios: dict[str, Any] = {k: dataclasses.asdict(v) for k, v in results.ingest.items()}
    for name in ("latency", "reads", "memory"):
        value = getattr(results, name)
        if value is not None:
            scenarios[name] = dataclasses.asdict(value)
    return {
        "machine": machine,
        "options": options,
        "scenarios": scenarios,
        "ratios": ratios(results),
        "goals": [dataclasses.asdict(goal) for goal in goals(results)],
    }


def _percentiles(p: Percentiles) -> str:
    return f"p50 {p.p50_ms:7.2f}  p95 {p.p95_ms:7.2f}  p99 {p.p99_ms:7.2f}  max {p.max_ms:8.2f} ms"


def table(results: Results) -> str:
    """The results as a plain-text table (Markdown-compatible rows)."""
    lines = ["| scenario | result | vs (a) | vs (b) |", "| --- | --- | --- | --- |"]
    worker_ratios = ratios(results)
    for name, result in results.ingest.items():
        rss = f", peak RSS {result.peak_rss_mib:g} MiB" if result.peak_rss_mib else ""
        versus_raw = worker_ratios.get(f"{name}/raw")
        versus_naive = worker_ratios.get(f"{name}/naive")
        lines.append(
            f"| {INGEST_LABELS[name]} | {result.events_per_s:,.0f} events/s "
            f"({result.timed:,} in {result.seconds:.2f} s{rss}) | "
            f"{'' if versus_raw is None else f'{versus_raw:.2f}'} | "
            f"{'' if versus_naive is None else f'{versus_naive:.1f}x'} |"
        )
    if latency := results.latency:
        lines.append(
            f"| (d) publish-to-commit at {latency.achieved_rate:,.0f}/s "
            f"({latency.events:,} events) | {_percentiles(latency.latency)} | | |"
        )
    if reads := results.reads:
        setup = f"{reads.messages:,} messages, {reads.readers} readers"
        lines.append(f"| (e) history, last 20 ({setup}) | {_percentiles(reads.history)} | | |")
        lines.append(
            f"| (e) conversations, recent 50 ({reads.queries_per_s:,.0f} queries/s in all) "
            f"| {_percentiles(reads.conversations)} | | |"
        )
        for query in ("history", "conversations"):
            alone = _percentiles(getattr(reads, f"{query}_one_reader"))
            lines.append(f"| (e) {query}, 1 reader alone | {alone} | | |")
    if memory := results.memory:
        lines.append(
            f"| (f) worker peak RSS, backlog of {memory.backlog:,} | {memory.peak_rss_mib:g} MiB "
            f"({memory.consumed:,} consumed in {memory.seconds:g} s) | | |"
        )
    lines += ["", "| goal | target | measured | met |", "| --- | --- | --- | --- |"]
    for goal in goals(results):
        met = {True: "yes", False: "NO", None: "-"}[goal.met]
        lines.append(f"| {goal.what} | {goal.target} | {goal.measured} | {met} |")
    return "\n".join(lines)
