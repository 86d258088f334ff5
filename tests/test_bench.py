"""``chatstore bench``: its pure parts, and a small end-to-end run on the real services."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from worker.settings import Settings
from worker.tools.bench.command import run
from worker.tools.bench.ingest import IngestResult
from worker.tools.bench.options import add_arguments
from worker.tools.bench.report import Results, goals, table
from worker.tools.bench.stats import percentile, rate, ratio, summarise


def _arguments(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="chatstore bench")
    add_arguments(parser)
    return parser.parse_args(argv)


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


def test_rates_and_ratios_refuse_what_they_cannot_know() -> None:
    assert rate(1000, 0.5) == 2000
    with pytest.raises(ValueError, match="positive"):
        rate(10, 0)
    assert ratio(12_000, 900) == 13.33
    assert ratio(None, 900) is None
    assert ratio(1, 0) is None


def test_unknown_scenarios_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _arguments("--scenarios", "raw,warp")
    assert exit_info.value.code == 2
    assert "warp" in capsys.readouterr().err
    assert _arguments("--scenarios", "raw, reads").scenarios == ["raw", "reads"]
    assert _arguments("--events", "1_000").events == 1000


def test_goals_compare_the_best_worker_with_both_baselines() -> None:
    results = Results(
        ingest={
            "raw": IngestResult(1000, 1000, 0.05, 20_000),
            "naive": IngestResult(1000, 1000, 1.1, 900),
            "worker_1": IngestResult(1000, 1000, 0.1, 10_000),
            "worker_2": IngestResult(1000, 1000, 0.08, 13_000, processes=2),
        }
    )
    by_name = {goal.what: goal for goal in goals(results)}
    assert by_name["ingest rate"].met is True
    assert "2 processes" in by_name["ingest rate"].measured
    assert (by_name["ingest vs (a)"].measured, by_name["ingest vs (a)"].met) == ("0.65", False)
    assert by_name["ingest vs (b)"].met is True
    assert by_name["worker peak RSS (backlog)"].met is None, "not run is not a pass"
    assert "| ingest vs (a) | >= 0.8 | 0.65 | NO |" in table(results)


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
    settings = Settings(
        database_url=services_admin_url.render_as_string(hide_password=False),
        amqp_url=services_amqp_url,
        http_port=0,
    )
    output = tmp_path / "bench.json"
    args = _arguments(
        *("--events", "2000", "--rate", "200", "--latency-seconds", "1"),
        *("--messages", "20000", "--readers", "4", "--read-seconds", "1"),
        *("--backlog", "2000", "--rss-seconds", "1", "--json", str(output)),
    )

    assert run(settings, args) == 0

    report = json.loads(output.read_text())
    scenarios = report["scenarios"]
    assert set(scenarios) == {
        "raw", "naive", "worker_1", "worker_2", "latency", "reads", "memory"
    }  # fmt: skip
    for name in ("raw", "naive", "worker_1", "worker_2"):
        assert scenarios[name]["events"] == 2000
        assert 0 < scenarios[name]["timed"] <= 2000
        assert scenarios[name]["events_per_s"] > 0
    assert scenarios["raw"]["events_per_s"] > scenarios["naive"]["events_per_s"]
    assert 10 < scenarios["worker_1"]["peak_rss_mib"] < 1000
    assert scenarios["latency"]["events"] == 200
    _sane(scenarios["latency"]["latency"])
    for query in ("history", "conversations", "history_one_reader", "conversations_one_reader"):
        _sane(scenarios["reads"][query])
    memory = scenarios["memory"]
    assert 10 < memory["peak_rss_mib"] < 1000
    assert memory["consumed"] + memory["waiting_at_end"] <= 2000
    assert len(report["goals"]) == 8
    assert all(goal["met"] is not None for goal in report["goals"])
    assert report["machine"]["postgresql"].startswith(("15", "16", "17"))
    printed = capsys.readouterr().out
    assert "(c) chatstore worker, 2 processes" in printed
    assert f"results written to {output}" in printed
