"""Outages of Redis seen from both ends: the orchestrator sensor over several failed ticks, and the health
worker across Redis restarts with AOF (nothing lost) and without persistence (recovers, reports the gap)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
import redis
from dagster import DagsterInstance, build_sensor_context

from asset_manager.commands.simulate import generate
from asset_manager.settings import AppSettings
from libs.common.bus import Bus, connect
from libs.common.events import ASSETS, RUNS, Event, parse_event
from libs.common.redis_server import LocalRedis
from libs.common.settings import load_settings
from libs.common.testing import ServiceProcess, wait_for, worker_env
from orchestrator.sensors import PublishError, build_event_sensor
from orchestrator.testing import record_finished_runs

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]


def test_sensor_with_redis_down_for_several_ticks_loses_nothing(
    settings: AppSettings, local_redis: LocalRedis
) -> None:
    own = settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": local_redis.url})})
    sensor = build_event_sensor(settings=own)
    # Dagster's in-memory storage: recording the 50 runs in SQLite files (one per run) was most of the test.
    with DagsterInstance.ephemeral() as instance:
        record_finished_runs(instance, 10)
        cursor = _tick(sensor, instance, None)
        local_redis.stop()
        for _ in range(4):  # runs keep finishing while every tick fails and keeps its cursor
            record_finished_runs(instance, 10, failed_every=3)
            context = build_sensor_context(instance=instance, cursor=cursor)
            with pytest.raises(PublishError):
                sensor(context)
            assert context.cursor == cursor
        local_redis.restart()  # no persistence: only what is published from now on is there
        cursor = _tick(sensor, instance, cursor)
        cursor = _tick(sensor, instance, cursor)  # a quiet tick publishes nothing more
    client = redis.Redis.from_url(local_redis.url, protocol=2)
    runs = [parse_event(f[b"event"]) for _, f in client.xrange(f"{own.bus.prefix}:{RUNS}")]
    finished = [e for e in runs if e.type in ("run.succeeded", "run.failed")]
    assert len(finished) == 40 and len({e.id for e in runs}) == len(runs)  # the 40 runs of the outage, once
    assert sum(e.type == "run.failed" for e in finished) == 4 * 3


def _tick(sensor: object, instance: DagsterInstance, cursor: str | None) -> str | None:
    context = build_sensor_context(instance=instance, cursor=cursor)
    sensor(context)  # type: ignore[operator]
    return context.cursor


def health_worker(redis_url: str, home: Path, log: Path) -> ServiceProcess:
    env = worker_env(home, redis_url, "outage", AMS_LOGGING__FILE=str(log), AMS_LOGGING__FORMAT="json")
    return ServiceProcess.service("health", env, log.with_suffix(".out"))


def stored(home: Path) -> list[str]:
    conn = sqlite3.connect(home / "health.db", timeout=5)
    try:
        return [r[0] for r in conn.execute("SELECT event_id FROM materializations")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def materializations(events: list[tuple[str, Event]]) -> set[str]:
    return {e.id for _, e in events if e.type == "asset.materialized"}


def publish_through_outages(bus: Bus, events: list[tuple[str, Event]], done: threading.Event) -> None:
    """A producer that retries until Redis takes each chunk, as the sensor's next tick does."""
    for i in range(0, len(events), 50):
        chunk = events[i : i + 50]
        while True:
            try:
                for stream in (ASSETS, RUNS):
                    bus.publish_many(stream, [e for s, e in chunk if s == stream])
                break
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                time.sleep(0.2)
        time.sleep(0.02)
    done.set()


def test_health_worker_across_a_redis_restart_with_aof_loses_nothing(tmp_path: Path) -> None:
    server = LocalRedis(directory=tmp_path / "redis", appendonly=True).start()
    home = tmp_path / "home"
    worker = health_worker(server.url, home, tmp_path / "system.log")
    try:
        wait_for(worker.ready, 60, "health ready")
        settings = load_settings(
            AppSettings, redis={"url": server.url}, bus={"prefix": "outage"}, logging={"file": None}
        )
        bus = Bus(connect(settings.redis), settings.bus)
        events = list(generate(assets=20, events=3000, seed=4))
        done = threading.Event()
        producer = threading.Thread(target=publish_through_outages, args=(bus, events, done), daemon=True)
        producer.start()
        wait_for(lambda: len(stored(home)) > 50, 60, "some events stored")
        server.stop(kill=True)  # mid-run, without a clean shutdown
        time.sleep(1)
        server.start()  # AOF replayed: streams, groups and pending entries are back
        wait_for(done.is_set, 120, "everything published")
        wait_for(lambda: set(stored(home)) == materializations(events), 120, "every materialization stored")
        ids = stored(home)
        assert len(ids) == len(set(ids))
    finally:
        assert worker.stop() == 0
        server.stop()


def test_health_worker_after_redis_restart_without_persistence_recovers_and_reports_the_gap(
    tmp_path: Path,
) -> None:
    server = LocalRedis(directory=tmp_path / "redis").start()
    log = tmp_path / "system.log"
    home = tmp_path / "home"
    worker = health_worker(server.url, home, log)
    try:
        wait_for(worker.ready, 60, "health ready")
        settings = load_settings(
            AppSettings, redis={"url": server.url}, bus={"prefix": "outage"}, logging={"file": None}
        )
        events = list(generate(assets=5, events=200, seed=9))
        first, rest = events[:100], events[100:]
        Bus(connect(settings.redis), settings.bus).publish_many(ASSETS, [e for s, e in first if s == ASSETS])
        # every materialization of the first part stored before the restart, so none is in flight across it
        wait_for(lambda: set(stored(home)) == materializations(first), 60, "first events stored")
        server.restart()  # no persistence: the streams and the consumer group are gone
        wait_for(worker.ready, 60, "ready again")
        Bus(connect(settings.redis), settings.bus).publish_many(ASSETS, [e for s, e in rest if s == ASSETS])
        wait_for(lambda: set(stored(home)) == materializations(events), 60, "events after the restart stored")
        ids = stored(home)
        assert len(ids) == len(set(ids))
        assert 'ams_consumer_group_recreated_total{group="health"}' in worker.metrics()
        assert "consumer_group_missing_possible_event_gap" in log.read_text()
    finally:
        assert worker.stop() == 0
        server.stop()
