"""Automation health on real processes: the health and alerts workers (`python -m services.<name>`) on real
Redis, automation events published as the publisher would, and real HTTP receivers verifying the signatures.

A sensor whose ticks fail is one notice naming the sensor, its code location and the error, routed by the
tags its ticks carry; its next successful tick resolves it. The publisher's heartbeats stopping is a notice
the alerts worker sends by itself (health plays no part: its own limit is minutes); the next heartbeat
resolves it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from asset_manager.settings import AppSettings
from libs.common.bus import Bus
from libs.common.events import (
    AUTOMATION,
    AutomationTickData,
    AutomationTicked,
    Event,
    PublisherHeartbeat,
    PublisherHeartbeatData,
    new_event,
)
from libs.common.testing import ServiceProcess, wait_for
from services.alerts.testing import RecordingReceiver

RECEIVERS = ("ops", "tier1")
SECRETS = {name: "whsec_" + f"automation-workers-{name}".encode().hex()[:40] for name in RECEIVERS}
SENSOR = "sensor:sales/orders_sensor"


@dataclass
class System:
    bus: Bus
    workers: dict[str, ServiceProcess]
    receivers: dict[str, RecordingReceiver]

    def notices(self, name: str) -> list[dict[str, Any]]:
        """What receiver `name` accepted, each body verified with its secret."""
        out = []
        for received in self.receivers[name].accepted():
            payload: dict[str, Any] = RecordingReceiver.verify(received, SECRETS[name])
            out.append(payload["data"])
        return out

    def diagnose(self) -> str:
        told = {n: [(d["kind"], d["asset_key"]) for d in self.notices(n)] for n in RECEIVERS}
        return "\n".join(w.output(2000) for w in self.workers.values()) + f"\nnotices: {told}"

    def publish(self, *events: Event) -> None:
        self.bus.publish_many(AUTOMATION, list(events))


@pytest.fixture
def system(settings: AppSettings, redis_client: redis.Redis, tmp_path: Path) -> Iterator[System]:
    receivers = {name: RecordingReceiver().start() for name in RECEIVERS}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AMS_") or k == "AMS_FAIL_ON_SKIP"},
        "DAGSTER_HOME": str(settings.dagster_home),
        "AMS_REDIS__URL": settings.redis.url,
        "AMS_BUS__PREFIX": settings.bus.prefix,
        "AMS_BUS__BLOCK_MS": "200",
        "AMS_LOGGING__FILE": str(tmp_path / "system.log"),
        "AMS_ALERTS__TICK_INTERVAL_S": "0.5",
        "AMS_ALERTS__PUBLISHER_WATCH_INTERVAL_S": "0.5",
        "AMS_ALERTS__PUBLISHER_HEARTBEAT_MIN_S": "1",
        "AMS_ALERTS__RECEIVERS": json.dumps(
            [
                {
                    "name": name,
                    "kind": "webhook",
                    "url": r.url,
                    "secret_env": f"AUTOMATION_SECRET_{name.upper()}",
                }
                for name, r in receivers.items()
            ]
        ),
        "AMS_ALERTS__ROUTES": json.dumps([{"tags": {"tier": "1"}, "receivers": ["tier1"]}]),
        "AMS_ALERTS__DEFAULT_RECEIVERS": json.dumps(["ops"]),
        **{f"AUTOMATION_SECRET_{name.upper()}": secret for name, secret in SECRETS.items()},
    }
    workers: dict[str, ServiceProcess] = {}
    try:
        for name in ("health", "alerts"):
            workers[name] = ServiceProcess.service(name, env, tmp_path / f"{name}.out")
        wait_for(lambda: all(w.answers() and w.ready() for w in workers.values()), 60, "two workers ready")
        yield System(Bus(redis_client, settings.bus), workers, receivers)
    finally:
        codes = {name: w.stop() for name, w in workers.items()}
        for r in receivers.values():
            r.stop()
        assert codes == dict.fromkeys(workers, 0), f"workers did not stop cleanly: {codes}"


_ids = iter(range(1, 10**6))


def tick(status: str, error: str | None = None) -> AutomationTicked:
    tick_id = next(_ids)
    data = AutomationTickData(
        kind="sensor",
        name="orders_sensor",
        code_location="sales",
        status=status,  # type: ignore[arg-type]
        tick_at=datetime.now(UTC),
        tick_id=tick_id,
        error=error,
        interval_s=30,
        owners=["team:sales"],
        tags={"tier": "1"},
    )
    return new_event(
        AutomationTicked, "automation.tick", identity=f"{tick_id}:{status}", data=data, source="t"
    )


def heartbeat() -> PublisherHeartbeat:
    data = PublisherHeartbeatData(code_location="sales", tick_at=datetime.now(UTC), interval_s=0.2)
    return new_event(
        PublisherHeartbeat,
        "automation.publisher_heartbeat",
        identity=f"sales:{time.time()}",
        data=data,
        source="t",
    )


def test_a_failing_sensor_and_a_silent_publisher_are_announced_and_resolved(system: System) -> None:
    system.publish(tick("FAILURE", "RuntimeError: the orders API answered 503"))

    def told(name: str, kind: str, key: str) -> list[dict[str, Any]]:
        return [n for n in system.notices(name) if n["kind"] == kind and n["asset_key"] == key]

    wait_for(lambda: told("tier1", "firing", SENSOR), 60, "the failing sensor's notice", system.diagnose)
    (firing,) = told("tier1", "firing", SENSOR)
    assert firing["object_kind"] == "sensor" and firing["code_location"] == "sales"
    assert firing["check"] == "tick_failures" and "the orders API answered 503" in firing["reason"]
    assert firing["owners"] == ["team:sales"] and firing["severity"] == "critical"
    system.publish(tick("SUCCESS"))
    wait_for(lambda: told("tier1", "resolved", SENSOR), 60, "the sensor's resolution", system.diagnose)
    assert len(told("tier1", "firing", SENSOR)) == 1

    # The publisher writes one heartbeat and then nothing: the alerts worker notices by itself.
    system.publish(heartbeat())
    wait_for(
        lambda: told("ops", "firing", "publisher:sales"), 60, "the late heartbeat's notice", system.diagnose
    )
    (late,) = told("ops", "firing", "publisher:sales")
    assert (
        late["check"] == "heartbeat"
        and late["object_kind"] == "publisher"
        and late["code_location"] == "sales"
    )
    system.publish(heartbeat())
    wait_for(
        lambda: told("ops", "resolved", "publisher:sales"), 60, "the heartbeat's return", system.diagnose
    )
    assert not [n for n in system.notices("tier1") if n["asset_key"] == "publisher:sales"]
