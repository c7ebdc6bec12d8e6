"""A real Prometheus (Debian's) scraping the three running workers; every dashboard query and every alert
rule expression is evaluated through its HTTP API and must succeed (data or a valid empty result).

The stack is docker-compose.yml's: the prometheus service's own command, with /etc/prometheus pointing at a
copy of deploy/prometheus whose targets are the local workers (and 2 s intervals, so the test is quick).
The stack has a Redis of its own, so that the last test can stop it.

The rules are the shipped file. The one setting changed is health's
`health.automation.publisher_rule_after_s` (330 s shipped; a few seconds here), which health exports and
AmsPublisherHeartbeatLate compares the heartbeat's age with."""

from __future__ import annotations

import copy
import http.server
import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

from libs.common.bus import Bus, connect
from libs.common.events import AUTOMATION, PublisherHeartbeat, PublisherHeartbeatData, new_event
from libs.common.redis_server import LocalRedis
from libs.common.settings import BusSettings, RedisSettings

WORKERS = ["discovery", "health", "alerts"]
LOCATION = "live-location"
# health.automation.publisher_rule_after_s here: the rule fires this long (plus its `for`) after the
# publisher's last heartbeat.
RULE_AFTER_S = 10
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
    redis: LocalRedis
    prefix: str
    notifications: list[dict[str, Any]]

    @property
    def redis_url(self) -> str:
        return self.redis.url


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
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    for name in ("prometheus", "prometheus-alertmanager", "wget"):
        tool(name)
    compose = copy.deepcopy(compose_config(COMPOSE_DEV))
    workdir = tmp_path_factory.mktemp("prometheus-live")
    prefix = f"test-deploy-{uuid.uuid4().hex[:8]}"
    own_redis = LocalRedis(appendonly=True, directory=workdir / "redis").start()
    stack = Stack(
        compose,
        workdir,
        provided={"redis": own_redis.port},
        extra_env={
            "AMS_BUS__PREFIX": prefix,
            "AMS_HEALTH__AUTOMATION__PUBLISHER_RULE_AFTER_S": str(RULE_AFTER_S),
        },
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
        yield Live(url, own_redis, prefix, received)
    finally:
        stack.down()
        server.shutdown()
        server.server_close()
        own_redis.stop()


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


class Publisher:
    """Writes a publisher heartbeat to the automation stream every half second, as the publishing sensor's
    ticks do; while Redis is down its writes fail and it keeps trying, as the sensor does."""

    def __init__(self, live: Live) -> None:
        self.bus = Bus(
            connect(RedisSettings(url=live.redis_url, socket_timeout_s=1.0)), BusSettings(prefix=live.prefix)
        )
        self.written = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            event = new_event(
                PublisherHeartbeat,
                "automation.publisher_heartbeat",
                identity=f"{LOCATION}:{time.time()!r}",
                data=PublisherHeartbeatData(code_location=LOCATION, tick_at=time.time(), interval_s=1.0),
                source="test-publisher",
            )
            try:
                self.bus.publish_many(AUTOMATION, [event])
                self.written += 1
            except redis.RedisError:
                self.failed += 1

    def __enter__(self) -> Publisher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.bus.client.close()


def test_redis_down_fires_the_publisher_heartbeat_rule(live: Live) -> None:
    """Redis stops: the publisher cannot write its heartbeats, health's gauge keeps the last one's time, and
    the shipped AmsPublisherHeartbeatLate fires in Prometheus (health.automation.publisher_rule_after_s,
    exported by health, shortened here). Redis back, the next heartbeat ends it. (Run last: it stops the
    stack's Redis.)"""
    heartbeat = f'ams_publisher_last_heartbeat_timestamp_seconds{{code_location="{LOCATION}"}}'

    def alert() -> list[dict[str, Any]]:
        return [
            a
            for a in api(live.url, "alerts")["alerts"]
            if a["labels"]["alertname"] == "AmsPublisherHeartbeatLate"
        ]

    def scraped() -> float:
        result = api(live.url, "query", query=heartbeat)["result"]
        return float(result[0]["value"][1]) if result else 0.0

    with Publisher(live) as publisher:
        threshold = api(live.url, "query", query="ams_publisher_heartbeat_rule_after_seconds")["result"]
        assert [r["value"][1] for r in threshold] == [str(RULE_AFTER_S)]
        # Heartbeats flow: Prometheus scrapes them moving, and the rule stays quiet.
        seen: set[float] = set()

        def moving() -> bool:
            seen.add(scraped())
            return len(seen - {0.0}) >= 2

        wait_for(moving, timeout_s=60, what="the heartbeat gauge scraped, moving")
        assert alert() == [], alert()

        live.redis.stop()
        wait_for(
            lambda: any(a["state"] == "firing" for a in alert()),
            timeout_s=90,
            what="AmsPublisherHeartbeatLate firing with Redis down",
            diagnose=lambda: f"{alert()} {api(live.url, 'query', query=heartbeat)}",
        )
        (firing,) = alert()
        assert firing["labels"]["code_location"] == LOCATION and firing["labels"]["severity"] == "critical"
        assert "has written no heartbeat for" in firing["annotations"]["description"], firing
        assert publisher.failed > 0  # it was trying all along

        live.redis.start()
        wait_for(
            lambda: alert() == [],
            timeout_s=90,
            what="AmsPublisherHeartbeatLate gone once heartbeats flow again",
            diagnose=lambda: f"{alert()} {api(live.url, 'query', query=heartbeat)}",
        )
