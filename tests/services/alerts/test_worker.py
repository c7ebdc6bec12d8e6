"""The alerts worker as a real process (`python -m services.alerts`) on real Redis with real receivers."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from libs.common.bus import Bus, connect
from libs.common.events import (
    ASSET_CHANGES,
    HEALTH,
    AssetChanged,
    AssetChangeData,
    AssetSpecData,
    CheckResult,
    HealthChanged,
    HealthChangedData,
    new_event,
    utcnow,
)
from libs.common.redis_server import free_port
from libs.common.settings import load_settings
from libs.common.testing import ServiceProcess, wait_for
from services.alerts.settings import AlertsWorkerSettings
from services.alerts.testing import RecordingReceiver, Reply

ROOT = Path(__file__).resolve().parents[3]
SECRET = "whsec_" + base64.b64encode(b"worker-test-secret-0123456789abc").decode()


class AlertsWorker(ServiceProcess):
    """`python -m services.alerts` with AMS_* pointing at the test Redis, prefix, ports and DAGSTER_HOME."""

    def __init__(
        self, redis_url: str, prefix: str, home: Path, receivers: list[dict[str, Any]], **alerts: str
    ) -> None:
        port = free_port()
        self.home = home
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AMS_") or k == "AMS_CONFIG_DIR"},
            "AMS_REDIS__URL": redis_url,
            "AMS_BUS__PREFIX": prefix,
            "AMS_BUS__BLOCK_MS": "200",
            "AMS_BUS__CLAIM_IDLE_MS": "500",
            "AMS_BUS__CLAIM_INTERVAL_S": "0.5",
            "AMS_SERVICES__ALERTS__PORT": str(port),
            "AMS_SERVICES__ALERTS__HOST": "127.0.0.1",
            "AMS_LOGGING__FILE": str(home / "alerts.log"),
            "AMS_ALERTS__RECEIVERS": json.dumps(receivers),
            "AMS_ALERTS__TICK_INTERVAL_S": "0.5",
            "AMS_ALERTS__RETRY_BASE_S": "0.1",
            "AMS_ALERTS__RETRY_MAX_DELAY_S": "0.5",
            **{f"AMS_ALERTS__{k.upper()}": v for k, v in alerts.items()},
            "DAGSTER_HOME": str(home),
            "WORKER_WHSEC": SECRET,
            "PYTHONPATH": str(ROOT),
        }
        super().__init__([sys.executable, "-m", "services.alerts"], env, port=port, log=home / "worker.out")
        self.start()
        wait_for(self.answers, what="alerts worker /healthz")

    def notifications(self) -> list[dict[str, Any]]:
        db = self.home / "monitor.db"
        if not db.exists():
            return []
        conn = sqlite3.connect(db, timeout=5)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT id, kind, status, attempts FROM notifications")]
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()


@pytest.fixture
def bus(redis_url: str, bus_prefix: str) -> Iterator[Bus]:
    settings = load_settings(AlertsWorkerSettings, redis={"url": redis_url}, bus={"prefix": bus_prefix})
    client = connect(settings.redis)
    yield Bus(client, settings.bus)
    client.close()


def health_event(asset: str, status: str, outcome: str, n: int) -> HealthChanged:
    data = HealthChangedData(
        asset_key=asset,
        status=status,  # type: ignore[arg-type]
        previous_status="HEALTHY" if status == "FAILED" else "FAILED",
        checks=[
            CheckResult(
                check="execution_status",
                outcome=outcome,  # type: ignore[arg-type]
                reason="run r1 failed: ZeroDivisionError" if outcome == "error" else "run r2 succeeded",
                values={"failed_runs": 1 if outcome == "error" else 0},
            )
        ],
        evaluated_at=utcnow(),
        downstream=["sales/report"],
    )
    return new_event(HealthChanged, "health.changed", identity=f"{asset}|{n}", data=data, source="test")


def test_failed_then_healthy_sends_signed_firing_then_resolved(
    redis_url: str, bus_prefix: str, bus: Bus, tmp_path: Path
) -> None:
    with RecordingReceiver() as receiver:
        worker = AlertsWorker(
            redis_url,
            bus_prefix,
            tmp_path,
            [{"name": "hook", "url": receiver.url, "secret_env": "WORKER_WHSEC"}],
            DAGSTER_UI_URL="http://dagster.test:3000",
        )
        try:
            spec = AssetSpecData(key="sales/orders", owners=["ann@example.com", "team:sales"], group="sales")
            registered = new_event(
                AssetChanged,
                "asset.registered",
                identity="sales/orders|1",
                data=AssetChangeData(spec=spec, version=1),
                source="test",
            )
            bus.publish_many(ASSET_CHANGES, [registered])
            bus.publish_many(HEALTH, [health_event("sales/orders", "FAILED", "error", 1)])
            (firing,) = receiver.wait_for(lambda reqs: len(reqs) >= 1)
            body = RecordingReceiver.verify(firing, SECRET)
            assert body["type"] == "alert.firing"
            data = body["data"]
            assert data["asset_key"] == "sales/orders" and data["severity"] == "critical"
            assert data["owners"] == ["ann@example.com", "team:sales"] and data["teams"] == ["sales"]
            assert data["dagster_url"] == "http://dagster.test:3000/assets/sales/orders"
            assert data["downstream"] == ["sales/report"] and "failed_runs=1" in data["why"]

            bus.publish_many(HEALTH, [health_event("sales/orders", "HEALTHY", "passed", 2)])
            got = receiver.wait_for(lambda reqs: len(reqs) >= 2)
            resolved = RecordingReceiver.verify(got[1], SECRET)
            assert (
                resolved["type"] == "alert.resolved"
                and resolved["data"]["fingerprint"] == data["fingerprint"]
            )
            assert got[0].webhook_id != got[1].webhook_id
            wait_for(
                lambda: 'ams_alert_notifications_sent_total{receiver="hook"} 2.0' in worker.metrics(),
                what="sent counter",
            )
            metrics = worker.metrics()
            assert 'ams_alerts_firing{severity="critical"}' in metrics
            assert "ams_alert_delivery_latency_seconds_count" in metrics
        finally:
            assert worker.stop() == 0


def test_sigkill_during_retries_resumes_and_delivers_once(
    redis_url: str, bus_prefix: str, bus: Bus, tmp_path: Path
) -> None:
    receiver = RecordingReceiver(script=[Reply(status=503)] * 1000).start()
    worker = AlertsWorker(
        redis_url, bus_prefix, tmp_path, [{"name": "hook", "url": receiver.url, "secret_env": "WORKER_WHSEC"}]
    )
    try:
        bus.publish_many(HEALTH, [health_event(f"asset_{i}", "FAILED", "error", i) for i in range(5)])
        wait_for(
            lambda: (
                len(worker.notifications()) == 5 and all(n["attempts"] >= 2 for n in worker.notifications())
            ),
            what="5 notifications retried",
        )
        worker.kill()
        assert {n["status"] for n in worker.notifications()} == {"pending"}
        receiver.script = []  # the receiver recovers
        worker.start()
        wait_for(lambda: {n["status"] for n in worker.notifications()} == {"delivered"}, what="all delivered")
        accepted = receiver.accepted()
        assert sorted(r.webhook_id or "" for r in accepted) == sorted(n["id"] for n in worker.notifications())
        for got in accepted:
            assert RecordingReceiver.verify(got, SECRET)["type"] == "alert.firing"
        # the health events were acknowledged before the kill or redelivered after: no duplicate alerts
        assert len(worker.notifications()) == 5
    finally:
        assert worker.stop() == 0
        receiver.stop()
