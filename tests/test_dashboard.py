"""The Grafana dashboard in deploy/monitoring/: generated, every query valid PromQL
(promtool parses it), and every metric it names one that exists.

chatstore_* names are checked against the worker's real collectors;
rabbitmq_* names against the rabbitmq_prometheus plugin of the RabbitMQ
installed here, whose collector lists the metrics it emits.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest

from deploy.monitoring import dashboard, generate, rules
from tests.monitoring import (
    as_promql,
    chatstore_metrics_in,
    check_expressions,
    dashboard_queries,
    exported_metric_names,
)

RABBITMQ_COLLECTOR: Final = (
    "/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbitmq_prometheus-*/ebin/"
    "prometheus_rabbitmq_core_metrics_collector.beam"
)
_RABBITMQ_NAME: Final = re.compile(r"rabbitmq_\(detailed_\)\?(queue_[a-z_]+)")


def _model() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(generate.DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def _variable_selectors(model: dict[str, Any]) -> dict[str, str]:
    """The series selector inside each ``label_values(selector, label)`` variable."""
    found = {}
    for variable in model["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
            assert match, variable["query"]
            found[f"variable_{variable['name']}"] = match.group(1)
    return found


def test_the_checked_in_dashboard_is_what_the_generator_writes() -> None:
    assert generate.DASHBOARD.read_text(encoding="utf-8") == generate.dashboard_file(), (
        "deploy/monitoring/grafana-dashboard.json is stale: "
        "run `.venv/bin/python -m deploy.monitoring.generate`"
    )
    assert _model()["uid"] == dashboard.UID


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    model = _model()
    expressions = {**dashboard_queries(model), **_variable_selectors(model)}
    assert len(dashboard_queries(model)) >= 20, "the dashboard lost its panels"
    checked = check_expressions(
        {name: as_promql(expr) for name, expr in expressions.items()}, tmp_path
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in checked.stdout


def test_the_expression_check_fails_on_a_broken_query(tmp_path: Path) -> None:
    checked = check_expressions({"broken": "sum(rate(chatstore_events_total[5m])"}, tmp_path)
    assert checked.returncode != 0
    assert "unclosed left parenthesis" in checked.stdout + checked.stderr


def test_every_chatstore_metric_it_names_is_one_the_worker_exports() -> None:
    used = set().union(*map(chatstore_metrics_in, dashboard_queries(_model()).values()))
    assert used - exported_metric_names() == set()


def test_every_metric_the_worker_exports_is_on_the_dashboard() -> None:
    used = set().union(*map(chatstore_metrics_in, dashboard_queries(_model()).values()))
    families = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in used}
    exported = {
        re.sub(r"_(bucket|sum|count|total)$", "", name)
        for name in exported_metric_names()
        if not name.endswith("_created")
    }
    assert exported - families == set(), "exported metrics the dashboard does not show"


def test_every_rabbitmq_metric_it_and_the_rules_name_is_one_the_plugin_emits() -> None:
    beams = glob.glob(RABBITMQ_COLLECTOR)
    erl = shutil.which("erl")
    if not beams or erl is None:
        pytest.fail(
            f"RabbitMQ's rabbitmq_prometheus plugin is not installed here ({RABBITMQ_COLLECTOR})",
            pytrace=False,
        )
    # The collector's source, from the debug information of its compiled module.
    printed = subprocess.run(
        [
            erl,
            "-noshell",
            "-eval",
            f'{{ok, {{_, [{{abstract_code, {{_, Forms}}}}]}}}} = beam_lib:chunks("{beams[0]}", '
            '[abstract_code]), io:format("~s~n", [erl_prettypr:format('
            "erl_syntax:form_list(Forms))]), halt().",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert '<<"rabbitmq_detailed_">>' in printed  # the /metrics/detailed prefix
    expressions = [*dashboard_queries(_model()).values(), *(alert.expr for alert in rules.ALERTS)]
    families = {family for expr in expressions for family in _RABBITMQ_NAME.findall(expr)}
    assert families == {
        "queue_messages_ready",
        "queue_messages_unacked",
        "queue_messages",
        "queue_consumers",
    }
    for family in families:
        assert re.search(rf"\b{family},", printed), f"the plugin emits no {family}"


def test_every_query_reads_the_chosen_data_source() -> None:
    for panel in _model()["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
