"""A burst of 1,000 finished runs between two ticks is published within two ticks (Dagster's own
run-status sensors handle 5 runs per tick)."""

from __future__ import annotations

from collections import Counter

import pytest
import redis
from dagster import DagsterInstance, build_sensor_context

from libs.common.events import ASSETS, RUNS, parse_event
from orchestrator.sensors import build_event_sensor
from orchestrator.settings import OrchestratorSettings
from orchestrator.testing import record_finished_runs

BURST = 1000


def test_a_thousand_finished_runs_are_published_within_two_ticks(
    settings: OrchestratorSettings, redis_client: redis.Redis
) -> None:
    # In-memory storage records runs ~10x faster than the SQLite files; the sensor reads it the same way.
    instance = DagsterInstance.ephemeral()
    sensor = build_event_sensor(settings=settings)
    assert settings.sensors.page_size == 1000

    first = build_sensor_context(instance=instance, cursor=None)
    sensor(first)  # the sensor is running and caught up before the burst
    run_ids = record_finished_runs(instance, BURST, failed_every=50)

    cursor = first.cursor
    for _ in range(2):
        context = build_sensor_context(instance=instance, cursor=cursor)
        sensor(context)
        cursor = context.cursor

    runs = [parse_event(f[b"event"]) for _, f in redis_client.xrange(f"{settings.bus.prefix}:{RUNS}")]
    counts = Counter(e.type for e in runs)
    assert counts == {"run.started": BURST, "run.succeeded": BURST - BURST // 50, "run.failed": BURST // 50}
    assert {e.data.run_id for e in runs} == set(run_ids)
    assert len({e.id for e in runs}) == len(runs)  # no duplicates
    assert all(e.data.asset_keys == ["burst_asset"] for e in runs)

    assets = [parse_event(f[b"event"]) for _, f in redis_client.xrange(f"{settings.bus.prefix}:{ASSETS}")]
    kinds = Counter(e.type for e in assets)
    # failed runs have no step failure: their planned asset is reported failed with the run's error
    assert kinds == {"asset.materialized": BURST - BURST // 50, "asset.materialization_failed": BURST // 50}
    assert all(e.data.row_count is not None for e in assets if e.type == "asset.materialized")


@pytest.mark.parametrize("window", [0, 2000], ids=["no window", "late-commit window"])
def test_a_tick_stops_at_its_budget_and_the_next_one_continues(
    settings: OrchestratorSettings, redis_client: redis.Redis, window: int
) -> None:
    """Every tick makes progress, also when re-reading the late-commit window (PostgreSQL) takes its
    budget."""
    instance = DagsterInstance.ephemeral()
    run_ids = record_finished_runs(instance, 30)
    sensors = settings.sensors.model_copy(
        update={"page_size": 5, "tick_budget_s": 0.01, "late_commit_window": window}
    )
    tight = settings.model_copy(update={"sensors": sensors})
    sensor = build_event_sensor(settings=tight)
    cursor = None
    ticks = 0
    while True:
        context = build_sensor_context(instance=instance, cursor=cursor)
        message = str(sensor(context).skip_message)  # type: ignore[union-attr]
        cursor = context.cursor
        ticks += 1
        if "caught up" in message:
            break
        assert ticks < 200
    assert ticks > 1
    runs = [parse_event(f[b"event"]) for _, f in redis_client.xrange(f"{settings.bus.prefix}:{RUNS}")]
    assert Counter(e.type for e in runs) == {"run.started": 30, "run.succeeded": 30}
    assert {e.data.run_id for e in runs} == set(run_ids) and len({e.id for e in runs}) == 60
