"""Prometheus configuration and alert rules: promtool checks and the rules' unit tests."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from deploytools import (
    COMPOSE_DEV,
    COMPOSE_PROD,
    PROMETHEUS_CONFIG,
    ROOT,
    RULE_FILES,
    RULE_TESTS,
    run,
    tool,
)

ALERTMANAGER_EXAMPLE = ROOT / "deploy" / "alertmanager" / "alertmanager.example.yml"

REQUIRED_ALERTS = {
    "AmsWorkerDown",
    "AmsConsumerLagHigh",
    "AmsDeadLettersGrowing",
    "AmsAlertOutboxStuck",
    "AmsAssetsFailed",
}


def test_promtool_check_config() -> None:
    run([tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG)])


def test_promtool_check_rules() -> None:
    assert RULE_FILES
    run([tool("promtool"), "check", "rules", *map(str, RULE_FILES)])


def test_promtool_test_rules() -> None:
    assert RULE_TESTS
    proc = run([tool("promtool"), "test", "rules", *map(str, RULE_TESTS)])
    assert "SUCCESS" in proc.stdout


def test_required_alerts_exist_and_each_has_a_unit_test() -> None:
    alerts = {
        r["alert"]
        for path in RULE_FILES
        for g in yaml.safe_load(path.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    assert alerts >= REQUIRED_ALERTS
    tested = {
        t["alertname"]
        for path in RULE_TESTS
        for case in yaml.safe_load(path.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
    }
    assert alerts - tested == set(), "alerts without a promtool unit test"
    # every rule fires in at least one test case, not only stays silent
    fired = {
        t["alertname"]
        for path in RULE_TESTS
        for case in yaml.safe_load(path.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    assert alerts - fired == set(), "alerts never shown firing by a unit test"


def test_every_alert_has_severity_and_description() -> None:
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
                    assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule[
                        "alert"
                    ]


def test_scrape_config_targets_the_three_workers() -> None:
    config = yaml.safe_load(Path(PROMETHEUS_CONFIG).read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ams-workers"]
    targets = {t: sc["labels"]["worker"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"discovery:9101": "discovery", "health:9102": "health", "alerts:9103": "alerts"}
    assert config["rule_files"] == ["rules/*.yml"]


# Labels Prometheus owns on every scraped series (prometheus.yml: job, instance, and the target label worker).
TARGET_LABELS = {"job", "instance", "worker"}
RUNBOOKS = ROOT / "docs" / "runbooks.md"


def test_every_alert_waits_and_links_its_runbook() -> None:
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+\s+(.+)$", RUNBOOKS.read_text(), flags=re.M)
    }
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                assert rule.get("for"), f"{rule['alert']} has no `for:` (fires on a single evaluation)"
                page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
                assert (ROOT / page) == RUNBOOKS and anchor in headings, rule["alert"]


def test_rule_tests_feed_the_label_sets_prometheus_stores() -> None:
    """Each input series carries job/instance/worker as a scrape adds them, so a metric label that collides
    with them (and would be renamed exported_<label>) cannot pass the unit tests."""
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for series in case["input_series"]:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', series["series"]))
                assert set(labels) >= TARGET_LABELS, series["series"]
                assert labels["job"] == "ams-workers", series["series"]


def test_no_metric_of_ours_uses_a_label_prometheus_sets_on_targets() -> None:
    import importlib

    from prometheus_client import REGISTRY

    for module in (
        "libs.common.metrics",
        "services.discovery.metrics",
        "services.health.metrics",
        "services.alerts.metrics",
    ):
        importlib.import_module(module)
    clashes = {
        collector._name: set(collector._labelnames) & TARGET_LABELS  # type: ignore[attr-defined]
        for collector in list(REGISTRY._collector_to_names)  # type: ignore[attr-defined]
        if str(getattr(collector, "_name", "")).startswith("ams_")
        and set(getattr(collector, "_labelnames", ())) & TARGET_LABELS
    }
    assert clashes == {}, "rename these labels: Prometheus would store them as exported_<label>"


def test_alerts_are_sent_to_the_alertmanager_of_the_compose_stacks() -> None:
    config = yaml.safe_load(Path(PROMETHEUS_CONFIG).read_text())
    (manager,) = config["alerting"]["alertmanagers"]
    assert manager["static_configs"][0]["targets"] == ["alertmanager:9093"]
    for compose in (COMPOSE_DEV, COMPOSE_PROD):
        services = yaml.safe_load(compose.read_text())["services"]
        assert "--web.listen-address=0.0.0.0:9093" in services["alertmanager"]["command"], compose.name
        assert "alertmanager" in services["prometheus"]["depends_on"], compose.name


def test_alertmanager_example_config_is_valid() -> None:
    run([tool("amtool"), "check-config", str(ALERTMANAGER_EXAMPLE)])
    config = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text())
    receivers = {r["name"] for r in config["receivers"]}
    assert config["route"]["receiver"] in receivers
