"""From Dagster's own daemon code to health: a sensor and a schedule of a real code location fail on their
ticks (Dagster's sensor and scheduler iterations, in-process), the real publishing sensor writes the
automation stream on real Redis, and the health service judges what it reads: the sensor and the schedule
FAILED with the error, their code location, owners and tags; fixed, both healthy again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from dagster import DagsterInstance

from asset_manager.settings import AppSettings
from libs.common.bus import Delivery
from libs.common.events import AUTOMATION, HealthChanged, parse_event
from libs.common.store import Store
from services.health.service import HealthService
from services.health.store import open_store
from tests.orchestrator import automation_defs
from tests.orchestrator.test_orchestrator_automation import evaluate, publish, workspace  # noqa: F401


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def feed(engine: HealthService, client: redis.Redis, settings: AppSettings, after: str) -> str:
    """Hand the automation stream's entries after `after` to the health service, as its consumer would."""
    entries = client.xrange(f"{settings.bus.prefix}:{AUTOMATION}", f"({after}" if after != "-" else "-")
    engine.handle([Delivery(AUTOMATION, i.decode(), parse_event(f[b"event"])) for i, f in entries])
    return entries[-1][0].decode() if entries else after


def published(store: Store) -> dict[str, HealthChanged]:
    """The latest health.changed per object."""
    rows = store.connection().execute("SELECT payload FROM event_outbox ORDER BY seq").fetchall()
    latest: dict[str, HealthChanged] = {}
    for row in rows:
        event = parse_event(row[0])
        assert isinstance(event, HealthChanged)
        latest[event.data.asset_key] = event
    return latest


def test_a_failing_sensor_and_schedule_reach_health_and_recover(
    settings: AppSettings,
    dagster_instance: DagsterInstance,
    redis_client: redis.Redis,
    workspace: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = automation_defs.defs.get_repository_def()
    location = settings.dagster.code_location
    sensor, schedule = f"sensor:{location}/watch_inbox", f"schedule:{location}/every_five_minutes"
    monkeypatch.setenv(automation_defs.SENSOR_FAILS, "1")
    monkeypatch.setenv(automation_defs.SCHEDULE_FAILS, "1")
    past = datetime.now(UTC) - timedelta(minutes=15)
    start = past.replace(minute=past.minute - past.minute % 5, second=0, microsecond=0) + timedelta(minutes=1)
    store = open_store(settings)
    # Health judges at the daemon's (frozen) time; the publisher's heartbeats carry the real time.
    clock = Clock((start + timedelta(minutes=5, seconds=10)).timestamp())
    engine = HealthService(store, settings, clock=clock)
    try:
        evaluate(workspace, start)
        cursor = publish(settings, dagster_instance, None, repo)
        evaluate(workspace, start + timedelta(minutes=5))
        cursor = publish(settings, dagster_instance, cursor, repo)
        last = feed(engine, redis_client, settings, "-")

        latest = published(store)
        assert latest[sensor].data.status == "FAILED" and latest[schedule].data.status == "FAILED"
        failing = next(c for c in latest[sensor].data.checks if c.check == "tick_failures")
        assert failing.outcome == "error" and failing.values["failed_ticks"] == 2
        assert "RuntimeError: inbox unreachable: connection refused" in failing.reason
        assert latest[sensor].data.owners == ["team:ingest"] and latest[sensor].data.tags == {"tier": "gold"}
        assert latest[sensor].data.code_location == location and latest[sensor].data.object_kind == "sensor"
        scheduled = next(c for c in latest[schedule].data.checks if c.check == "tick_failures")
        assert "partition config unavailable" in scheduled.reason
        assert not latest[sensor].data.replay  # recent as of the daemon's time: judged live

        monkeypatch.delenv(automation_defs.SENSOR_FAILS)
        monkeypatch.delenv(automation_defs.SCHEDULE_FAILS)
        evaluate(workspace, start + timedelta(minutes=6))
        publish(settings, dagster_instance, cursor, repo)
        clock.t = (start + timedelta(minutes=6, seconds=10)).timestamp()
        feed(engine, redis_client, settings, last)
        latest = published(store)
        assert latest[sensor].data.status == "HEALTHY" and latest[schedule].data.status == "HEALTHY"
        assert latest[schedule].data.changed_checks == ["tick_failures"]
    finally:
        store.close()
