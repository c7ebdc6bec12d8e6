"""Automation objects through the health service on a real health.db: ticks and heartbeats in, health.changed
events (with the object's kind) in the outbox, the periodic pass for clock-driven checks, and a replay."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from libs.common.bus import Delivery
from libs.common.events import AUTOMATION, Event, HealthChanged, parse_event
from libs.common.settings import load_settings
from libs.common.store import Store
from services.health import metrics
from services.health import store as db
from services.health.service import HealthService
from services.health.settings import HealthWorkerSettings
from services.health.store import open_store
from tests.services.health.conftest import Clock


def _helpers() -> Any:
    # The builders of test_automation.py (tests run in importlib mode: no package imports between them).
    name = "automation_event_builders"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("test_automation.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


h = _helpers()
T0 = h.T0


@pytest.fixture
def hsettings(tmp_path: Path) -> HealthWorkerSettings:
    return load_settings(HealthWorkerSettings, dagster_home=str(tmp_path), stores={"data_dir": str(tmp_path)})


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, hsettings: HealthWorkerSettings) -> Store:
    """health.db on SQLite, and the same schema and statements on a real PostgreSQL."""
    if request.param == "sqlite":
        s = open_store(hsettings)
    else:
        s = Store(request.getfixturevalue("postgres_url"), db.MIGRATIONS)
    yield s  # type: ignore[misc]
    s.close()


def batch(*events: Event) -> list[Delivery]:
    return [Delivery(AUTOMATION, f"{i + 1}-0", e) for i, e in enumerate(events)]  # type: ignore[arg-type]


def published(store: Store) -> list[HealthChanged]:
    rows = store.connection().execute("SELECT payload FROM event_outbox ORDER BY seq").fetchall()
    return [e for e in (parse_event(r[0]) for r in rows) if isinstance(e, HealthChanged)]


def status_of(store: Store, key: str) -> str:
    row = (
        store.connection()
        .execute("SELECT status FROM automation_objects WHERE object_key = ?", (key,))
        .fetchone()
    )
    return str(row[0])


def test_a_failing_sensor_is_published_failed_then_healthy(
    store: Store, hsettings: HealthWorkerSettings
) -> None:
    clock = Clock(T0 + 1)
    engine = HealthService(store, hsettings, clock=clock)
    engine.handle(
        batch(
            h.tick(
                "FAILURE", T0, error="RuntimeError: sensor raised", owners=["team:ops"], tags={"tier": "1"}
            ),
            h.beat(T0),
        )
    )
    (event,) = [e for e in published(store) if e.data.asset_key == "sensor:loc/orders_sensor"]
    assert event.data.status == "FAILED" and event.data.object_kind == "sensor"
    assert (
        event.data.code_location == "loc"
        and event.data.owners == ["team:ops"]
        and event.data.tags == {"tier": "1"}
    )
    failing = [c for c in event.data.checks if c.outcome != "passed"]
    assert [c.check for c in failing] == ["tick_failures"] and "sensor raised" in failing[0].reason
    assert not event.data.replay
    assert status_of(store, "publisher:loc") == "HEALTHY"
    assert metrics.PUBLISHER_LAST_HEARTBEAT.labels(code_location="loc")._value.get() == T0

    clock.t = T0 + 31
    engine.handle(batch(h.tick("SUCCESS", T0 + 30), h.beat(T0 + 30)))
    last = [e for e in published(store) if e.data.asset_key == "sensor:loc/orders_sensor"][-1]
    assert last.data.status == "HEALTHY" and last.data.changed_checks == ["tick_failures"]
    # Redelivered: nothing new.
    before = len(published(store))
    engine.handle(batch(h.tick("SUCCESS", T0 + 30, tick_id=10**6), h.beat(T0 + 30)))
    engine.handle(batch(h.beat(T0 + 30)))
    assert len(published(store)) == before


def test_the_periodic_pass_finds_a_silent_daemon_and_the_sensors_it_stopped(
    store: Store, hsettings: HealthWorkerSettings
) -> None:
    clock = Clock(T0 + 1)
    engine = HealthService(store, hsettings, clock=clock)
    engine.handle(batch(h.tick("SUCCESS", T0), h.daemon(T0), h.beat(T0)))
    engine.evaluate_automation()  # the first pass after a start evaluates everything: all healthy
    assert {status_of(store, k) for k in ("sensor:loc/orders_sensor", "daemon:SENSOR", "publisher:loc")} == {
        "HEALTHY"
    }
    clock.t = T0 + 10_000  # the daemon died: nothing arrives any more
    assert engine.evaluate_automation() == 3
    events = {e.data.asset_key: e for e in published(store)[-3:]}
    assert events["daemon:SENSOR"].data.status == "FAILED"
    stopped = next(c for c in events["sensor:loc/orders_sensor"].data.checks if c.check == "stopped")
    assert stopped.outcome == "error" and stopped.values["blocked_by"] == "daemon:SENSOR"
    assert events["sensor:loc/orders_sensor"].data.status == "DEGRADED"
    assert events["publisher:loc"].data.status == "FAILED"
    assert engine.evaluate_automation() == 0  # already late: not due again until an event comes
    assert db.due_automation_keys(store.connection(), clock.t) == []


def test_ticks_replayed_from_the_past_are_judged_as_of_their_time(
    store: Store, hsettings: HealthWorkerSettings
) -> None:
    clock = Clock(T0 + 7 * 86400)  # a first install reads a week-old tick history
    engine = HealthService(store, hsettings, clock=clock)
    engine.handle(batch(h.tick("FAILURE", T0, error="boom"), h.tick("SUCCESS", T0 + 30), h.beat(T0 + 30)))
    sensor = [e for e in published(store) if e.data.asset_key == "sensor:loc/orders_sensor"]
    # As of the history's time the sensor had just ticked: not stopped, and marked as a replay.
    assert [e.data.status for e in sensor] == ["HEALTHY"] and sensor[0].data.replay
    assert engine.evaluate_automation() == 0  # the periodic pass waits during a replay
    # Caught up (a recent batch): replayed objects are judged on the wall clock; the week of silence counts.
    engine.handle(batch(h.beat(clock.t)))
    last = [e for e in published(store) if e.data.asset_key == "sensor:loc/orders_sensor"][-1]
    assert last.data.status == "DEGRADED" and not last.data.replay
    assert status_of(store, "publisher:loc") == "HEALTHY"


def test_a_publisher_paging_through_history_keeps_the_replay_until_it_is_caught_up(
    store: Store, hsettings: HealthWorkerSettings
) -> None:
    clock = Clock(T0 + 86400)
    engine = HealthService(store, hsettings, clock=clock)
    paging = h.beat(clock.t)
    paging = paging.model_copy(update={"data": paging.data.model_copy(update={"caught_up": False})})
    engine.handle(batch(h.tick("SUCCESS", T0), paging))  # a page of yesterday's ticks, more to read
    (first,) = [e for e in published(store) if e.data.asset_key == "sensor:loc/orders_sensor"]
    assert first.data.status == "HEALTHY" and first.data.replay
    engine.handle(batch(h.tick("SUCCESS", clock.t - 5), h.beat(clock.t)))  # the last page: caught up
    last = [e for e in published(store) if e.data.asset_key == "sensor:loc/orders_sensor"]
    assert last == [first]  # still healthy, now on the wall clock: nothing to announce
    assert status_of(store, "sensor:loc/orders_sensor") == "HEALTHY"
    assert db.replayed_automation_keys(store.connection()) == []


def test_live_automation_events_do_not_end_the_assets_catch_up(
    store: Store, hsettings: HealthWorkerSettings
) -> None:
    """The automation stream is read in step with a backlog of runs, not behind it: its recent events must not
    make health judge the runs still being replayed against the wall clock — unless the publisher's heartbeat
    says it has read the whole event log (`caught_up`, tests/services/health/test_catch_up.py)."""
    from libs.common.events import ASSETS, AssetMaterialized, MaterializationData, new_event

    clock = Clock(T0 + 86400)
    engine = HealthService(store, hsettings, clock=clock)
    mat = new_event(
        AssetMaterialized,
        "asset.materialized",
        identity="m1",
        source="t",
        occurred_at=h.dt(T0),
        data=MaterializationData(asset_key="raw/orders", run_id="r1", row_count=5),
    )
    still_paging = h.beat(clock.t)
    still_paging = still_paging.model_copy(
        update={"data": still_paging.data.model_copy(update={"caught_up": False})}
    )
    engine.handle([Delivery(ASSETS, "1-0", mat), *batch(still_paging)])
    (asset,) = [e for e in published(store) if e.data.asset_key == "raw/orders"]
    assert asset.data.replay and asset.data.object_kind == "asset"
    assert status_of(store, "publisher:loc") == "HEALTHY"


# -- op jobs: failed runs of jobs that materialize no asset -------------------------------------------------


def runs(*events: Event) -> list[Delivery]:
    from libs.common.events import RUNS

    return [Delivery(RUNS, f"{i + 1}-0", e) for i, e in enumerate(events)]  # type: ignore[arg-type]


def job_events(store: Store) -> list[HealthChanged]:
    return [e for e in published(store) if e.data.asset_key == "job:loc/report_job"]


def test_a_failing_op_job_is_published_failed_then_healthy_and_is_no_asset(
    store: Store, hsettings: HealthWorkerSettings
) -> None:
    clock = Clock(T0 + 1)
    engine = HealthService(store, hsettings, clock=clock)
    tags = {"owner": "team:reports", "team": "reports", "dagster/run_key": "x"}
    engine.handle(runs(h.run("STARTED", T0 - 10, "r0000001", tags=tags)))
    assert job_events(store) == []  # started only: nothing to say yet
    engine.handle(runs(h.run("FAILURE", T0, "r0000001", error="SMTPError: relay refused", tags=tags)))
    (failed,) = job_events(store)
    assert failed.data.status == "FAILED" and failed.data.object_kind == "job"
    assert failed.data.code_location == "loc" and failed.data.owners == ["team:reports"]
    assert failed.data.tags == {"owner": "team:reports", "team": "reports"} and not failed.data.replay
    (check,) = failed.data.checks
    assert check.check == "execution_status" and check.outcome == "error"
    assert "relay refused" in check.reason and check.values["last_run_id"] == "r0000001"
    assert status_of(store, "job:loc/report_job") == "FAILED"
    # Not an asset: no asset health row, no asset event.
    conn = store.connection()
    assert conn.execute("SELECT COUNT(*) FROM asset_health").fetchone()[0] == 0
    assert all(e.data.object_kind == "job" for e in published(store))

    clock.t = T0 + 61
    engine.handle(runs(h.run("FAILURE", T0 + 60, "r0000002", error="SMTPError: again", tags=tags)))
    assert len(job_events(store)) == 1  # a longer streak changes no signature
    (row,) = [r for r in db.read_automation(conn) if r[0] == "job:loc/report_job"]
    assert '"consecutive": 2' in row[5]
    assert engine.evaluate_automation() == 0  # the periodic pass changes nothing: only runs do
    clock.t = T0 + 121
    engine.handle(runs(h.run("SUCCESS", T0 + 120, "r0000003", tags=tags)))
    last = job_events(store)[-1]
    assert last.data.status == "HEALTHY" and last.data.changed_checks == ["execution_status"]
    before = len(published(store))
    engine.handle(runs(h.run("SUCCESS", T0 + 120, "r0000003", tags=tags)))  # redelivered
    assert len(published(store)) == before


def test_op_job_runs_replayed_from_the_past_follow_the_runs_catch_up(
    store: Store, hsettings: HealthWorkerSettings
) -> None:
    """An op job's runs come on the runs stream behind the same backlog as the assets': while they are
    replayed, its events are `replay` and no live automation event or periodic pass confirms them early; the
    end of the runs' replay does."""
    clock = Clock(T0 + 7 * 86400)
    engine = HealthService(store, hsettings, clock=clock)
    engine.handle(runs(h.run("SUCCESS", T0, "r1"), h.run("FAILURE", T0 + 60, "r2", error="boom")))
    (replayed,) = job_events(store)
    assert replayed.data.status == "FAILED" and replayed.data.replay
    engine.handle(batch(h.tick("SUCCESS", clock.t)))  # a live tick ends the automation stream's replay only
    engine.evaluate_automation()
    assert job_events(store) == [replayed]
    assert db.replayed_automation_keys(store.connection(), jobs=True) == ["job:loc/report_job"]
    # Caught up: a recent run (of another job) ends the runs' replay; the failing job is confirmed live.
    engine.handle(runs(h.run("SUCCESS", clock.t - 1, "r3", job="other_job")))
    confirmed = job_events(store)[-1]
    assert confirmed.data.status == "FAILED" and not confirmed.data.replay
    assert db.replayed_automation_keys(store.connection(), jobs=True) == []


def test_a_replayed_op_job_is_confirmed_when_the_runs_go_quiet(tmp_path: Path) -> None:
    """The other end of the runs' replay, no batch for `catch_up_quiet_s`: the replayed job is judged live."""
    from libs.common.testing import wait_for

    settings = load_settings(
        HealthWorkerSettings,
        dagster_home=str(tmp_path),
        stores={"data_dir": str(tmp_path)},
        health={"catch_up_quiet_s": 0.2},
    )
    store = open_store(settings)
    engine = HealthService(store, settings, clock=Clock(T0 + 86400))
    engine.handle(runs(h.run("FAILURE", T0, "r1", error="boom")))
    assert [e.data.replay for e in job_events(store)] == [True]

    def confirmed() -> bool:
        engine.evaluate_pending()
        return len(job_events(store)) == 2

    wait_for(confirmed, 10, "the replayed job confirmed")
    last = job_events(store)[-1]
    assert last.data.status == "FAILED" and not last.data.replay
    store.close()
