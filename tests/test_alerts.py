"""The opt-in alerts (deploy/components/alerts and alerts-usage): the real `promtool` accepts them, and each alert
fires when it should and stays silent when it should not on synthetic series (tests/data/alerts.test.yaml, run by
`promtool test rules`); they read only series the exporter exports, with label values the code uses; the state
alerts read the leader's view; each alert has a runbook in deploy/README.md.

Needs `promtool` (Debian's `prometheus` package, which scripts/install-test-deps.sh installs) and `kubectl`; fails
where either is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from optimizer.controller.actuator import ACTIVE, Phase
from optimizer.controller.reasons import EventReason
from optimizer.metrics.exporter import (
    EVICTION_OUTCOMES,
    PASS_RESULTS,
    RECONFIGURATION_OUTCOMES,
    REPAIR_ACTIONS,
    WEDGE_KINDS,
    MetricsObserver,
)
from solver.plan import PlanStatus

Obj = dict[str, Any]
REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNIT_TESTS = Path(__file__).resolve().parent / "data" / "alerts.test.yaml"
PROMTOOL = os.environ.get("MIGOPT_PROMTOOL", "/usr/bin/promtool")
RULE_FILES = {"migopt": "rules.yaml", "migopt-usage": "usage-rules.yaml"}  # PrometheusRule name -> the test's file
LEADER_FILTER = "(migopt_leader == 1)"
KNOWN_VALUES = {
    "outcome": set(EVICTION_OUTCOMES.values()) | set(RECONFIGURATION_OUTCOMES.values()),
    "phase": {p.value for p in Phase},
    "reason": {r.value for r in EventReason},
    "result": set(PASS_RESULTS),
    "status": {s.value for s in PlanStatus},
    "kind": set(WEDGE_KINDS.values()),
    "action": set(REPAIR_ACTIONS.values()),
}


def _tool(path: str, what: str) -> str:
    found = shutil.which(path) or (path if Path(path).exists() else None)
    if found is None:
        pytest.fail(f"{path} not found: {what}")
    return found


@pytest.fixture(scope="module")
def prometheus_rules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Obj]:
    """Both PrometheusRules as an install with every monitoring component renders them (by name)."""
    kubectl = _tool("kubectl", "the README's test setup needs it")
    where = tmp_path_factory.mktemp("all-monitoring")
    relative = os.path.relpath(DEPLOY, where)  # kustomize takes no absolute paths
    (where / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"{relative}/base", f"{relative}/grafana"],
                "components": [
                    f"{relative}/components/alerts",
                    f"{relative}/components/alerts-usage",
                    f"{relative}/components/prometheus-release",
                ],
            }
        ),
        encoding="utf-8",
    )
    done = subprocess.run([kubectl, "kustomize", str(where)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    found = {d["metadata"]["name"]: d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "PrometheusRule"}
    assert set(found) == set(RULE_FILES)
    for rule in found.values():
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert rule["metadata"]["labels"]["app.kubernetes.io/component"] == "monitoring"
    return found


@pytest.fixture(scope="module")
def rules_dir(prometheus_rules: dict[str, Obj], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rule groups as plain Prometheus rule files, beside a copy of the unit tests that name them."""
    where = tmp_path_factory.mktemp("rules")
    for name, file in RULE_FILES.items():
        (where / file).write_text(yaml.safe_dump(prometheus_rules[name]["spec"]), encoding="utf-8")
    shutil.copy(UNIT_TESTS, where / UNIT_TESTS.name)
    return where


def _alerts(prometheus_rules: dict[str, Obj]) -> Iterator[Obj]:
    for rule in prometheus_rules.values():
        for group in rule["spec"]["groups"]:
            yield from group["rules"]


