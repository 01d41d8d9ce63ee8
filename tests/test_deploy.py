"""The alert rules and the dashboard only use metrics that exist, and promtool accepts them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from consumer_sdk import ConsumerMetrics
from coordinator.metrics import Metrics
from tests.infra import ROOT

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "retention.json"
SPEC_METRICS = (
    "retention_records_processed_total",
    "retention_records_held_total",
    "retention_run_duration_seconds",
    "retention_oldest_unprocessed_days",
    "retention_events_published_total",
    "retention_acks_total",
    "retention_pending_acks",
    "retention_overdue_events",
)
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def exported_names() -> set[str]:
    """Every series name the coordinator's and the SDK's registries can expose."""
    names: set[str] = set()
    for registry in (Metrics(CollectorRegistry()).registry, ConsumerMetrics().registry):
        for family in registry.collect():
            names |= {family.name + suffix for suffix in _SUFFIXES[family.type]}
    return names


def alert_expressions() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(json.loads(DASHBOARD.read_text())["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def used(expr: str) -> set[str]:
    return set(re.findall(r"\b(retention_[a-z0-9_]+)\b", expr))


@pytest.mark.parametrize(
    ("where", "expr"), [*alert_expressions(), *dashboard_expressions()], ids=lambda v: v[:40]
)
def test_every_metric_used_exists(where: str, expr: str) -> None:
    names = used(expr)
    assert names, f"{where}: no retention metric in {expr!r}"
    unknown = names - exported_names()
    assert not unknown, f"{where} uses metrics no registry exports: {sorted(unknown)}"


def test_the_dashboard_shows_every_spec_metric() -> None:
    shown = set().union(*(used(expr) for _, expr in dashboard_expressions()))
    for name in SPEC_METRICS:
        assert any(n == name or n.startswith(name + "_") for n in shown), name


def test_the_required_alerts_exist() -> None:
    alerts = {name for name, _ in alert_expressions()}
    assert {
        "RetentionFallingBehind",
        "RetentionRunStale",
        "RetentionAcksOverdue",
        "RetentionHandlerFailureRate",
        "RetentionDeadLetterGrowth",
        "RetentionErasureRequestsOverdue",
    } <= alerts


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is missing: `make test` installs it (Debian: apt-get install prometheus)",
            pytrace=False,
        )
    return found


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_fire_each_alert() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", str(ALERTS_TEST)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ALERTS_TEST.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERTS_TEST.read_text()))
    assert tested == {name for name, _ in alert_expressions()}


def test_promtool_checks_the_compose_prometheus_config() -> None:
    # Also loads alerts.yml through rule_files, as the container does.
    config = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    result = subprocess.run(
        [promtool(), "check", "config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr
