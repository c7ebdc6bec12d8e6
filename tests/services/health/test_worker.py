"""The health worker as a real process on real Redis, reporting to a real HTTP receiver standing in for
the Dagster webserver's /report_asset_check/ endpoint."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from libs.common.bus import Bus, connect
from libs.common.events import (
    ASSETS,
    CHECK_NAMES,
    HEALTH,
    RUNS,
    HealthChanged,
    dagster_check_name,
    parse_event,
)
from libs.common.redis_server import free_port
from libs.common.testing import ServiceProcess, wait_for
from services.health.settings import HealthWorkerSettings

ROOT = Path(__file__).resolve().parents[3]


class CheckReceiver:
    """A loopback HTTP server recording POSTs; the very first one is answered 503 to exercise retries."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.refused = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if receiver.refused == 0:
                    receiver.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.posts.append((self.path, body))
                payload = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def latest(self, path: str) -> dict[str, dict[str, Any]]:
        return {body["check_name"]: body for p, body in self.posts if p == path}


@pytest.fixture
def receiver() -> Iterator[CheckReceiver]:
    r = CheckReceiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def worker(
    settings: HealthWorkerSettings, receiver: CheckReceiver, tmp_path: Path
) -> Iterator[ServiceProcess]:
    port = free_port()
    env = {
        **os.environ,
        "AMS_REDIS__URL": settings.redis.url,
        "AMS_BUS__PREFIX": settings.bus.prefix,
        "AMS_BUS__BLOCK_MS": "200",
        "AMS_SERVICES__HEALTH__PORT": str(port),
        "AMS_DAGSTER__URL": receiver.url,
        "AMS_LOGGING__FORMAT": "json",
        "DAGSTER_HOME": str(settings.dagster_home),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("AMS_LOGGING__FILE", None)
    process = ServiceProcess(
        [sys.executable, "-m", "services.health"], env, port=port, log=tmp_path / "worker.log", cwd=tmp_path
    ).start()
    wait_for(process.answers, what="health /healthz")
    yield process
    assert process.stop() == 0, process.output()


def health_events(client: redis.Redis, settings: HealthWorkerSettings) -> list[HealthChanged]:
    out = []
    for _, fields in client.xrange(f"{settings.bus.prefix}:{HEALTH}"):
        event = parse_event(fields[b"event"])
        assert isinstance(event, HealthChanged)
        out.append(event)
    return out


def test_failure_and_recovery_reach_health_stream_db_and_dagster(
    settings: HealthWorkerSettings,
    redis_client: redis.Redis,
    worker: ServiceProcess,
    receiver: CheckReceiver,
    ev: Any,
) -> None:
    bus = Bus(connect(settings.redis), settings.bus)
    now = time.time()
    failing = [
        ev.run("run-1", "STARTED", ["raw/orders"], start=now - 60),
        ev.run(
            "run-1", "FAILURE", ["raw/orders"], start=now - 60, end=now - 50, error="ConnectionError: db down"
        ),
    ]
    bus.publish_many(RUNS, failing)
    wait_for(
        lambda: any(e.data.status == "FAILED" for e in health_events(redis_client, settings)), what="FAILED"
    )
    (failed,) = health_events(redis_client, settings)
    assert failed.data.asset_key == "raw/orders" and failed.data.previous_status == "UNKNOWN"
    assert [c.check for c in failed.data.checks] == list(CHECK_NAMES)
    assert "ConnectionError: db down" in failed.data.reasons[0]

    db = sqlite3.connect(settings.data_dir / "health.db")
    assert db.execute("SELECT status, duration_s FROM executions WHERE run_id = 'run-1'").fetchone() == (
        "FAILURE",
        10.0,
    )
    assert db.execute("SELECT status FROM asset_health WHERE asset_key = 'raw/orders'").fetchone() == (
        "FAILED",
    )

    path = "/report_asset_check/raw/orders"
    wait_for(lambda: len(receiver.latest(path)) == len(CHECK_NAMES), what="all checks reported to Dagster")
    reported = receiver.latest(path)["ams_execution_status"]  # our own name in Dagster
    assert reported["passed"] is False and reported["severity"] == "ERROR"
    assert "db down" in reported["metadata"]["reason"]
    assert receiver.refused == 1  # the first POST got a 503 and was retried

    recovery = [
        ev.run("run-2", "SUCCESS", ["raw/orders"], start=now - 30, end=now - 20),
        ev.mat("raw/orders", now - 21, run_id="run-2", rows=1200, columns=[("id", "int")]),
    ]
    bus.publish_many(ASSETS, recovery[1:])
    bus.publish_many(RUNS, recovery[:1])
    wait_for(lambda: health_events(redis_client, settings)[-1].data.status == "HEALTHY", what="HEALTHY")
    wait_for(
        lambda: receiver.latest(path)[dagster_check_name("execution_status")]["passed"] is True,
        what="passed check reported",
    )

    # Redelivered (republished) events change nothing and publish nothing.
    before = len(health_events(redis_client, settings))
    rows = db.execute("SELECT COUNT(*) FROM materializations").fetchone()
    bus.publish_many(RUNS, failing)
    bus.publish_many(ASSETS, recovery[1:])
    wait_for(
        lambda: Bus(redis_client, settings.bus).unsettled("health", [ASSETS, RUNS]) == 0,
        what="redeliveries consumed",
    )
    assert len(health_events(redis_client, settings)) == before
    assert db.execute("SELECT COUNT(*) FROM materializations").fetchone() == rows
    assert db.execute("SELECT status FROM asset_health WHERE asset_key = 'raw/orders'").fetchone() == (
        "HEALTHY",
    )

    # The status gauges follow within a second (rebuilt at most once a second).
    wait_for(lambda: "ams_health_asset_status{" not in worker.metrics(), what="status gauges refreshed")
    metrics = worker.metrics()
    assert re.search(r'ams_health_assets\{group="[^"]*",status="HEALTHY"\} 1\.0', metrics)
    assert "ams_health_asset_status{" not in metrics  # only unhealthy assets get a per-asset series
    assert 'ams_health_check_results_total{check="execution_status",outcome="error"}' in metrics
    assert (
        "ams_health_event_lag_seconds_bucket" in metrics and "ams_health_evaluation_seconds_count" in metrics
    )
    db.close()