def _exported() -> dict[str, str]:
    """Every series name a fresh exporter serves → its type (counters and histograms by their sample names)."""
    names: dict[str, str] = {}
    for family in MetricsObserver().registry.collect():
        if family.type == "counter":
            names[f"{family.name}_total"] = "counter"
        elif family.type == "histogram":
            names.update({f"{family.name}_{suffix}": "histogram" for suffix in ("bucket", "sum", "count")})
        else:
            names[family.name] = family.type
    return names


def test_promtool_accepts_the_rules(rules_dir: Path) -> None:
    promtool = _tool(PROMTOOL, "install Debian's `prometheus` package (scripts/install-test-deps.sh does)")
    done = subprocess.run(
        [promtool, "check", "rules", *(str(rules_dir / f) for f in RULE_FILES.values())],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_each_alert_fires_when_it_should_and_not_otherwise(rules_dir: Path, prometheus_rules: dict[str, Obj]) -> None:
    promtool = _tool(PROMTOOL, "install Debian's `prometheus` package (scripts/install-test-deps.sh does)")
    done = subprocess.run(
        [promtool, "test", "rules", UNIT_TESTS.name], cwd=rules_dir, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # The unit tests cover every alert both ways, and name no alert that does not exist.
    cases = [case for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    names = {alert["alert"] for alert in _alerts(prometheus_rules)}
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert fires == names, f"alerts never tested firing: {names - fires}"
    assert silent == names, f"alerts never tested silent: {names - silent}"


def test_alerts_read_only_series_the_exporter_exports_with_the_codes_label_values(
    prometheus_rules: dict[str, Obj],
) -> None:
    exported = _exported()
    for alert in _alerts(prometheus_rules):
        expr = alert["expr"]
        names = set(re.findall(r"\bmigopt_\w+", expr))
        assert names, alert["alert"]
        assert names <= set(exported), f"{alert['alert']}: not exported: {names - set(exported)}"
        for label, value in re.findall(r'(\w+)=~?"([^"]*)"', expr):
            if label in KNOWN_VALUES:
                unknown = set(value.split("|")) - KNOWN_VALUES[label]
                assert not unknown, f"{alert['alert']}: {label} values the code never exports: {unknown}"
        for counter in (n for n in names if exported[n] == "counter"):
            assert re.search(rf"\b(rate|increase)\({counter}\b[^)]*\[\w+\]\)", expr), f"{alert['alert']}: {counter}"


def test_the_stuck_change_alert_names_exactly_the_active_phases(prometheus_rules: dict[str, Obj]) -> None:
    (stuck,) = [a for a in _alerts(prometheus_rules) if a["alert"] == "MigoptNodeChangeStuck"]
    (matcher,) = re.findall(r'phase=~"([^"]*)"', stuck["expr"])
    assert set(matcher.split("|")) == {p.value for p in ACTIVE}


def test_state_alerts_read_the_leaders_view(prometheus_rules: dict[str, Obj]) -> None:
    """The standby serves its gauges empty (and a former leader stale): an alert on a state gauge must read the
    replica that holds the Lease."""
    exported = _exported()
    state = {n for n, kind in exported.items() if kind == "gauge"} - {"migopt_leader"}
    checked = 0
    for alert in _alerts(prometheus_rules):
        gauges = set(re.findall(r"\bmigopt_\w+", alert["expr"])) & state
        if gauges:
            checked += 1
            assert LEADER_FILTER in alert["expr"], f"{alert['alert']} reads {gauges} from every replica"
    assert checked >= 4


def test_every_alert_has_a_severity_and_a_runbook_in_the_readme(prometheus_rules: dict[str, Obj]) -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## Alerts\n") :]
    section = section[: section.index("\n## ", 1)]
    for alert in _alerts(prometheus_rules):
        name = alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert {"summary", "description", "runbook"} <= set(alert["annotations"]), name
        assert "deploy/README.md" in alert["annotations"]["runbook"], name
        assert f"`{name}`" in section, f"{name} has no runbook entry in deploy/README.md, Alerts"
