"""Grafana: the provisioned datasource and the dashboard JSON (structure, queries, metric names)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from deploytools import DASHBOARDS, DATASOURCES, ROOT, all_panels, dashboard_targets, rule_expressions

# The issue's dashboard sections, each with the metric family that feeds it.
REQUIRED_SECTIONS = {
    "health overview by status and group": "ams_health_assets",
    "failing assets table": "ams_health_asset_status",
    "alerts firing": "ams_alerts_firing",
    "event throughput": "ams_events_consumed_total",
    "consumer lag": "ams_consumer_lag_entries",
    "DLQ depth": "ams_dead_letter_stream_length",
    "webhook failures": "ams_alert_notifications_failed_total",
    "discovery latency": "ams_discovery_duration_seconds_bucket",
    "evaluation latency": "ams_health_evaluation_seconds_bucket",
}
# Metrics the dashboard or rules use that no service defines yet (named after the issue); their panels
# show an empty result until then. Keep this list short and tell the owning service.
NOT_YET_DEFINED = {
    # services/health: a per-asset gauge (asset key is one of the few allowed per-asset labels) for the
    # failing-assets table: ams_health_asset_status{asset_key, group, status} 1
    "ams_health_asset_status",
}
PROMETHEUS_BUILTINS = {"up"}
PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "by",
    "without",
    "rate",
    "increase",
    "histogram_quantile",
    "absent",
    "and",
    "or",
    "unless",
    "le",
    "count",
    "on",
    "ignoring",
    "group_left",
    "deriv",
    "bool",
    "topk",
    "offset",
    "time",
}


def defined_metrics() -> set[str]:
    """Metric names our code registers with prometheus_client, with the series names they expose."""
    names: set[str] = set()
    for path in [*ROOT.glob("libs/**/*.py"), *ROOT.glob("services/**/*.py")]:
        text = path.read_text()
        for kind, name in re.findall(
            r"\b(Counter|Gauge|Histogram|BatchHistogram|Summary)\(\s*\"(ams_[a-z0-9_]+)\"", text
        ):
            names.add(name)
            if kind == "Counter" and not name.endswith("_total"):
                names.add(name + "_total")
            if kind in ("Histogram", "BatchHistogram", "Summary"):
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def metrics_in(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    without_by = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_labels)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_by)
    tokens = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", without_ranges))
    return {t for t in tokens if t not in PROMQL_WORDS}


@pytest.fixture(scope="module", params=DASHBOARDS, ids=lambda p: p.name)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    data = json.loads(request.param.read_text())
    assert isinstance(data, dict)
    return data


def test_dashboards_pick_their_prometheus_through_a_variable(dashboard: dict[str, Any]) -> None:
    """No hard-coded datasource uid: the dashboard works with whatever Prometheus a Grafana has (the one
    provisioned here, kube-prometheus-stack's, an import), chosen by the `datasource` variable."""
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert (
        source["type"] == "prometheus" and source["url"] == "http://prometheus:9090" and source["isDefault"]
    )
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]
            assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_dashboard_covers_every_section_of_the_issue() -> None:
    used = {m for _, _, expr in dashboard_targets() for m in metrics_in(expr)}
    missing = {section: metric for section, metric in REQUIRED_SECTIONS.items() if metric not in used}
    assert missing == {}
    (table,) = [
        p for path in DASHBOARDS for p in all_panels(json.loads(path.read_text())) if p["type"] == "table"
    ]
    assert table["targets"][0]["format"] == "table" and table["targets"][0]["instant"] is True


def test_queries_and_rules_use_metrics_our_services_define() -> None:
    defined = defined_metrics() | PROMETHEUS_BUILTINS
    used = {
        (where, m) for where, _, expr in dashboard_targets() + rule_expressions() for m in metrics_in(expr)
    }
    unknown = {(where, m) for where, m in used if m not in defined and m not in NOT_YET_DEFINED}
    assert unknown == set(), "metric names that no Counter/Gauge/Histogram in libs/ or services/ defines"


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, group) "
        '(rate(ams_handler_duration_seconds_bucket{group="x"}[5m])))'
    )
    assert metrics_in(expr) == {"ams_handler_duration_seconds_bucket"}
    assert metrics_in('up{job="ams-workers"} == 0 unless absent(ams_worker_ready)') == {
        "up",
        "ams_worker_ready",
    }
