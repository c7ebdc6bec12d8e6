"""Prometheus configuration and alert rules: promtool checks and the rules' unit tests."""

from __future__ import annotations

from pathlib import Path

import yaml
from deploytools import PROMETHEUS_CONFIG, RULE_FILES, RULE_TESTS, run, tool

REQUIRED_ALERTS = {"AmsWorkerDown", "AmsConsumerLagHigh", "AmsDeadLettersGrowing", "AmsAlertOutboxStuck",
                   "AmsAssetsFailed"}


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
    alerts = {r["alert"] for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    assert alerts >= REQUIRED_ALERTS
    tested = {t["alertname"] for path in RULE_TESTS for case in yaml.safe_load(path.read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    assert alerts - tested == set(), "alerts without a promtool unit test"
    # every rule fires in at least one test case, not only stays silent
    fired = {t["alertname"] for path in RULE_TESTS for case in yaml.safe_load(path.read_text())["tests"]
             for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert alerts - fired == set(), "alerts never shown firing by a unit test"


def test_every_alert_has_severity_and_description() -> None:
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
                    assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_scrape_config_targets_the_three_workers() -> None:
    config = yaml.safe_load(Path(PROMETHEUS_CONFIG).read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ams-workers"]
    targets = {t: sc["labels"]["worker"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"discovery:9101": "discovery", "health:9102": "health", "alerts:9103": "alerts"}
    assert config["rule_files"] == ["rules/*.yml"]
