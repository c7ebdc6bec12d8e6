"""The alerts service on a real monitor.db: events in, alert rows, history and outbox rows out."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

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
from libs.common.settings import load_settings
from libs.common.store import Store
from services.alerts import queries
from services.alerts.service import AlertsError, AlertService, fingerprint
from services.alerts.settings import AlertsWorkerSettings
from services.alerts.store import open_store


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def alert_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AlertsWorkerSettings:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    return load_settings(
        AlertsWorkerSettings,
        dagster_home=str(tmp_path),
        logging={"file": None},
        alerts={
            "incident_wait_s": 0,  # notices at once: these tests are about other rules
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
def store(alert_settings: AlertsWorkerSettings) -> Iterator[Store]:
    s = open_store(alert_settings)
    yield s
    s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(store: Store, alert_settings: AlertsWorkerSettings, clock: Clock) -> AlertService:
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


def test_failed_then_healthy_fires_and_resolves_once(
    service: AlertService, store: Store, clock: Clock
) -> None:
    woken: list[int] = []
    service.on_commit = lambda: woken.append(1)
    service.handle(
        [health("sales/orders", "FAILED", FAIL, n=1, owners=["ann@example.com"], downstream=["sales/report"])]
    )
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
    assert queries.open_alerts(store)[0]["values"] == {"rows": 2}  # the latest numbers are kept

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
    assert [h["event"] for h in detail["history"]] == [
        "firing",
        "announced",
        "grouped",
        "incident_notice",
        "resolved",
        "announced",
        "incident_notice",
    ]


def test_status_without_checks_and_healthy_resolves_everything(service: AlertService, store: Store) -> None:
    service.handle([health("a", "FAILED", [], n=1, reasons=["run failed"])])
    (alert,) = queries.open_alerts(store)
    assert alert["check"] == "health_status" and alert["summary"] == "run failed"
    service.handle([health("a", "HEALTHY", [], n=2)])
    assert queries.open_alerts(store) == []


def test_owner_change_reroutes_without_restart(service: AlertService, store: Store, clock: Clock) -> None:
    service.handle(
        [
            asset_changed(
                "fin/revenue",
                ["team:finance"],
                1,
                group="finance",
                downstream=["fin/report"],
                code_location="finance_pipelines",
            )
        ]
    )
    service.handle([health("fin/revenue", "FAILED", FAIL, n=1)])
    assert [r["receiver"] for r in outbox(store)] == ["finance"]
    content = json.loads(outbox(store)[0]["content"])
    assert content["teams"] == ["finance"] and content["downstream"] == ["fin/report"]
    assert content["code_location"] == "finance_pipelines"  # from the asset's spec, in every message
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
    assert {
        "at": history[-1]["at"],
        "event": "acknowledged",
        "actor": "ann",
        "reason": "looking into it",
        "detail": {},
    } == history[-1]


def test_silence_holds_new_and_current_alerts_until_lifted(
    service: AlertService, store: Store, clock: Clock
) -> None:
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
    assert (
        fingerprint("a/b", "freshness")
        == fingerprint("a/b", "freshness")
        != fingerprint("a/b", "schema_drift")
    )


def test_muted_route_records_the_notice_without_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    settings = load_settings(
        AlertsWorkerSettings,
        dagster_home=str(tmp_path),
        logging={"file": None},
        alerts={
            "incident_wait_s": 0,  # notices at once: these tests are about other rules
            "receivers": [
                {"name": "ops", "url": "http://127.0.0.1:9/ops"},
                {"name": "pager", "url": "http://127.0.0.1:9/p"},
            ],
            "mute_windows": [{"name": "always", "start": "00:00", "end": "00:00"}],
            "routes": [{"receivers": ["pager"], "mute_windows": ["always"]}],
        },
    )
    store = open_store(settings)
    try:
        AlertService(store, settings).handle([health("a", "FAILED", FAIL, n=1)])
        assert [(r["receiver"], r["status"]) for r in outbox(store)] == [("pager", "muted")]
        assert [d["status"] for d in queries.deliveries(store)] == ["muted"]
    finally:
        store.close()


def test_prune_drops_old_resolved_incidents_only(service: AlertService, store: Store, clock: Clock) -> None:
    service.handle([health("old", "FAILED", FAIL, n=1)])
    service.handle([health("old", "HEALTHY", PASS, n=2)])
    service.handle([health("other", "FAILED", FAIL, n=3)])
    with store.write() as conn:  # as the sender would have done
        conn.execute("UPDATE notifications SET status = 'delivered'")
    clock.now += 181 * 86400
    service.handle([health("old", "FAILED", FAIL, n=4)])  # a new incident of the same fingerprint
    counts = service.prune()
    assert counts["alerts"] == 1 and counts["notifications"] == 3
    remaining = queries.list_alerts(store, include_resolved=True)
    assert sorted((a["asset_key"], a["status"]) for a in remaining) == [
        ("old", "firing"),
        ("other", "firing"),
    ]


def test_gauges(service: AlertService, store: Store) -> None:
    from services.alerts import metrics

    service.handle(
        [health("g1", "FAILED", FAIL, n=1), health("g2", "DEGRADED", [("freshness", "warn", "late")], n=2)]
    )
    service.update_gauges()
    assert metrics.ALERTS_FIRING.labels(severity="critical")._value.get() == 1
    assert metrics.ALERTS_FIRING.labels(severity="warning")._value.get() == 1
    assert metrics.OUTBOX_DEPTH._value.get() == 2


# -- the same invariants as the pure machine's, through the store ------------------------------------------

outcomes = st.sampled_from(["passed", "passed", "warn", "error"])
store_ops = st.one_of(
    st.tuples(st.just("health"), st.integers(0, 1), outcomes, outcomes, st.floats(0, 400)),
    st.tuples(st.just("tick"), st.floats(0, 5000)),
    st.tuples(st.just("ack"), st.integers(0, 5)),
    st.tuples(st.just("silence"), st.integers(0, 1), st.floats(10, 2000)),
    st.tuples(st.just("unsilence")),
)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(store_ops, max_size=25))
def test_store_level_notices_are_well_formed(
    alert_settings: AlertsWorkerSettings, tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[Any, ...]]
) -> None:
    home = tmp_path_factory.mktemp("prop")
    settings = alert_settings.model_copy(update={"dagster_home": home})
    store = open_store(settings)
    clock = Clock()
    service = AlertService(store, settings, clock=clock)
    silences: list[str] = []
    try:
        for n, op in enumerate(ops):
            before = len(outbox(store))
            if op[0] == "health":
                _, asset, first, second, dt = op
                clock.now += dt
                checks = [("execution_status", first, "r"), ("volume_anomaly", second, "r")]
                worst = {"error": "FAILED", "warn": "DEGRADED"}.get(
                    "error" if "error" in (first, second) else "warn" if "warn" in (first, second) else "",
                    "HEALTHY",
                )
                service.handle([health(f"asset{asset}", worst, checks, n=n)])
                with store.read() as conn:
                    added = [
                        (r[0], r[1])
                        for r in conn.execute(
                            "SELECT incident_id, receiver FROM notifications ORDER BY rowid"
                        ).fetchall()[before:]
                    ]
                assert len(added) == len(set(added))  # one notice per incident and receiver at most
            elif op[0] == "tick":
                clock.now += op[1]
                service.tick()
            elif op[0] == "ack":
                firing = queries.open_alerts(store)
                if firing:
                    with contextlib.suppress(AlertsError):
                        service.acknowledge(firing[op[1] % len(firing)]["id"], "ann")
            elif op[0] == "silence":
                silences.append(service.silence({"asset": f"asset{op[1]}"}, op[2], "bob")[0])
            elif silences:
                with contextlib.suppress(AlertsError):
                    service.unsilence(silences.pop(0), "bob")
        with store.read() as conn:
            rows = conn.execute(
                "SELECT incident_id, receiver, kind FROM notifications ORDER BY rowid"
            ).fetchall()
            incidents = {r["id"]: r["status"] for r in conn.execute("SELECT id, status FROM incidents")}
            ungrouped = conn.execute("SELECT COUNT(*) FROM alerts WHERE incident_id IS NULL").fetchone()[0]
        assert ungrouped == 0  # every alert belongs to an incident
        per_incident: dict[tuple[int, str], list[str]] = {}
        for row in rows:
            per_incident.setdefault((row["incident_id"], row["receiver"]), []).append(row["kind"])
        for (incident_id, _), kinds in per_incident.items():
            assert kinds[0] == "firing" and kinds.count("firing") == 1
            assert kinds.count("resolved") <= 1 and ("resolved" not in kinds or kinds[-1] == "resolved")
            # every announced incident that resolved was announced as resolved
            assert (incidents[incident_id] == "resolved") == ("resolved" in kinds)
    finally:
        store.close()
