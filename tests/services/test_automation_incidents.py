"""The Dagster daemon stopping, through both services in-process on real stores: health judges by the clock
that every daemon, sensor, schedule and the publisher went silent, and alerts make ONE incident of it (the
daemons chained as one lineage, the others naming their daemon as `blocked_by`), whether the health events
arrive in one batch or one by one.

Health publishes a daemon's silence no later than that of the sensors and schedules it runs (their limits
are floored by the daemon's, `automation._after_daemon`), and that order matters: alerts link an alert to
the cause it names when the cause is already firing, but an incident opened by a sensor is not found again
from its daemon's later alert (no lineage edge leads from a daemon to its sensors)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from libs.common.bus import Delivery
from libs.common.events import AUTOMATION, HEALTH, Event, HealthChanged, parse_event
from libs.common.settings import load_settings
from libs.common.store import Store
from services.alerts.service import AlertService
from services.alerts.settings import AlertsWorkerSettings
from services.alerts.store import open_store as open_monitor
from services.health.service import HealthService
from services.health.settings import HealthWorkerSettings
from services.health.store import open_store as open_health


def _builders() -> Any:
    name = "automation_event_builders"
    if name not in sys.modules:
        path = Path(__file__).parent / "health" / "test_automation.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


h = _builders()
T0 = 1_780_002_000.0  # 2026-05-28T21:00:00Z, a 5-minute boundary
DAEMONS = ("SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR", "BACKFILL")


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def silent_daemon(tmp_path: Path) -> list[HealthChanged]:
    """Health's events: all well at T0, then the clock alone finds everything silent."""
    settings = load_settings(
        HealthWorkerSettings, dagster_home=str(tmp_path), stores={"data_dir": str(tmp_path)}
    )
    store = open_health(settings)
    clock = Clock(T0 + 1)
    engine = HealthService(store, settings, clock=clock)
    events: list[Event] = [h.tick("SUCCESS", T0 - i, name=f"sensor_{i}", interval_s=30) for i in range(3)]
    events.append(h.tick("SUCCESS", T0, kind="schedule", name="every_5_min", cron_schedule="*/5 * * * *"))
    # Each daemon heartbeats on its own 30 s cycle: their limits pass at different moments.
    events += [h.daemon(T0 - 7 * i, daemon_type=d) for i, d in enumerate(DAEMONS)]
    events.append(h.beat(T0, interval_s=4))
    engine.handle([Delivery(AUTOMATION, f"{i + 1}-0", e) for i, e in enumerate(events)])  # type: ignore[arg-type]
    engine.evaluate_automation()
    for t in (T0 + 130, T0 + 150, T0 + 2000):  # three periodic passes as the limits pass
        clock.t = t
        engine.evaluate_automation()
    rows = store.connection().execute("SELECT payload FROM event_outbox ORDER BY seq").fetchall()
    store.close()
    return [e for e in (parse_event(r[0]) for r in rows) if isinstance(e, HealthChanged)]


def alerts(tmp_path: Path) -> AlertService:
    settings = load_settings(
        AlertsWorkerSettings,
        dagster_home=str(tmp_path),
        logging={"file": None},
        alerts={"incident_wait_s": 0, "receivers": [{"name": "ops", "url": "http://127.0.0.1:9/ops"}]},
    )
    return AlertService(open_monitor(settings), settings)


def incidents(store: Store) -> list[tuple[int, set[str]]]:
    with store.read() as conn:
        rows = conn.execute("SELECT incident_id, asset_key FROM alerts WHERE status = 'firing'").fetchall()
    found: dict[int, set[str]] = {}
    for r in rows:
        found.setdefault(int(r[0]), set()).add(str(r[1]))
    return sorted(found.items())


@pytest.mark.parametrize("order", ["one batch", "one at a time"])
def test_the_daemon_stopping_is_one_incident(tmp_path: Path, order: str) -> None:
    published = silent_daemon(tmp_path / "health")
    first_late = min(e.data.evaluated_at for e in published if e.data.status != "HEALTHY")
    daemons_late = {e.data.asset_key for e in published if e.data.evaluated_at == first_late}
    assert {f"daemon:{d}" for d in DAEMONS} <= daemons_late  # the daemons' silence comes first
    failing = {e.data.asset_key for e in published if e.data.status != "HEALTHY"}
    assert {f"daemon:{d}" for d in DAEMONS} | {"publisher:loc", "schedule:loc/every_5_min"} <= failing
    assert {f"sensor:loc/sensor_{i}" for i in range(3)} <= failing
    service = alerts(tmp_path / "alerts")
    deliveries = [Delivery(HEALTH, f"{i + 1}-0", e) for i, e in enumerate(published)]  # type: ignore[arg-type]
    if order == "one batch":
        service.handle(deliveries)
    else:
        for delivery in deliveries:
            service.handle([delivery])
    ((_, members),) = incidents(service.store)
    assert members == failing
    with service.store.read() as conn:
        opened = conn.execute("SELECT COUNT(*) FROM incidents").fetchone()[0]
        firing = conn.execute("SELECT COUNT(*) FROM notifications WHERE kind = 'firing'").fetchone()[0]
    assert opened == 1
    if order == "one batch":
        assert firing == 1
    service.store.close()


