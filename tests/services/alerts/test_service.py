"""The alerts service on a real monitor.db: events in, alert rows, history and outbox rows out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from libs.common.bus import Delivery
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
from libs.common.settings import Settings, load_settings
from libs.common.store import Store
from services.alerts import queries
from services.alerts.service import AlertsError, AlertService, fingerprint
from services.alerts.store import open_store


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def alert_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    return load_settings(
        dagster_home=str(tmp_path),
        logging={"file": None},
        alerts={
            "dagster_ui_url": "http://dagster.local:3000",
            "receivers": [
                {"name": "ops", "url": "http://127.0.0.1:9/ops"},
                {"name": "finance", "kind": "slack", "url": "http://127.0.0.1:9/fin", "send_resolved": False},
            ],
            "routes": [{"receivers": ["finance"], "teams": ["finance"]}],
            "default_receivers": ["ops"],
            "flap_window_s": 300,
            "repeat_interval_s": 3600,
        },
    )


@pytest.fixture
def store(alert_settings: Settings) -> Iterator[Store]:
    s = open_store(alert_settings)
    yield s
    s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(store: Store, alert_settings: Settings, clock: Clock) -> AlertService:
    return AlertService(store, alert_settings, clock=clock)


def health(asset: str, status: str, checks: list[tuple[str, str, str]], *, n: int, **extra: Any) -> Delivery:
    data = HealthChangedData(
        asset_key=asset,
        status=status,  # type: ignore[arg-type]
        previous_status="UNKNOWN",
        checks=[CheckResult(check=c, outcome=o, reason=r, values={"rows": n}) for c, o, r in checks],  # type: ignore[arg-type]
        evaluated_at=utcnow(),
        **extra,
    )
    event = new_event(HealthChanged, "health.changed", identity=f"{asset}|{n}", data=data, source="test")
    return Delivery(HEALTH, f"{n}-0", event)


def asset_changed(key: str, owners: list[str], version: int, **spec: Any) -> Delivery:
    data = AssetChangeData(spec=AssetSpecData(key=key, owners=owners, **spec), version=version)
    event = new_event(AssetChanged, "asset.changed", identity=f"{key}|{version}", data=data, source="test")
    return Delivery(ASSET_CHANGES, f"{version}-1", event)


def outbox(store: Store) -> list[dict[str, Any]]:
    with store.read() as conn:
        return [dict(r) for r in conn.execute("SELECT * FROM notifications ORDER BY created_at, receiver")]


FAIL = [("execution_status", "error", "run r1 failed: ValueError"), ("volume_anomaly", "passed", "ok")]
PASS = [("execution_status", "passed", "run r2 succeeded"), ("volume_anomaly", "passed", "ok")]


def test_failed_then_healthy_fires_and_resolves_once(service: AlertService, store: Store, clock: Clock) -> None:
    woken: list[int] = []
    service.on_commit = lambda: woken.append(1)
    service.handle([health("sales/orders", "FAILED", FAIL, n=1, owners=["ann@example.com"], downstream=["sales/report"])])
    (alert,) = queries.open_alerts(store)
    assert alert["asset_key"] == "sales/orders" and alert["check"] == "execution_status"
    assert alert["severity"] == "critical" and alert["status"] == "firing"
    (row,) = outbox(store)
    assert row["receiver"] == "ops" and row["kind"] == "firing" and row["status"] == "pending"
    content = json.loads(row["content"])
    assert content["notification_id"] == row["id"]
    assert content["reason"] == "run r1 failed: ValueError" and content["values"] == {"rows": 1}
    assert content["owners"] == ["ann@example.com"] and content["downstream"] == ["sales/report"]
    assert content["dagster_url"] == "http://dagster.local:3000/assets/sales/orders"
    assert woken == [1]

    # the same event again (a redelivery) changes nothing
    service.handle([health("sales/orders", "FAILED", FAIL, n=1)])
    assert len(outbox(store)) == 1
    # still failing: no new notice
    clock.now += 60
    service.handle([health("sales/orders", "FAILED", FAIL, n=2)])
    assert len(outbox(store)) == 1

    clock.now += 60
    service.handle([health("sales/orders", "HEALTHY", PASS, n=3)])
    assert queries.open_alerts(store) == []
    rows = outbox(store)
    assert [r["kind"] for r in rows] == ["firing", "resolved"]
    resolved = json.loads(rows[1]["content"])
    assert resolved["status"] == "resolved" and resolved["resolved_at"] is not None
    (history_alert,) = queries.list_alerts(store, include_resolved=True)
    detail = queries.get_alert(store, history_alert["id"])
    assert detail is not None
    assert [h["event"] for h in detail["history"]] == ["firing", "notified", "resolved", "notified"]


def test_status_without_checks_and_healthy_resolves_everything(service: AlertService, store: Store) -> None:
    service.handle([health("a", "FAILED", [], n=1, reasons=["run failed"])])
    (alert,) = queries.open_alerts(store)
    assert alert["check"] == "health_status" and alert["summary"] == "run failed"
    service.handle([health("a", "HEALTHY", [], n=2)])
    assert queries.open_alerts(store) == []


def test_owner_change_reroutes_without_restart(service: AlertService, store: Store, clock: Clock) -> None:
    service.handle([asset_changed("fin/revenue", ["team:finance"], 1, group="finance", downstream=["fin/report"])])
    service.handle([health("fin/revenue", "FAILED", FAIL, n=1)])
    assert [r["receiver"] for r in outbox(store)] == ["finance"]
    content = json.loads(outbox(store)[0]["content"])
    assert content["teams"] == ["finance"] and content["downstream"] == ["fin/report"]
    # finance does not want resolved notices
    clock.now += 10
    service.handle([health("fin/revenue", "HEALTHY", PASS, n=2)])
    assert [r["kind"] for r in outbox(store)] == ["firing"]
    # ownership moves to another team; a stale older version arriving late is ignored
    service.handle([asset_changed("fin/revenue", ["team:platform"], 3)])
    service.handle([asset_changed("fin/revenue", ["team:finance"], 2)])
    clock.now += 1000
    service.handle([health("fin/revenue", "FAILED", FAIL, n=3)])
    assert [r["receiver"] for r in outbox(store)] == ["finance", "ops"]


def test_ack_stops_repeats_and_is_recorded(service: AlertService, store: Store, clock: Clock) -> None:
    service.handle([health("a", "DEGRADED", [("volume_anomaly", "warn", "rows 40% below median")], n=1)])
    (alert,) = queries.open_alerts(store)
    assert alert["severity"] == "warning"
    clock.now += 3600
    service.tick()
    assert [r["kind"] for r in outbox(store)] == ["firing", "repeat"]
    acked = service.acknowledge(alert["id"], "ann", "looking into it")
    assert acked["acked_by"] == "ann"
    assert queries.open_alerts(store)[0]["status"] == "acknowledged"
    with pytest.raises(AlertsError, match="already acknowledged"):
        service.acknowledge(alert["id"], "bob")
    with pytest.raises(AlertsError, match="no alert"):
        service.acknowledge(999, "bob")
    clock.now += 7200
    service.tick()
    assert len(outbox(store)) == 2
    history = queries.get_alert(store, alert["id"])["history"]  # type: ignore[index]
    assert {"at": history[-1]["at"], "event": "acknowledged", "actor": "ann", "reason": "looking into it",
            "detail": {}} == history[-1]


def test_silence_holds_new_and_current_alerts_until_lifted(service: AlertService, store: Store, clock: Clock) -> None:
    silence_id, covered = service.silence({"asset": "maint/*"}, 7200, "bob", "maintenance")
    assert covered == 0
    service.handle([health("maint/x", "FAILED", FAIL, n=1)])
    assert outbox(store) == []
    assert queries.open_alerts(store)[0]["status"] == "silenced"
    assert [s["id"] for s in queries.silences(store)] == [silence_id]
    clock.now += 60
    assert service.unsilence(silence_id, "bob", "done early") == 1
    assert [r["kind"] for r in outbox(store)] == ["firing"]
    with pytest.raises(AlertsError, match="no longer active"):
        service.unsilence(silence_id, "bob")

    # a silence on a firing alert expires by itself: the tick announces nothing new (already announced)
    _sid, covered = service.silence({"check": "execution_status"}, 100, "bob", "quiet")
    assert covered == 1
    clock.now += 101
    service.tick()
    assert queries.open_alerts(store)[0]["status"] == "firing"
    assert len(outbox(store)) == 1


def test_fingerprint_is_stable() -> None:
    assert fingerprint("a/b", "freshness") == fingerprint("a/b", "freshness") != fingerprint("a/b", "schema_drift")
