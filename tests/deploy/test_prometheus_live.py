"""A real Prometheus (Debian's) scraping the three running workers; every dashboard query and every alert
rule expression is evaluated through its HTTP API and must succeed (data or a valid empty result).

The stack is docker-compose.yml's: the prometheus service's own command, with /etc/prometheus pointing at a
copy of deploy/prometheus whose targets are the local workers (and 2 s intervals, so the test is quick)."""

from __future__ import annotations

import copy
import http.server
import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import redis
import yaml
from composestack import Stack
from deploytools import (
    COMPOSE_DEV,
    PROMETHEUS_DIR,
    ROOT,
    compose_config,
    dashboard_targets,
    rule_expressions,
    tool,
    wait_for,
)

WORKERS = ["discovery", "health", "alerts"]
ALERTMANAGER_EXAMPLE = ROOT / "deploy" / "alertmanager" / "alertmanager.example.yml"


def local_prometheus_dir(stack: Stack, dest: Path) -> Path:
    shutil.copytree(PROMETHEUS_DIR, dest)
    path = dest / "prometheus.yml"
    config = yaml.safe_load(path.read_text())
    config["global"]["scrape_interval"] = "2s"
    config["global"]["evaluation_interval"] = "2s"
    config["global"]["scrape_timeout"] = "1s"
    for manager in config["alerting"]["alertmanagers"]:
        for static in manager["static_configs"]:
            static["targets"] = [
                f"127.0.0.1:{stack.port_map[int(t.rsplit(':', 1)[1])]}" for t in static["targets"]
            ]
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            mapped = []
            for target in static["targets"]:
                _, port = target.rsplit(":", 1)
                mapped.append(f"127.0.0.1:{stack.port_map[int(port)]}")
            static["targets"] = mapped
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


@dataclass
class Live:
    url: str
    redis_url: str
    prefix: str
    notifications: list[dict[str, Any]]


class _Receiver(http.server.BaseHTTPRequestHandler):
    """An on-call tool's webhook: records what Alertmanager posts."""

    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def local_alertmanager_config(receiver_url: str, dest: Path) -> Path:
    """deploy/alertmanager/alertmanager.example.yml with its webhook pointed at `receiver_url`, and
    Alertmanager's waits shortened so the test is quick."""
    config = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text())
    config["route"].update({"group_wait": "1s", "group_interval": "2s"})
    (webhook,) = [w for r in config["receivers"] for w in r.get("webhook_configs", [])]
    webhook["url"] = receiver_url
    dest.write_text(yaml.safe_dump(config))
    return dest