def test_a_failing_op_job_alerts_its_team_naming_job_and_code_location(tmp_path: Path) -> None:
    """An op job's health events through alerts: routed by the run's `team` tag, one firing notice naming
    the job, its code location and the error; one resolved notice after a successful run."""
    from libs.common.events import RUNS

    hsettings = load_settings(
        HealthWorkerSettings, dagster_home=str(tmp_path), stores={"data_dir": str(tmp_path / "health")}
    )
    health = open_health(hsettings)
    clock = Clock(T0 + 1)
    engine = HealthService(health, hsettings, clock=clock)
    tags = {"team": "reports"}
    failed = h.run("FAILURE", T0, "r1", error="SMTPError: relay refused", tags=tags)
    engine.handle([Delivery(RUNS, "1-0", failed)])
    clock.t = T0 + 61
    engine.handle([Delivery(RUNS, "2-0", h.run("SUCCESS", T0 + 60, "r2", tags=tags))])
    rows = health.connection().execute("SELECT payload FROM event_outbox ORDER BY seq").fetchall()
    health.close()
    events = [e for e in (parse_event(r[0]) for r in rows) if isinstance(e, HealthChanged)]
    assert [e.data.status for e in events] == ["FAILED", "HEALTHY"]

    settings = load_settings(
        AlertsWorkerSettings,
        dagster_home=str(tmp_path / "alerts"),
        logging={"file": None},
        alerts={
            "incident_wait_s": 0,
            "receivers": [
                {"name": "ops", "url": "http://127.0.0.1:9/ops"},
                {"name": "reports", "url": "http://127.0.0.1:9/reports"},
            ],
            "routes": [{"teams": ["reports"], "receivers": ["reports"]}],
            "default_receivers": ["ops"],
        },
    )
    service = AlertService(open_monitor(settings), settings)
    service.handle([Delivery(HEALTH, "1-0", events[0])])  # type: ignore[list-item]
    service.handle([Delivery(HEALTH, "2-0", events[1])])  # type: ignore[list-item]
    with service.store.read() as conn:
        sent = conn.execute(
            "SELECT kind, receiver, content FROM notifications ORDER BY created_at"
        ).fetchall()
    service.store.close()
    assert [(r[0], r[1]) for r in sent] == [("firing", "reports"), ("resolved", "reports")]
    firing = json.loads(sent[0][2])
    assert firing["asset_key"] == "job:loc/report_job" and firing["object_kind"] == "job"
    assert firing["code_location"] == "loc" and "relay refused" in firing["reason"]
    assert firing["dagster_url"] is None


def test_a_removed_sensor_resolves_its_alert(tmp_path: Path) -> None:
    """A failing sensor alerts; removed (the publisher saw Dagster delete its state, or `automation-health
    --forget`), health retires it and the alert resolves; an unknown key's removal makes nothing."""
    hsettings = load_settings(
        HealthWorkerSettings, dagster_home=str(tmp_path), stores={"data_dir": str(tmp_path / "health")}
    )
    health = open_health(hsettings)
    clock = Clock(T0 + 1)
    engine = HealthService(health, hsettings, clock=clock)
    engine.handle([Delivery(AUTOMATION, "1-0", h.tick("FAILURE", T0, name="flaky", error="boom"))])
    clock.t = T0 + 30
    engine.handle(
        [
            Delivery(AUTOMATION, "2-0", h.removed("sensor:loc/flaky", T0 + 30)),
            Delivery(AUTOMATION, "3-0", h.removed("sensor:loc/never_seen", T0 + 30)),
        ]
    )
    rows = health.connection().execute("SELECT payload FROM event_outbox ORDER BY seq").fetchall()
    keys = [r[0] for r in health.connection().execute("SELECT object_key FROM automation_objects")]
    health.close()
    events = [e for e in (parse_event(r[0]) for r in rows) if isinstance(e, HealthChanged)]
    assert [(e.data.asset_key, e.data.status) for e in events] == [
        ("sensor:loc/flaky", "FAILED"),
        ("sensor:loc/flaky", "UNKNOWN"),
    ]
    assert "retired at" in events[1].data.reasons[0]
    assert keys == ["sensor:loc/flaky"]

    service = alerts(tmp_path / "alerts")
    for i, event in enumerate(events):
        service.handle([Delivery(HEALTH, f"{i + 1}-0", event)])  # type: ignore[arg-type]
    with service.store.read() as conn:
        sent = conn.execute("SELECT kind FROM notifications ORDER BY created_at").fetchall()
        firing = conn.execute("SELECT COUNT(*) FROM alerts WHERE status = 'firing'").fetchone()[0]
    service.store.close()
    assert [r[0] for r in sent] == ["firing", "resolved"]
    assert firing == 0
