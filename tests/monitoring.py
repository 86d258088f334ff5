"""What the tests of deploy/monitoring/ share: promtool, and the metric names the worker exports."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from worker.metrics import Metrics
from worker.supervise.children import ChildrenView

ROOT: Final = Path(__file__).resolve().parent.parent
MONITORING: Final = ROOT / "deploy" / "monitoring"
INSTALL_HINT: Final = (
    "install Debian's prometheus package, which has promtool and prometheus "
    "(apt-get install prometheus; scripts/test installs it when run as root)"
)

# Sample names per metric type, as the text format writes them.
_SUFFIXES: Final = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
_CHATSTORE_NAME: Final = re.compile(r"\bchatstore_[a-z_]+\b")
# What Grafana puts in place of the dashboard's variables, for promtool and Prometheus.
SUBSTITUTES: Final = {"$__rate_interval": "5m", "$job": ".*", "$vhost": ".*"}


def tool(name: str) -> str:
    """``promtool`` or ``prometheus`` from the PATH; fails the test naming the package."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not on PATH: {INSTALL_HINT}", pytrace=False)
    return found


def promtool(*arguments: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *arguments],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=60,
    )


def exported_metric_names() -> set[str]:
    """Every sample name a worker's or a supervisor's /metrics can hold.

    Read from the real collectors: a worker's registry (worker/metrics.py) and
    the supervisor's view of its children (worker/supervise/children.py), so
    a renamed metric fails the tests that use this.
    """
    families = list(Metrics().registry.collect())
    with tempfile.TemporaryDirectory() as directory:
        view = ChildrenView(Path(directory), 1, lambda: [], Counter())
        families += list(view.collect())
    return {family.name + suffix for family in families for suffix in _SUFFIXES[family.type]}


def dashboard_queries(model: dict[str, Any]) -> dict[str, str]:
    """Every panel query of a dashboard model, keyed by panel id and refId."""
    return {
        f"panel{panel['id']}_{target['refId']}": target["expr"]
        for panel in model["panels"]
        for target in panel.get("targets", [])
    }


def as_promql(expression: str) -> str:
    """A dashboard query with its Grafana variables replaced, as Grafana would."""
    for variable, value in SUBSTITUTES.items():
        expression = expression.replace(variable, value)
    assert "$" not in expression, f"a Grafana variable with no substitute: {expression}"
    return expression


def chatstore_metrics_in(expression: str) -> set[str]:
    return set(_CHATSTORE_NAME.findall(expression))


def check_expressions(
    expressions: dict[str, str], directory: Path
) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` on the expressions, each as a recording rule: it
    parses every one with Prometheus' own PromQL parser."""
    rules = [{"record": f"check:{name}", "expr": expr} for name, expr in expressions.items()]
    path = directory / "expressions.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    return promtool("check", "rules", str(path))
