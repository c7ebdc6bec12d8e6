"""The health service catching up on history (services/health/service.py `_catch_up`): judged as of the
history's time, published as replay, confirmed on the wall clock when over — after a quiet period, or at
once when the publisher's heartbeat says it has read the whole event log."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from libs.common.bus import Delivery
from libs.common.events import (
    AUTOMATION,
    HealthChanged,
    PublisherHeartbeat,
    PublisherHeartbeatData,
    parse_event,
)
from libs.common.settings import load_settings
from libs.common.store import Store
from services.health.service import HealthService
from services.health.settings import HealthWorkerSettings
from services.health.store import open_store
from tests.services.health.conftest import T0, Clock, Events, dt

DAY = 86400.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    settings = load_settings(
        HealthWorkerSettings, dagster_home=str(tmp_path), stores={"data_dir": str(tmp_path)}
    )
    return open_store(settings)


def published(store: Store) -> list[HealthChanged]:
    """The asset's health events (the heartbeats make the publisher an object of its own)."""
    rows = store.connection().execute("SELECT payload FROM event_outbox ORDER BY seq").fetchall()
    return [
        e
        for e in (parse_event(r[0]) for r in rows)
        if isinstance(e, HealthChanged) and e.data.asset_key == "a"
    ]


def heartbeat(at: float, *, caught_up: bool) -> Delivery:
    data = PublisherHeartbeatData(code_location="loc", tick_at=dt(at), caught_up=caught_up, interval_s=4)
    event = PublisherHeartbeat(
        id=f"hb-{at}",
        type="automation.publisher_heartbeat",
        occurred_at=dt(at),
        source="orchestrator",
        data=data,
    )
    return Delivery(AUTOMATION, "1-0", event)


def failing_history(ev: Events) -> list[Delivery]:
    """Ten daily materializations, then a failed run: old history, a day before the clock."""
    events = [ev.spec("a")] + [ev.mat("a", T0 + i * DAY, rows=1000) for i in range(10)]
    events.append(ev.run("bad", "FAILURE", ["a"], start=T0 + 10 * DAY - 60, end=T0 + 10 * DAY, failed=["a"]))
    return Events.deliveries(*events)


def test_history_is_replayed_as_of_its_time_and_confirmed_when_the_publisher_has_read_it_all(
    store: Store, tmp_path: Path
) -> None:
    settings = load_settings(
        HealthWorkerSettings, dagster_home=str(tmp_path), stores={"data_dir": str(tmp_path)}
    )
    clock = Clock(T0 + 11 * DAY)
    service = HealthService(store, settings, clock=clock)
    service.handle(failing_history(Events()))
    replayed = published(store)
    assert replayed and all(e.data.replay for e in replayed)
    assert replayed[-1].data.status == "FAILED" and replayed[-1].data.evaluated_at == dt(T0 + 10 * DAY)
    service.evaluate_all()  # no judging of the past against the wall clock meanwhile
    assert len(published(store)) == len(replayed)
    service.handle([heartbeat(clock.t - 60, caught_up=False)])  # still paging history: nothing changes
    assert len(published(store)) == len(replayed)
    service.handle([heartbeat(clock.t - 2, caught_up=True)])
    confirmed = published(store)[len(replayed) :]
    assert [(e.data.status, e.data.replay) for e in confirmed] == [("FAILED", False)]
    assert confirmed[0].data.evaluated_at == dt(clock.t)


def test_without_a_heartbeat_the_replay_ends_after_the_quiet_period(store: Store, tmp_path: Path) -> None:
    settings = load_settings(
        HealthWorkerSettings,
        dagster_home=str(tmp_path),
        stores={"data_dir": str(tmp_path)},
        health={"catch_up_quiet_s": 0.01},
    )
    clock = Clock(T0 + 11 * DAY)
    service = HealthService(store, settings, clock=clock)
    service.handle(failing_history(Events()))
    before = len(published(store))
    time.sleep(0.05)
    service.evaluate_pending()
    confirmed = published(store)[before:]
    assert [(e.data.status, e.data.replay) for e in confirmed] == [("FAILED", False)]
