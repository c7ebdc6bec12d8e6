"""Automation objects in the alerts service: health events about sensors route like assets' (owners, tags,
code location), and the worker's own watch of the publisher's heartbeat on real Redis fires and resolves."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from libs.common.bus import Bus, Delivery
from libs.common.events import (
    AUTOMATION,
    HEALTH,
    CheckResult,
    HealthChanged,
    HealthChangedData,
    PublisherHeartbeat,
    PublisherHeartbeatData,
    new_event,
    utcnow,
)
from libs.common.settings import load_settings
from libs.common.store import Store
from libs.common.testing import wait_for
from services.alerts.service import AlertService
from services.alerts.settings import AlertsWorkerSettings
from services.alerts.store import open_store
from services.alerts.watch import PublisherWatch


def make_settings(tmp_path: Path, **alerts: Any) -> AlertsWorkerSettings:
    return load_settings(
        AlertsWorkerSettings,
        dagster_home=str(tmp_path),
        logging={"file": None},
        alerts={
            "incident_wait_s": 0,
            "dagster_ui_url": "http://dagster.local:3000",
            "receivers": [
                {"name": "ops", "url": "http://127.0.0.1:9/ops"},
                {"name": "tier1", "url": "http://127.0.0.1:9/tier1"},
            ],
            "routes": [{"receivers": ["tier1"], "tags": {"tier": "1"}}],
            "default_receivers": ["ops"],
            **alerts,
        },
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(make_settings(tmp_path))
    yield s
    s.close()


def outbox(store: Store) -> list[dict[str, Any]]:
    with store.read() as conn:
        rows = conn.execute("SELECT receiver, kind, content FROM notifications ORDER BY created_at, receiver")
        return [{**dict(r), "content": json.loads(r["content"])} for r in rows]


def sensor_health(status: str, outcome: str, n: int) -> Delivery:
    data = HealthChangedData(
        asset_key="sensor:loc/orders_sensor",
        status=status,
        previous_status="UNKNOWN",  # type: ignore[arg-type]
        checks=[
            CheckResult(
                check="tick_failures",
                outcome=outcome,  # type: ignore[arg-type]
                reason="tick failed: RuntimeError: boom" if outcome == "error" else "last tick succeeded",
            ),
            CheckResult(check="stopped", outcome="passed", reason="ticking"),
        ],
        evaluated_at=utcnow(),
        owners=["team:ops"],
        code_location="loc",
        object_kind="sensor",
        tags={"tier": "1"},
        transition=n,
    )
    event = new_event(HealthChanged, "health.changed", identity=f"sensor|{n}", data=data, source="test")
    return Delivery(HEALTH, f"{n}-0", event)


def test_a_sensor_alert_routes_by_its_tags_and_names_kind_and_location(tmp_path: Path, store: Store) -> None:
    service = AlertService(store, make_settings(tmp_path))
    service.handle([sensor_health("FAILED", "error", 1)])
    (firing,) = outbox(store)
    assert firing["receiver"] == "tier1" and firing["kind"] == "firing"
    content = firing["content"]
    assert content["asset_key"] == "sensor:loc/orders_sensor" and content["check"] == "tick_failures"
    assert content["object_kind"] == "sensor" and content["code_location"] == "loc"
    assert (
        "boom" in content["reason"]
        and content["owners"] == ["team:ops"]
        and content["severity"] == "critical"
    )
    assert content["dagster_url"] is None  # not an asset page
    service.handle([sensor_health("HEALTHY", "passed", 2)])
    assert [(n["receiver"], n["kind"]) for n in outbox(store)] == [("tier1", "firing"), ("tier1", "resolved")]


def heartbeat(bus: Bus, interval_s: float) -> None:
    data = PublisherHeartbeatData(code_location="loc", tick_at=utcnow(), interval_s=interval_s)
    event = new_event(
        PublisherHeartbeat,
        "automation.publisher_heartbeat",
        identity=f"loc:{time.time()}",
        data=data,
        source="test",
    )
    bus.publish_many(AUTOMATION, [event])


def test_the_worker_fires_and_resolves_a_late_publisher_heartbeat_from_redis(
    tmp_path: Path, store: Store, redis_client: redis.Redis, bus_prefix: str
) -> None:
    settings = make_settings(tmp_path, publisher_heartbeat_min_s=0.5, publisher_heartbeat_intervals=3)
    service = AlertService(store, settings)
    bus = Bus(redis_client, settings.bus.model_copy(update={"prefix": bus_prefix}))
    watch = PublisherWatch(redis_client, bus.key(AUTOMATION))

    def check() -> int:
        return service.publisher_heartbeats(watch.read(), watch.seen)

    assert check() == 0 and outbox(store) == []  # no publisher seen yet: nothing to say
    heartbeat(bus, interval_s=0.1)  # limit: max(3 x 0.1 s, 0.5 s)
    check()
    assert outbox(store) == [] and watch.seen["loc"].interval_s == 0.1
    wait_for(lambda: check() > 0, timeout_s=30, what="the late heartbeat's notice")
    (firing,) = outbox(store)
    content = firing["content"]
    assert firing["receiver"] == "ops" and firing["kind"] == "firing"
    assert content["asset_key"] == "publisher:loc" and content["check"] == "heartbeat"
    assert content["object_kind"] == "publisher" and content["code_location"] == "loc"
    assert content["severity"] == "critical" and "no heartbeat" in content["reason"]
    check()  # still late: nothing more
    assert len(outbox(store)) == 1
    heartbeat(bus, interval_s=0.1)
    assert check() == 1
    assert [n["kind"] for n in outbox(store)] == ["firing", "resolved"]


def test_a_silence_by_tag_holds_a_sensor_alert_and_routes_match_its_key(tmp_path: Path) -> None:
    """Silences match an automation object's labels like an asset's (its tags from the health event), and a
    route's `assets` glob selects a code location's sensors by key."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    settings = make_settings(tmp_path / "a")
    silenced = AlertService(open_store(settings), settings)
    _, covered = silenced.silence({"tag.tier": "1"}, 3600, by="ops@example.com")
    assert covered == 0  # nothing fires yet: the silence waits for it
    silenced.handle([sensor_health("FAILED", "error", 1)])
    assert outbox(silenced.store) == []
    with silenced.store.read() as conn:
        (row,) = conn.execute("SELECT asset_key, silence_id FROM alerts").fetchall()
    assert row["asset_key"] == "sensor:loc/orders_sensor" and row["silence_id"] is not None

    by_key = make_settings(tmp_path / "b", routes=[{"receivers": ["tier1"], "assets": ["sensor:loc/*"]}])
    routed = AlertService(open_store(by_key), by_key)
    routed.handle([sensor_health("FAILED", "error", 1)])
    assert [n["receiver"] for n in outbox(routed.store)] == ["tier1"]
    for service in (silenced, routed):
        service.store.close()


def test_the_watch_job_is_quiet_while_redis_is_down(tmp_path: Path) -> None:
    """With Redis unreachable the worker reports it itself; the watch neither raises (a failed job every
    15 s) nor fires anything."""
    from libs.common.redis_server import free_port
    from services.alerts.app import build

    settings = make_settings(tmp_path).model_copy(
        update={
            "redis": make_settings(tmp_path).redis.model_copy(
                update={"url": f"redis://127.0.0.1:{free_port()}"}
            )
        }
    )
    worker = build(settings, port=0)
    try:
        (job,) = [j for j in worker.jobs if j.name == "alerts_publisher_watch"]
        job.func()
        assert outbox(worker.store) == []
    finally:
        worker.store.close()
