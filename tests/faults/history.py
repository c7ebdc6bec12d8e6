"""Shared by the catch-up fault tests: the reference (the same history fed in real time to the services
in-process, with a clock that follows the events), the workers' environment, and the checks that the
workers paged no one about the past."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from libs.common.bus import Delivery
from libs.common.events import ASSET_CHANGES, HEALTH, Event, parse_event
from libs.common.settings import load_settings
from libs.common.testing import wait_for, worker_env
from services.alerts.service import AlertService
from services.alerts.settings import AlertsWorkerSettings
from services.alerts.store import open_store as open_monitor
from services.alerts.testing import RecordingReceiver
from services.health.service import HealthService
from services.health.settings import HealthWorkerSettings
from services.health.store import open_store as open_health

DAY = 86400.0
QUIET_S = 3.0  # the workers' `health.catch_up_quiet_s`: silence that ends a catch-up


def open_alerts(home: Path) -> set[tuple[str, str]]:
    """(asset, check) of every firing alert in `home`'s monitor.db."""
    db = home / "monitor.db"
    if not db.exists():
        return set()
    conn = sqlite3.connect(db, timeout=5)
    try:
        rows = conn.execute("SELECT asset_key, check_name FROM alerts WHERE status = 'firing'")
        return {(r[0], r[1]) for r in rows}
    except sqlite3.OperationalError:
        return set()
    finally:
        conn.close()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def drain(store: Any) -> list[Delivery]:
    """The health events staged in the outbox, removed from it (what the worker loop would publish)."""
    with store.write() as conn:
        rows = conn.execute("SELECT seq, payload FROM event_outbox ORDER BY seq").fetchall()
        conn.execute("DELETE FROM event_outbox")
    return [Delivery(HEALTH, f"{r['seq']}-0", parse_event(r["payload"])) for r in rows]


def reference(
    home: Path, specs: Sequence[tuple[str, Event]], days: Sequence[Sequence[tuple[str, Event]]], since: float
) -> set[tuple[str, str]]:
    """The alerts open after the same history arrived in real time: the specs at `since`, then a batch per
    day as a worker keeping up would see it (in-process, the clock following the events), then the wall
    clock."""
    home.mkdir()
    hcfg = load_settings(HealthWorkerSettings, dagster_home=str(home), logging={"file": None})
    acfg = load_settings(AlertsWorkerSettings, dagster_home=str(home), logging={"file": None})
    hstore, mstore = open_health(hcfg), open_monitor(acfg)
    clock = Clock(since)
    health = HealthService(hstore, hcfg, clock=clock)
    alerts = AlertService(mstore, acfg, clock=clock)

    def deliver(batch: Sequence[tuple[str, Event]]) -> None:
        health.handle([Delivery(stream, f"{n}-0", e) for n, (stream, e) in enumerate(batch, 1)])
        alerts.handle([*drain(hstore), *(Delivery(s, "0-0", e) for s, e in batch if s == ASSET_CHANGES)])

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


def catch_up_env(
    tmp_path: Path, home: Path, redis_url: str, prefix: str, receiver: RecordingReceiver, **extra: str
) -> dict[str, str]:
    """The workers' environment: small batches evaluated often (a worker catching up sees the past in many
    steps), a short quiet period, the receiver as the one webhook."""
    return worker_env(
        home,
        redis_url,
        prefix,
        AMS_LOGGING__FORMAT="json",
        AMS_LOGGING__FILE=str(tmp_path / "workers.log"),
        AMS_HEALTH__CATCH_UP_QUIET_S=str(QUIET_S),
        AMS_HEALTH__EVALUATION_INTERVAL_S="2",
        AMS_BUS__BATCH_SIZE="100",
        AMS_HEALTH__MAX_DEFER_S="0.2",
        AMS_ALERTS__TICK_INTERVAL_S="1",
        AMS_ALERTS__RECEIVERS=json.dumps([{"name": "hook", "url": receiver.url, "timeout_s": 5}]),
        **extra,
    )


def settle(home: Path, expected: set[tuple[str, str]], log: Path) -> None:
    """Wait until the open alerts are `expected` and every one of them is in an incident announced (alerts of
    replayed history join one only once health confirms them live), then long enough for anything more the
    workers would send to arrive. `log`: the workers' log, shown when the alerts differ."""
    wait_for(
        lambda: open_alerts(home) == expected,
        timeout_s=180,
        what="the reference's open alerts",
        diagnose=lambda: f"differing: {sorted(open_alerts(home) ^ expected)}\n" + log.read_text()[-4000:],
    )

    def announced() -> bool:
        with sqlite3.connect(home / "monitor.db", timeout=5) as conn:
            waiting = conn.execute(
                """SELECT COUNT(*) FROM alerts AS a LEFT JOIN incidents AS i ON i.id = a.incident_id
                   WHERE a.status = 'firing' AND (i.id IS NULL OR i.announced_at IS NULL)"""
            ).fetchone()[0]
        return bool(waiting == 0)

    wait_for(announced, timeout_s=60, what="every open alert announced in its incident")
    time.sleep(QUIET_S)


def assert_nothing_about_the_past(receiver: RecordingReceiver, home: Path, failing_assets: set[str]) -> None:
    """No notice resolves or merges anything (the past's problems were never announced), each open incident
    was announced exactly once, and the notices name exactly the assets failing now."""
    bodies = [json.loads(r.body) for r in receiver.requests]
    kinds = [b["type"] for b in bodies]
    assert "alert.resolved" not in kinds and "alert.merged" not in kinds, kinds
    with sqlite3.connect(home / "monitor.db") as conn:
        open_incidents = {r[0] for r in conn.execute("SELECT id FROM incidents WHERE status = 'open'")}
    firing = [b["data"]["incident_id"] for b in bodies if b["type"] == "alert.firing"]
    assert sorted(firing) == sorted(open_incidents)
    named = {m["asset_key"] for b in bodies for m in b["data"]["members"]}
    assert named == failing_assets
