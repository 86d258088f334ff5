"""The alert rules in deploy/monitoring/: generated from one source, checked and
unit-tested by promtool, each with a runbook in docs/OPERATIONS.md.

promtool is Debian's `prometheus` package; without it these tests fail and
say so (they never skip).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.monitoring import generate, rules
from tests.monitoring import MONITORING, ROOT, chatstore_metrics_in, exported_metric_names, promtool

UNIT_TESTS = sorted((MONITORING / "tests").glob("*.yaml"))
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
RUNBOOKS_SECTION = "## Alerts and runbooks"


def _loaded(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "path", [generate.RULES_FILE, generate.PROMETHEUS_RULE], ids=lambda path: path.name
)
def test_the_checked_in_file_is_what_the_generator_writes(path: Path) -> None:
    expected = generate.outputs()[path]
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    assert current == expected, (
        f"{path.relative_to(ROOT)} is stale: run `.venv/bin/python -m deploy.monitoring.generate`"
    )


def test_the_generator_check_mode_reports_a_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "chatstore.rules.yaml"
    stale.write_text("groups: []\n")
    monkeypatch.setattr(generate, "RULES_FILE", stale)
    assert generate.main(["--check"]) == 1
    assert stale.read_text() == "groups: []\n"  # --check writes nothing


def test_promtool_accepts_the_rules_file() -> None:
    checked = promtool("check", "rules", str(generate.RULES_FILE))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules.ALERTS)} rules found" in checked.stdout


def test_the_prometheusrule_holds_the_rules_file_s_groups(tmp_path: Path) -> None:
    resource = _loaded(generate.PROMETHEUS_RULE)
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"]["groups"] == _loaded(generate.RULES_FILE)["groups"]
    # promtool reads the operator's spec as a rules file too.
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(resource["spec"]))
    checked = promtool("check", "rules", str(spec))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_passes_its_promtool_unit_tests() -> None:
    assert UNIT_TESTS, f"no promtool tests in {MONITORING / 'tests'}"
    tested = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.count("SUCCESS") == len(UNIT_TESTS), tested.stdout


def test_a_wrong_expectation_fails_the_unit_tests(tmp_path: Path) -> None:
    # The same tests against rules whose not-ready alert waits 7 minutes
    # instead of 5: the expectation at 8m (fired, after 6) no longer holds.
    (tmp_path / "tests").mkdir()
    slower = generate.rules_file(for_overrides={"ChatstoreWorkerNotReady": "7m"})
    (tmp_path / generate.RULES_FILE.name).write_text(slower)
    copy = tmp_path / "tests" / "worker.yaml"
    copy.write_text((MONITORING / "tests" / "worker.yaml").read_text())
    tested = promtool("test", "rules", str(copy))
    output = tested.stdout + tested.stderr
    assert tested.returncode != 0
    assert "alertname: ChatstoreWorkerNotReady, time: 8m" in output, output


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        for case in _loaded(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {alert.name for alert in rules.ALERTS}
    assert names - fired == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook() -> None:
    (group,) = _loaded(generate.RULES_FILE)["groups"]
    for rule in group["rules"]:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        assert annotations["runbook_url"] == f"docs/OPERATIONS.md#{rule['alert'].lower()}"


def test_every_runbook_url_leads_to_a_subsection_of_the_runbooks_section() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    assert RUNBOOKS_SECTION in text, f"docs/OPERATIONS.md has no {RUNBOOKS_SECTION!r}"
    section = text.split(RUNBOOKS_SECTION, 1)[1].split("\n## ", 1)[0]
    headings = re.findall(r"^### (\S+)$", section, flags=re.MULTILINE)
    assert sorted(headings) == sorted(alert.name for alert in rules.ALERTS)


def test_the_runbook_base_can_be_a_url_of_your_own_written_elsewhere(tmp_path: Path) -> None:
    base = "https://git.example/chatstore/OPERATIONS.md"
    assert generate.main(["--runbook-base", base, "--out", str(tmp_path)]) == 0
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == sorted(path.name for path in generate.outputs())
    (group,) = _loaded(tmp_path / generate.RULES_FILE.name)["groups"]
    urls = {rule["annotations"]["runbook_url"] for rule in group["rules"]}
    assert f"{base}#chatstoreworkernotready" in urls
    assert generate.main(["--check"]) == 0  # the checked-in files are untouched


def test_an_override_of_an_alert_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValueError, match="no such alert: ChatstoreNope"):
        rules.groups(for_overrides={"ChatstoreNope": "5s"})


def test_every_chatstore_metric_the_rules_use_is_one_the_worker_exports() -> None:
    used = set().union(*(chatstore_metrics_in(alert.expr) for alert in rules.ALERTS))
    assert used, "the rules use no chatstore metric"
    assert used - exported_metric_names() == set()


@pytest.mark.parametrize("package", ["worker", "contracts"])
def test_the_shipped_packages_never_import_deploy_monitoring(package: str) -> None:
    # deploy/ is not in the wheel: an import of it would fail once installed.
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(name.split(".")[0] == "deploy" for name in names), path


def test_the_rules_name_the_queues_of_the_topology() -> None:
    from worker import topology

    assert (rules.QUEUE, rules.DLQ) == (topology.QUEUE, topology.DLQ)
