"""Quiet catch-up: 60 days of history for 50 assets waiting in Redis for stopped workers. Started, the health
and alerts workers page no one about the past: no notice that the backlog itself resolves, and exactly the
alerts a worker that never stopped would have open are open, each announced once.

The reference is the same history fed in real time to the same services in-process, with a clock that
follows the events (a batch per day, as a worker keeping up would see it), then evaluated at the wall clock.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from libs.common.bus import Bus, Delivery, connect
from libs.common.events import (
    ASSET_CHANGES,
    ASSETS,
    HEALTH,
    RUNS,
    AssetChanged,
    AssetChangeData,
    AssetMaterializationFailed,
    AssetMaterialized,
    AssetSpecData,
    Event,
    MaterializationData,
    MaterializationFailedData,
    RunData,
    RunEvent,
    new_event,
    parse_event,
)
from libs.common.settings import load_settings
from libs.common.testing import ServiceProcess, wait_for
from services.alerts.service import AlertService
from services.alerts.settings import AlertsWorkerSettings
from services.alerts.store import open_store as open_monitor
from services.alerts.testing import RecordingReceiver
from services.health.service import HealthService
from services.health.settings import HealthWorkerSettings
from services.health.store import open_store as open_health

pytestmark = pytest.mark.faults
DAY = 86400.0
ASSETS_N = 50
DAYS = 60


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def history(end: float) -> tuple[list[tuple[str, Event]], list[list[tuple[str, Event]]]]:
    """(specs, events per day) of 50 assets materialized daily for 60 days, the last day ending at `end`.

    The past holds problems the backlog resolves (a failure on day 20 for assets 0-9, fixed the next day; a
    row-count drop on day 30 for assets 10-14); the present holds real ones: assets 40-42 failed their last
    run, 43-44 produced zero rows, 45 stopped materializing three days ago (max lag 1 day)."""
    rng = random.Random(7)
    keys = [f"shop/a{i:02d}" for i in range(ASSETS_N)]
    specs: list[tuple[str, Event]] = []
    for i, key in enumerate(keys):
        upstream = [keys[i - 1]] if i % 5 else []
        downstream = [keys[i + 1]] if (i + 1) % 5 and i + 1 < ASSETS_N else []
        tags = {"ams/freshness_max_lag": "1d"} if i == 45 else {}
        spec = AssetSpecData(key=key, owners=[f"team:t{i % 4}"], group=f"g{i % 3}", upstream=upstream,
                             downstream=downstream, tags=tags, code_location="shop")
        specs.append((ASSET_CHANGES, new_event(AssetChanged, "asset.registered", identity=key,
                                               data=AssetChangeData(spec=spec, version=1), source="discovery",
                                               occurred_at=_dt(end - DAYS * DAY))))
    days: list[list[tuple[str, Event]]] = []
    start = end - (DAYS - 1) * DAY - ASSETS_N * 120
    for day in range(DAYS):
        events: list[tuple[str, Event]] = []
        for i, key in enumerate(keys):
            if i == 45 and day >= DAYS - 3:
                continue  # stopped three days before the end
            t0 = start + day * DAY + i * 120  # upstream finishes before its downstream starts
            took = rng.uniform(50, 70)
            t1 = t0 + took
            run_id = f"r{day:02d}-{i:02d}"
            failed = (day == 20 and i < 10) or (day == DAYS - 1 and 40 <= i <= 42)
            rows = int(rng.gauss(10_000, 150))
            if day == 30 and 10 <= i <= 14:
                rows //= 10
            if day == DAYS - 1 and i in (43, 44):
                rows = 0
            events.append((RUNS, _run(run_id, "STARTED", key, t0, None)))
            if failed:
                data = MaterializationFailedData(asset_key=key, run_id=run_id, error="ValueError: boom")
                events.append((ASSETS, new_event(AssetMaterializationFailed, "asset.materialization_failed",
                                                 identity=f"{run_id}:{key}", data=data, source="test",
                                                 occurred_at=_dt(t1))))
                events.append((RUNS, _run(run_id, "FAILURE", key, t0, t1)))
            else:
                data_m = MaterializationData(asset_key=key, run_id=run_id, row_count=rows, duration_s=took,
                                             storage_id=day * 1000 + i)
                events.append((ASSETS, new_event(AssetMaterialized, "asset.materialized", identity=run_id,
                                                 data=data_m, source="test", occurred_at=_dt(t1 - 1))))
                events.append((RUNS, _run(run_id, "SUCCESS", key, t0, t1)))
        days.append(events)
    return specs, days


def _run(run_id: str, status: str, key: str, start: float, end: float | None) -> RunEvent:
    data = RunData(run_id=run_id, job_name="daily", status=status, asset_keys=[key],  # type: ignore[arg-type]
                   started_at=_dt(start), ended_at=_dt(end) if end else None,
                   duration_s=(end - start) if end else None, error="ValueError: boom" if status == "FAILURE" else None,
                   failed_asset_keys=[key] if status == "FAILURE" else None, code_location="shop")
    kind = {"STARTED": "run.started", "SUCCESS": "run.succeeded", "FAILURE": "run.failed"}[status]
    return new_event(RunEvent, kind, identity=f"{run_id}:{status}", data=data, source="test",
                     occurred_at=_dt(end or start))


def open_alerts(home: Path) -> set[tuple[str, str]]:
    db = home / "monitor.db"
    if not db.exists():
        return set()
    conn = sqlite3.connect(db, timeout=5)
    try:
        return {(r[0], r[1]) for r in conn.execute("SELECT asset_key, check_name FROM alerts WHERE status = 'firing'")}
    except sqlite3.OperationalError:
        return set()
    finally:
        conn.close()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reference(home: Path, specs: list[tuple[str, Event]], days: list[list[tuple[str, Event]]]) -> set[tuple[str, str]]:
    """The alerts open after the same history arrived in real time (in-process, clock following it)."""
    home.mkdir()
    hcfg = load_settings(HealthWorkerSettings, dagster_home=str(home), logging={"file": None})
    acfg = load_settings(AlertsWorkerSettings, dagster_home=str(home), logging={"file": None})
    hstore, mstore = open_health(hcfg), open_monitor(acfg)
    first = specs[0][1].occurred_at.timestamp()
    clock = Clock(first)
    health = HealthService(hstore, hcfg, clock=clock)
    alerts = AlertService(mstore, acfg, clock=clock)

    def deliver(batch: list[tuple[str, Event]]) -> None:
        health.handle([Delivery(stream, f"{n}-0", e) for n, (stream, e) in enumerate(batch, 1)])
        alerts.handle([d for d in drain(hstore)] + [Delivery(s, "0-0", e) for s, e in batch if s == ASSET_CHANGES])

    try:
        deliver(specs)
        for events in days:
            clock.now = max(e.occurred_at.timestamp() for _, e in events) + 30
            deliver(events)
            health.evaluate_all()
            alerts.handle(drain(hstore))
        clock.now = time.time()
        health.evaluate_all()
        alerts.handle(drain(hstore))
        return open_alerts(home)
    finally:
        hstore.close()
        mstore.close()


def drain(store: Any) -> list[Delivery]:
    """The health events staged in the outbox, removed from it (what the worker loop would publish)."""
    with store.write() as conn:
        rows = conn.execute("SELECT seq, payload FROM event_outbox ORDER BY seq").fetchall()
        conn.execute("DELETE FROM event_outbox")
    return [Delivery(HEALTH, f"{r['seq']}-0", parse_event(r["payload"])) for r in rows]


@pytest.fixture
def receiver() -> Iterator[RecordingReceiver]:
    with RecordingReceiver() as server:
        yield server


@pytest.mark.parametrize("arrival", ["backlog", "paced"])
def test_sixty_days_of_history_page_no_one_about_the_past(tmp_path: Path, redis_url: str, bus_prefix: str,
                                                          receiver: RecordingReceiver, arrival: str) -> None:
    """`backlog`: all of it waits in Redis for stopped workers (read 100 entries at a time, evaluated every
    0.2 s: a worker catching up sees the past in many steps). `paced`: the workers run and the history arrives
    a day at a time, as the publishing sensor's pages bring an instance's past on a first install."""
    end = time.time() - 2 * 3600
    specs, days = history(end)
    expected = reference(tmp_path / "reference", specs, days)
    # The history's own problems at its end, and nothing of the resolved past.
    failing_assets = {a for a, _ in expected}
    assert {"shop/a40", "shop/a41", "shop/a42", "shop/a43", "shop/a44", "shop/a45"} <= failing_assets
    assert not failing_assets & {f"shop/a{i:02d}" for i in range(15)}

    home = tmp_path / "replay"
    home.mkdir()
    cfg = load_settings(HealthWorkerSettings, redis={"url": redis_url}, bus={"prefix": bus_prefix})
    bus = Bus(connect(cfg.redis), cfg.bus)

    def publish(events: list[tuple[str, Event]]) -> None:  # the sensor's order: stream by stream
        for stream in (ASSET_CHANGES, ASSETS, RUNS):
            if any(s == stream for s, _ in events):
                bus.publish_many(stream, [e for s, e in events if s == stream])

    if arrival == "backlog":
        publish(specs)
        for events in days:
            publish(events)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AMS_")},
           "DAGSTER_HOME": str(home), "AMS_REDIS__URL": redis_url, "AMS_BUS__PREFIX": bus_prefix,
           "AMS_BUS__BLOCK_MS": "200", "AMS_LOGGING__FORMAT": "json",
           "AMS_LOGGING__FILE": str(tmp_path / "workers.log"),
           "AMS_HEALTH__CATCH_UP_QUIET_S": "3", "AMS_HEALTH__EVALUATION_INTERVAL_S": "2",
           "AMS_BUS__BATCH_SIZE": "100", "AMS_HEALTH__MAX_DEFER_S": "0.2",
           "AMS_ALERTS__TICK_INTERVAL_S": "1",
           "AMS_ALERTS__RECEIVERS": json.dumps([{"name": "hook", "url": receiver.url, "timeout_s": 5}])}
    workers = [ServiceProcess.service(name, env, tmp_path / f"{name}.out") for name in ("health", "alerts")]
    try:
        for worker in workers:
            wait_for(worker.answers, timeout_s=60, what=f"{worker.args[-1]} answering")
        if arrival == "paced":
            publish(specs)
            for events in days:
                publish(events)
                time.sleep(0.3)  # a sensor tick later; much shorter than the quiet period that ends a catch-up
        wait_for(lambda: open_alerts(home) == expected, timeout_s=180, what="the reference's open alerts",
                 diagnose=lambda: f"differing: {sorted(open_alerts(home) ^ expected)}\n"
                 + (tmp_path / "workers.log").read_text()[-4000:])

        def announced() -> bool:
            with sqlite3.connect(home / "monitor.db", timeout=5) as conn:
                waiting = conn.execute("SELECT COUNT(*) FROM incidents WHERE status = 'open' AND announced_at IS NULL"
                                       ).fetchone()[0]
            return bool(waiting == 0)

        wait_for(announced, timeout_s=60, what="every open incident announced")
        time.sleep(3)  # anything more the workers would send has had time to arrive
    finally:
        for worker in workers:
            worker.stop()
    bodies = [json.loads(r.body) for r in receiver.requests]
    kinds = [b["type"] for b in bodies]
    assert "alert.resolved" not in kinds and "alert.merged" not in kinds, kinds  # nothing of the past
    with sqlite3.connect(home / "monitor.db") as conn:
        open_incidents = {r[0] for r in conn.execute("SELECT id FROM incidents WHERE status = 'open'")}
    firing = [b["data"]["incident_id"] for b in bodies if b["type"] == "alert.firing"]
    assert sorted(firing) == sorted(open_incidents)  # each open incident announced once, nothing else
    named = {m["asset_key"] for b in bodies for m in b["data"]["members"]}
    assert named == failing_assets
