"""``chatstore bench``: its pure parts, and a small end-to-end run on the real services."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.history.queries import compiled, conversations_query, history_query
from worker.settings import Settings
from worker.tools.bench import pgbouncer
from worker.tools.bench.command import run
from worker.tools.bench.ingest import Ingest, IngestResult
from worker.tools.bench.latency import Floor, Latency, LatencyResult
from worker.tools.bench.memory import Memory, MemoryResult
from worker.tools.bench.options import add_arguments
from worker.tools.bench.pooled import Pooled, run_pooled
from worker.tools.bench.reader import floor_statements
from worker.tools.bench.report import table
from worker.tools.bench.scenarios import goals
from worker.tools.bench.stats import Percentiles, added, percentile, rate, ratio, spread, summarise


def _arguments(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="chatstore bench")
    add_arguments(parser)
    return parser.parse_args(argv)


def _ms(p50: float, p95: float, p99: float) -> Percentiles:
    return Percentiles(100, p50, p95, p99, p99 + 1)


def test_percentiles_are_nearest_rank_values_that_were_observed() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.95) == 95
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 0.5)


def test_summary_is_in_milliseconds_and_ordered() -> None:
    summary = summarise([0.003, 0.001, 0.002, 0.010])
    assert (summary.count, summary.p50_ms, summary.max_ms) == (4, 2.0, 10.0)
    assert summary.p50_ms <= summary.p95_ms <= summary.p99_ms <= summary.max_ms


def test_rates_ratios_and_spreads_refuse_what_they_cannot_know() -> None:
    assert rate(1000, 0.5) == 2000
    with pytest.raises(ValueError, match="positive"):
        rate(10, 0)
    assert ratio(12_000, 900) == 13.33
    assert ratio(None, 900) is None
    assert ratio(1, 0) is None
    found = spread([30.0, 10.0, 20.0, 100.0])
    assert (found.rounds, found.median, found.low, found.high) == (4, 25.0, 10.0, 100.0)
    with pytest.raises(ValueError, match="no rounds"):
        spread([])


def test_a_floor_adds_percentile_by_percentile() -> None:
    total = added(_ms(1.6, 2.0, 2.5), _ms(0.3, 0.4, 0.9))
    assert (total.p50_ms, total.p95_ms, total.p99_ms) == (1.9, 2.4, 3.4)


def test_options_take_lists_and_refuse_unknown_scenarios(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _arguments("--scenarios", "raw,warp")
    assert exit_info.value.code == 2
    assert "warp" in capsys.readouterr().err
    assert _arguments("--scenarios", "raw, reads").scenarios == ["raw", "reads"]
    assert _arguments("--events", "1_000").events == 1000
    defaults = _arguments()
    assert (defaults.rates, defaults.readers, defaults.rounds) == ([1000, 5000], [1, 32], 3)
    assert _arguments("--rates", "200", "--readers", "4,1,4").readers == [4, 1]
    for bad in (("--readers", "1,0"), ("--rates", ","), ("--rounds", "0")):
        with pytest.raises(SystemExit):
            _arguments(*bad)


def test_ingest_ratios_come_from_the_medians_of_the_rounds() -> None:
    def rounds(*rates: float) -> list[IngestResult]:
        return [IngestResult(1000, 1000, 0.1, r) for r in rates]

    ingest = Ingest(
        rounds={
            "raw": rounds(20_000, 26_000, 10_000),
            "worker_1": rounds(10_000, 11_000, 9_000),
            "worker_2": rounds(18_000, 21_000, 5_000),
        },
        naive=IngestResult(1000, 1000, 1.1, 900),
    )
    assert ingest.ratios()["worker_2/raw"] == 0.9  # 18,000 / 20,000, not a mean of ratios
    assert ingest.ratios()["worker_1/naive"] == round(10_000 / 900, 2)
    (goal,) = ingest.goals()
    assert (goal.value, goal.met) == (0.9, True)
    assert goal.measured == "0.9 (18,000 / 20,000 events/s)"
    shown = "\n".join(ingest.table())
    assert "| 18,000 events/s" in shown
    assert "| 5,000-21,000 |" in shown
    assert "| 0.90 |" in shown


def test_latency_and_memory_goals_are_ratios_to_their_floors_or_absolute() -> None:
    floor = Floor(1000, _ms(1.5, 2.0, 3.0), _ms(0.5, 1.0, 2.0), _ms(2.0, 3.0, 5.0))
    latency = Latency([LatencyResult(1000, 999, 10_000, _ms(3.9, 9.0, 25.0), floor)])
    by_name = {g.what: g for g in latency.goals()}
    p50 = by_name["publish-to-commit at 1,000/s, p50 vs floor"]
    p99 = by_name["publish-to-commit at 1,000/s, p99 vs floor"]
    assert (p50.value, p50.met, p99.value, p99.met) == (1.95, True, 5.0, False)
    assert p50.measured == "1.95 (3.90 / 2.00 ms)"
    assert by_name["publish-to-commit at 5,000/s, p50 vs floor"].met is None, "not run"
    queued = Floor(5000, _ms(900, 2000, 3000), _ms(0.5, 1.0, 2.0), _ms(900.5, 2001, 3002))
    saturated = Latency([LatencyResult(5000, 4800, 50_000, _ms(950, 2100, 3100), queued)])
    assert all(g.met is None and "not judged" in g.measured for g in saturated.goals()[-2:])
    memory = Memory(MemoryResult(1_000_000, 30, 100_000, 900_000, 151.0))
    assert [(g.value, g.met) for g in memory.goals()] == [(151.0, False)]
    assert Memory().goals()[0].met is None


def test_every_goal_of_the_issue_is_listed_even_when_nothing_ran() -> None:
    listed = goals({})
    assert len(listed) == 1 + 4 + 4 + 1
    assert all(goal.met is None and goal.measured == "not run" for goal in listed)
    assert "| worker peak RSS, backlog of 1,000,000 | <= 150 MiB | not run | - |" in table(
        {}, listed
    )


def test_the_floor_runs_the_repositorys_own_sql() -> None:
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1/none")
    statements = floor_statements(engine)
    listing, names = statements["conversations"]
    assert (listing, names) == compiled(conversations_query(False, "start"), 51, engine.dialect)
    assert "LIMIT 51" in listing
    assert names == ("user_id",)
    history, names = statements["history"]
    assert history == compiled(history_query("start"), 21, engine.dialect)[0]
    assert set(names) == {"user_id", "conversation_id"}


async def test_without_pgbouncer_scenario_g_says_it_was_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pgbouncer, "binary", lambda: None)
    section = Pooled()
    environment: Any = None  # never reached: the scenario stops at the missing program
    await run_pooled(
        environment, messages=10, readers=200, processes=4, pool_size=20, seconds=1, into=section
    )
    assert section.readings is None
    shown = "\n".join(section.table())
    assert "| skipped: pgbouncer not installed (apt-get install pgbouncer) |" in shown
    assert section.document()["skipped"] == "pgbouncer not installed (apt-get install pgbouncer)"


def _sane(percentiles: dict[str, Any]) -> None:
    assert percentiles["count"] > 0
    assert 0 < percentiles["p50_ms"] <= percentiles["p95_ms"] <= percentiles["p99_ms"]
    assert percentiles["p99_ms"] <= percentiles["max_ms"] < 10_000


def test_a_tiny_bench_runs_every_scenario_and_writes_sane_json(
    services_admin_url: URL,
    services_amqp_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert pgbouncer.binary() is not None, "scenario (g) needs pgbouncer (scripts/test installs it)"
    settings = Settings(
        database_url=services_admin_url.render_as_string(hide_password=False),
        amqp_url=services_amqp_url,
        http_port=0,
    )
    output = tmp_path / "bench.json"
    args = _arguments(
        *("--rounds", "1", "--events", "1000", "--naive-events", "100"),
        *("--rates", "200", "--latency-seconds", "0.5"),
        *("--messages", "5000", "--readers", "1,2", "--read-seconds", "0.5"),
        *("--pooled-readers", "24", "--pooled-processes", "2", "--pool-size", "3"),
        *("--backlog", "1000", "--rss-seconds", "0.5", "--tracing-events", "200"),
        *("--json", str(output)),
    )

    assert run(settings, args) == 0

    report = json.loads(output.read_text())
    scenarios = report["scenarios"]
    assert set(scenarios) == {"ingest", "latency", "reads", "pgbouncer", "rss", "tracing"}
    ingest = scenarios["ingest"]
    assert set(ingest["rounds"]) == {"raw", "worker_1", "worker_2"}
    for name, rounds in ingest["rounds"].items():
        assert len(rounds) == 1, "every round is kept"
        for found in rounds:
            assert found["events"] == 1000
            assert 0 < found["timed"] <= 1000
            assert found["events_per_s"] > 0
        median = statistics.median(r["events_per_s"] for r in rounds)
        assert ingest["medians"][name]["median"] == median
    assert ingest["rounds"]["worker_2"][0]["processes"] == 2
    assert 10 < ingest["rounds"]["worker_2"][0]["peak_rss_mib"] < 1000
    assert ingest["naive"]["events"] == 100
    assert ingest["rounds"]["raw"][0]["events_per_s"] > ingest["naive"]["events_per_s"]
    medians = {name: found["median"] for name, found in ingest["medians"].items()}
    assert ingest["ratios"]["worker_2/raw"] == round(medians["worker_2"] / medians["raw"], 2)

    (at_rate,) = scenarios["latency"]["rates"]
    assert at_rate["target_rate"] == 200
    assert at_rate["events"] == 100
    floor = at_rate["floor"]
    for percentiles in (at_rate["latency"], floor["deliver"], floor["commit"], floor["total"]):
        _sane(percentiles)
    for p in ("p50", "p95", "p99"):
        total = floor["deliver"][f"{p}_ms"] + floor["commit"][f"{p}_ms"]
        assert floor["total"][f"{p}_ms"] == pytest.approx(total, abs=0.002)
        assert at_rate["ratios"][p] == round(at_rate["latency"][f"{p}_ms"] / total, 2)

    reads = scenarios["reads"]
    assert reads["messages"] == 5000
    assert [pair["repository"]["readers"] for pair in reads["runs"]] == [1, 2]
    for pair in reads["runs"]:
        assert pair["repository"]["sql"] == pair["floor"]["sql"]
        assert len(pair["floor"]["sql"]) == 2
        assert pair["repository"]["errors"] == pair["floor"]["errors"] == 0
        for query in ("history", "conversations"):
            _sane(pair["repository"][query])
            _sane(pair["floor"][query])
            ratio_ = pair["repository"][query]["p95_ms"] / pair["floor"][query]["p95_ms"]
            assert pair["p95_ratios"][query] == round(ratio_, 2)

    pooled = scenarios["pgbouncer"]
    assert (pooled["skipped"], pooled["readers"], pooled["pool_size"]) == (None, 24, 3)
    assert pooled["readings"]["errors"] == 0, pooled["readings"]["error_samples"]
    assert pooled["readings"]["queries_per_s"] > 0
    _sane(pooled["readings"]["history"])

    memory = scenarios["rss"]
    assert 10 < memory["peak_rss_mib"] < 1000
    assert memory["consumed"] + memory["waiting_at_end"] <= 1000

    tracing = scenarios["tracing"]  # the otel extra is in the dev extra
    assert (tracing["events"], tracing["rounds"]) == (200, 1)
    assert tracing["off_us_per_event"] > 0
    assert tracing["on_us_per_event"] > 0
    # One round: its difference is the difference of its medians (each rounded).
    assert tracing["overhead_us_per_event"] == pytest.approx(
        tracing["on_us_per_event"] - tracing["off_us_per_event"], abs=0.02
    )

    by_name = {goal["what"]: goal for goal in report["goals"]}
    ingest_goal = by_name["ingest, 2 processes, vs (a) raw (medians)"]
    assert ingest_goal["value"] == ingest["ratios"]["worker_2/raw"]
    assert ingest_goal["met"] == (ingest_goal["value"] >= 0.8)
    p99_goal = by_name["publish-to-commit at 200/s, p99 vs floor"]
    if at_rate["floor_saturated"]:  # a machine so loaded that even the floor queued
        assert p99_goal["met"] is None
    else:
        assert p99_goal["value"] == at_rate["ratios"]["p99"]
        assert p99_goal["met"] == (at_rate["ratios"]["p99"] <= 4)
    for readers, pair in zip(("1 reader", "2 readers"), reads["runs"], strict=True):
        goal = by_name[f"reads, {readers}, history p95 vs asyncpg floor"]
        assert goal["value"] == pair["p95_ratios"]["history"]
        assert goal["met"] == (goal["value"] <= 1.25)
    assert by_name["reads, 32 readers, history p95 vs asyncpg floor"]["met"] is None
    rss_goal = next(goal for name, goal in by_name.items() if name.startswith("worker peak RSS"))
    assert (rss_goal["value"], rss_goal["met"]) == (memory["peak_rss_mib"], True)

    assert report["machine"]["postgresql"].startswith(("15", "16", "17"))
    assert report["options"]["rounds"] == 1
    printed = capsys.readouterr().out
    assert "(c) chatstore worker --processes 2" in printed
    assert "| goal | target |" in printed
    assert "| tracing | flush path, us/event, off |" in printed
    assert f"results written to {output}" in printed