@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    for name in ("prometheus", "prometheus-alertmanager", "wget"):
        tool(name)
    compose = copy.deepcopy(compose_config(COMPOSE_DEV))
    workdir = tmp_path_factory.mktemp("prometheus-live")
    prefix = f"test-deploy-{uuid.uuid4().hex[:8]}"
    stack = Stack(
        compose,
        workdir,
        provided={"redis": int(urlparse(redis_url).port or 6379)},
        extra_env={"AMS_BUS__PREFIX": prefix},
    )
    local = local_prometheus_dir(stack, workdir / "prometheus-config")
    service = compose["services"]["prometheus"]
    service["volumes"] = [
        v.replace(str(PROMETHEUS_DIR), str(local)) if isinstance(v, str) else v for v in service["volumes"]
    ]
    received: list[dict[str, Any]] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    routed = local_alertmanager_config(
        f"http://127.0.0.1:{server.server_address[1]}/alertmanager", workdir / "alertmanager.yml"
    )
    manager = compose["services"]["alertmanager"]
    manager["volumes"] = [
        v.replace(str(ALERTMANAGER_EXAMPLE), str(routed)) if isinstance(v, str) else v
        for v in manager["volumes"]
    ]
    try:
        stack.up("prometheus")  # depends_on: the three workers, healthy first
        url = f"http://127.0.0.1:{stack.port_map[9090]}"

        def all_up() -> bool:
            targets = api(url, "targets")["activeTargets"]
            return {
                t["labels"].get("worker")
                for t in targets
                if t["labels"]["job"] == "ams-workers" and t["health"] == "up"
            } == set(WORKERS)

        wait_for(
            all_up,
            timeout_s=60,
            what="all worker targets up",
            diagnose=lambda: str(api(url, "targets")["activeTargets"]),
        )
        yield Live(url, redis_url, prefix, received)
    finally:
        stack.down()
        server.shutdown()
        server.server_close()
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def api(base: str, path: str, **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{base}/api/v1/{path}", params=params, timeout=30)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{path} {params}: {body}"
    return body["data"]


@pytest.fixture
def prometheus(live: Live) -> str:
    return live.url


def test_scrapes_the_three_workers(prometheus: str) -> None:
    up = api(prometheus, "query", query='up{job="ams-workers"}')["result"]
    assert sorted((r["metric"]["worker"], r["value"][1]) for r in up) == [(w, "1") for w in sorted(WORKERS)]
    # No worker reports itself unready. (libs/common/worker.py exports ams_worker_ready only once a problem
    # occurred, so a worker healthy since its start has no series yet: checked as "no 0", not "all 1".)
    ready = api(prometheus, "query", query="ams_worker_ready")["result"]
    assert [r["metric"]["service"] for r in ready if r["value"][1] != "1"] == []


@pytest.mark.parametrize(("where", "title", "expr"), dashboard_targets(), ids=lambda v: str(v)[:60])
def test_dashboard_query_evaluates(prometheus: str, where: str, title: str, expr: str) -> None:
    instant = api(prometheus, "query", query=expr)
    assert instant["resultType"] in {"vector", "scalar", "matrix"}
    end = httpx.get(f"{prometheus}/api/v1/query", params={"query": "time()"}, timeout=10).json()["data"][
        "result"
    ][0]
    ranged = api(prometheus, "query_range", query=expr, start=float(end) - 300, end=float(end), step=15)
    assert ranged["resultType"] == "matrix"


@pytest.mark.parametrize(("where", "name", "expr"), rule_expressions(), ids=lambda v: str(v)[:60])
def test_rule_expression_evaluates(prometheus: str, where: str, name: str, expr: str) -> None:
    result = api(prometheus, "query", query=expr)
    assert result["resultType"] in {"vector", "scalar"}


def test_prometheus_evaluates_every_rule_without_error(prometheus: str) -> None:
    expected = {name for _, name, _ in rule_expressions()}

    def evaluated() -> bool:
        rules = [r for g in api(prometheus, "rules")["groups"] for r in g["rules"]]
        return {r["name"] for r in rules if r.get("lastEvaluation", "").startswith("0001")} == set() and {
            r["name"] for r in rules
        } == expected

    wait_for(evaluated, timeout_s=60, what="every rule evaluated once")
    rules = [r for g in api(prometheus, "rules")["groups"] for r in g["rules"]]
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    # With three healthy workers and no traffic, none of the alerts fires.
    firing = [a for a in api(prometheus, "alerts")["alerts"] if a["state"] == "firing"]
    assert firing == []


def test_a_dead_letter_reaches_the_dashboard_and_fires_its_alert(live: Live) -> None:
    """A message that fails validation on `runs`: health dead-letters it, Prometheus sees it, the rule
    fires."""
    client = redis.Redis.from_url(live.redis_url)
    try:
        client.xadd(
            f"{live.prefix}:runs", {"event": json.dumps({"not": "an event"}), "type": "run.succeeded"}
        )
    finally:
        client.close()
    dead = 'sum by (stream, group) (ams_dead_letters_total{stream="runs"})'

    def seen() -> bool:
        return [(r["metric"], r["value"][1]) for r in api(live.url, "query", query=dead)["result"]] == [
            ({"stream": "runs", "group": "health"}, "1")
        ]

    wait_for(
        seen,
        timeout_s=60,
        what="the dead letter counted by Prometheus",
        diagnose=lambda: str(
            api(live.url, "query", query="ams_dead_letters_total or ams_events_consumed_total")
        ),
    )

    def firing() -> bool:
        return any(
            a["labels"]["alertname"] == "AmsDeadLettersGrowing"
            and a["state"] == "firing"
            and a["labels"]["stream"] == "runs"
            for a in api(live.url, "alerts")["alerts"]
        )

    wait_for(firing, timeout_s=150, what="AmsDeadLettersGrowing firing (after its `for: 1m`)")

    # Prometheus sends it to Alertmanager, which routes it to the receiver of its configuration
    def delivered() -> bool:
        return any(
            a["labels"]["alertname"] == "AmsDeadLettersGrowing"
            and a["status"] == "firing"
            and a["annotations"]["runbook_url"].startswith("docs/runbooks.md#")
            for n in live.notifications
            for a in n["alerts"]
        )

    wait_for(
        delivered,
        timeout_s=60,
        what="the alert delivered to the receiver through Alertmanager",
        diagnose=lambda: json.dumps(live.notifications)[:2000],
    )
    consumed = api(
        live.url, "query", query='sum by (stream, group) (ams_events_consumed_total{stream="runs"})'
    )
    assert [r["metric"]["group"] for r in consumed["result"]] == ["health"]
