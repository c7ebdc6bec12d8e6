"""The publishing sensor on a real Dagster instance and real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from dagster import DagsterInstance, Definitions, RepositoryDefinition, asset, build_sensor_context

from libs.common.events import ASSETS, CATALOG, CHECK_NAMES, RUNS, dagster_check_name, parse_event
from libs.common.redis_server import LocalRedis
from libs.common.settings import PROJECT_ROOT
from orchestrator.assets import _demo
from orchestrator.definitions import build_definitions, defs
from orchestrator.loader import ModuleProblem, ScanResult
from orchestrator.sensors import SENSOR_NAME, PublisherCursor, PublishError, build_event_sensor
from orchestrator.settings import OrchestratorSettings
from orchestrator.testing import record_finished_runs

DEMO = ["raw_customers", "raw_orders", "stg_customers", "stg_orders", "transformed_customer_orders"]


def tick(
    settings: OrchestratorSettings,
    instance: DagsterInstance,
    cursor: str | None,
    repo: RepositoryDefinition | None = None,
) -> tuple[str | None, str]:
    """Evaluate the sensor once as the daemon would; returns the new cursor and the tick's message."""
    context = build_sensor_context(instance=instance, cursor=cursor, repository_def=repo)
    result = build_event_sensor(settings=settings)(context)
    return context.cursor, str(getattr(result, "skip_message", ""))


def read(client: redis.Redis, settings: OrchestratorSettings, stream: str) -> list[Any]:
    entries = client.xrange(f"{settings.bus.prefix}:{stream}")
    return [parse_event(fields[b"event"]) for _, fields in entries]


def test_runs_materializations_failures_and_catalog_are_published(
    settings: OrchestratorSettings, dagster_instance: DagsterInstance, redis_client: redis.Redis
) -> None:
    repo = defs.get_repository_def()
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=dagster_instance).success
    _demo.set_failing("stg_orders")
    failed_run = job.execute_in_process(instance=dagster_instance, raise_on_error=False)
    assert not failed_run.success

    cursor, message = tick(settings, dagster_instance, None, repo)
    assert "caught up" in message

    runs = read(redis_client, settings, RUNS)
    assert Counter(e.type for e in runs) == {"run.started": 2, "run.succeeded": 1, "run.failed": 1}
    failed = next(e for e in runs if e.type == "run.failed")
    assert failed.data.run_id == failed_run.run_id
    assert "stg_orders was asked to fail" in (failed.data.error or "")
    # It names the asset that failed on its own, not transformed_customer_orders, which Dagster skipped.
    assert failed.data.failed_asset_keys == ["stg_orders"]
    assert all(e.data.failed_asset_keys is None for e in runs if e.type != "run.failed")
    for event in runs:
        assert event.data.asset_keys == DEMO
        assert event.data.started_at is not None
        assert event.id  # deterministic: uuid5 of type and "<run_id>:<status>"
    succeeded = next(e for e in runs if e.type == "run.succeeded")
    assert succeeded.data.ended_at is not None and succeeded.data.duration_s is not None
    assert succeeded.data.duration_s >= 0

    assets = read(redis_client, settings, ASSETS)
    materialized = [e for e in assets if e.type == "asset.materialized"]
    # all five in the good run; in the failed one raw_*, stg_customers (stg_orders failed, transform skipped)
    assert Counter(e.data.asset_key for e in materialized) == {
        "raw_customers": 2,
        "raw_orders": 2,
        "stg_customers": 2,
        "stg_orders": 1,
        "transformed_customer_orders": 1,
    }
    for event in materialized:
        assert event.data.row_count is not None and event.data.row_count > 0
        assert event.data.column_schema and all(c.name and c.type for c in event.data.column_schema)
        assert event.data.duration_s is not None and event.data.storage_id is not None
        assert event.data.metadata.get("path")  # the other metadata, JSON-safe
        json.dumps(event.data.metadata)
    failures = [e for e in assets if e.type == "asset.materialization_failed"]
    assert [(e.data.asset_key, e.data.run_id) for e in failures] == [("stg_orders", failed_run.run_id)]
    assert "stg_orders was asked to fail" in (failures[0].data.error or "")

    (snapshot,) = read(redis_client, settings, CATALOG)
    assert snapshot.type == "catalog.snapshot"
    assert [a.key for a in snapshot.data.assets] == DEMO
    stg = next(a for a in snapshot.data.assets if a.key == "stg_orders")
    assert stg.upstream == ["raw_orders"] and stg.downstream == ["transformed_customer_orders"]
    assert stg.checks == sorted(dagster_check_name(c) for c in CHECK_NAMES)
    assert stg.source_file == "orchestrator/assets/loaders/orders_loader.py" and stg.source_line
    assert stg.owners and stg.kinds and stg.group == "stg__loaders"

    # Nothing new: nothing published, the catalog is not repeated.
    again, message = tick(settings, dagster_instance, cursor, repo)
    assert message.startswith("0 events published")
    assert PublisherCursor.from_json(again) == PublisherCursor.from_json(cursor)

    # Recovery: the next run succeeds and only its events are published.
    _demo.set_failing("stg_orders", False)
    recovered = job.execute_in_process(instance=dagster_instance)
    tick(settings, dagster_instance, again, repo)
    new_runs = read(redis_client, settings, RUNS)[len(runs) :]
    assert [(e.type, e.data.run_id) for e in new_runs] == [
        ("run.started", recovered.run_id),
        ("run.succeeded", recovered.run_id),
    ]
    assert len(read(redis_client, settings, CATALOG)) == 1


def test_snapshot_is_published_once_per_definitions_change(
    settings: OrchestratorSettings, dagster_instance: DagsterInstance, redis_client: redis.Redis
) -> None:
    @asset(group_name="g", owners=["team:a"])
    def first() -> int:
        return 1

    @asset(group_name="g", owners=["team:a"], deps=[first])
    def second() -> int:
        return 2

    one = Definitions(assets=[first]).get_repository_def()
    two = Definitions(assets=[first, second]).get_repository_def()
    two_again = Definitions(assets=[first, second]).get_repository_def()  # reloaded, unchanged

    cursor, _ = tick(settings, dagster_instance, None, one)
    cursor, _ = tick(settings, dagster_instance, cursor, one)
    cursor, _ = tick(settings, dagster_instance, cursor, two)
    cursor, _ = tick(settings, dagster_instance, cursor, two_again)
    snapshots = read(redis_client, settings, CATALOG)
    assert [[a.key for a in s.data.assets] for s in snapshots] == [["first"], ["first", "second"]]
    assert snapshots[0].data.fingerprint != snapshots[1].data.fingerprint
    assert snapshots[1].id != snapshots[0].id
    assert PublisherCursor.from_json(cursor).catalog == snapshots[1].data.fingerprint


def test_redis_down_fails_the_tick_and_the_retry_publishes_the_same_ids(
    settings: OrchestratorSettings, dagster_instance: DagsterInstance, local_redis: LocalRedis
) -> None:
    own = settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": local_redis.url})})
    reference = own.model_copy(update={"bus": own.bus.model_copy(update={"prefix": own.bus.prefix + "-ref"})})
    record_finished_runs(dagster_instance, 20, failed_every=5)
    repo = defs.get_repository_def()
    client = redis.Redis.from_url(local_redis.url, protocol=2)

    # What a tick that succeeds at once publishes (on a separate prefix), from the same cursor.
    tick(reference, dagster_instance, None, repo)
    expected = {s: [e.id for e in read(client, reference, s)] for s in (RUNS, ASSETS, CATALOG)}
    assert len(expected[RUNS]) == 40 and len(expected[ASSETS]) == 20 and len(expected[CATALOG]) == 1

    local_redis.stop()
    context = build_sensor_context(instance=dagster_instance, cursor=None, repository_def=repo)
    with pytest.raises(PublishError, match="next tick retries"):
        build_event_sensor(settings=own)(context)
    assert context.cursor is None  # the cursor did not move

    local_redis.restart()
    client = redis.Redis.from_url(local_redis.url, protocol=2)
    cursor, _ = tick(own, dagster_instance, None, repo)
    published = {s: [e.id for e in read(client, own, s)] for s in (RUNS, ASSETS, CATALOG)}
    assert published == expected  # same events, same ids, same order, none twice
    assert cursor is not None and PublisherCursor.from_json(cursor).positions["run_succeeded"] > 0


def test_an_unreadable_cursor_is_refused_not_reset() -> None:
    with pytest.raises(ValueError, match=SENSOR_NAME):
        PublisherCursor.from_json("{not json")
    assert PublisherCursor.from_json(None) == PublisherCursor()
    cursor = PublisherCursor(catalog="abc")
    cursor.positions["materialized"] = 42
    assert PublisherCursor.from_json(cursor.to_json()) == cursor


def test_the_snapshot_carries_the_asset_module_problems(
    settings: OrchestratorSettings, dagster_instance: DagsterInstance, redis_client: redis.Redis
) -> None:
    @asset
    def fine() -> int:
        return 1

    problem = ModuleProblem(
        "orchestrator.assets.ingestion.bad", "/x/bad.py", "ModuleNotFoundError: No module named 'x'"
    )
    scan = ScanResult(package="orchestrator.assets", root=Path("."), assets=[fine], problems=[problem])
    repo = build_definitions(scan, sensors=[]).get_repository_def()
    tick(settings, dagster_instance, None, repo)
    (snapshot,) = read(redis_client, settings, CATALOG)
    assert [a.key for a in snapshot.data.assets] == ["fine"]
    assert snapshot.data.problems == [str(problem)]
    assert "bad.py" in snapshot.data.problems[0] and "ModuleNotFoundError" in snapshot.data.problems[0]


def test_redis_refusing_writes_mid_tick_republishes_with_the_same_ids(
    settings: OrchestratorSettings, local_redis: LocalRedis
) -> None:
    """Redis runs out of memory after some pages went out: the tick fails, and the retry publishes the
    missing events; what went out twice went out with the same ids."""
    small = settings.model_copy(
        update={
            "redis": settings.redis.model_copy(update={"url": local_redis.url}),
            "sensors": settings.sensors.model_copy(update={"page_size": 20}),
        }
    )
    reference = small.model_copy(
        update={"bus": small.bus.model_copy(update={"prefix": small.bus.prefix + "-ref"})}
    )
    instance = DagsterInstance.ephemeral()
    record_finished_runs(instance, 200)
    client = redis.Redis.from_url(local_redis.url, protocol=2)
    tick(reference, instance, None)
    expected = {s: [e.id for e in read(client, reference, s)] for s in (RUNS, ASSETS)}
    assert len(expected[RUNS]) == 400 and len(expected[ASSETS]) == 200
    client.delete(*(f"{reference.bus.prefix}:{s}" for s in (RUNS, ASSETS)))

    client.config_set("maxmemory-policy", "noeviction")
    # room for a few pages (an event is about 1 kB), not for 600 events: then Redis refuses writes (OOM)
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 150_000)
    context = build_sensor_context(instance=instance, cursor=None)
    with pytest.raises(PublishError, match=r"maxmemory|OOM"):
        build_event_sensor(settings=small)(context)
    assert context.cursor is None
    partial = {s: [e.id for e in read(client, small, s)] for s in (RUNS, ASSETS)}
    assert 0 < len(partial[RUNS]) < len(expected[RUNS])  # some pages went out before Redis refused

    client.config_set("maxmemory", 0)
    tick(small, instance, None)
    published = {s: [e.id for e in read(client, small, s)] for s in (RUNS, ASSETS)}
    for stream in (RUNS, ASSETS):
        assert set(published[stream]) == set(expected[stream])  # nothing lost, no id that should not exist
        assert published[stream][len(partial[stream]) :] == expected[stream]  # the retry: all, same ids


def test_runs_launched_by_the_dagster_cli_are_published(
    settings: OrchestratorSettings, dagster_instance: DagsterInstance, redis_client: redis.Redis
) -> None:
    """`dagster asset materialize` runs in an ephemeral code location of its own; the sensor reads the
    instance-wide event log, so it sees those runs (what monitor_all_code_locations gives other sensors)."""
    dagster = str(Path(sys.executable).with_name("dagster"))
    env = {**os.environ, "DAGSTER_HOME": str(settings.dagster_home)}
    done = subprocess.run(
        [dagster, "asset", "materialize", "-m", "orchestrator.definitions", "--select", "raw_customers"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    tick(settings, dagster_instance, None, defs.get_repository_def())
    runs = read(redis_client, settings, RUNS)
    assert [(e.type, e.data.asset_keys) for e in runs] == [
        ("run.started", ["raw_customers"]),
        ("run.succeeded", ["raw_customers"]),
    ]
    (materialized,) = read(redis_client, settings, ASSETS)
    assert materialized.data.asset_key == "raw_customers" and materialized.data.row_count


def test_a_canceled_run_is_published_with_its_message(
    settings: OrchestratorSettings, redis_client: redis.Redis
) -> None:
    from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

    instance = DagsterInstance.ephemeral()
    run = instance.add_run(
        DagsterRun(job_name="some_job", run_id="r-cancel-1", status=DagsterRunStatus.NOT_STARTED)
    )
    instance.report_run_canceled(run, message="canceled by alice@example.com")
    tick(settings, instance, None)
    (event,) = read(redis_client, settings, RUNS)
    assert event.type == "run.canceled" and event.data.status == "CANCELED"
    assert event.data.job_name == "some_job" and "alice@example.com" in (event.data.error or "")
    assert read(redis_client, settings, ASSETS) == []  # a canceled run is no failed materialization


def test_a_run_that_died_without_a_failed_step_failed_every_asset_it_did_not_materialize(
    settings: OrchestratorSettings, redis_client: redis.Redis
) -> None:
    """No step failed (the run's process died): no asset was blocked by another, each failed on its own."""
    instance = DagsterInstance.ephemeral()
    good, died = record_finished_runs(instance, 2, asset="lonely", failed_every=2)
    tick(settings, instance, None)
    runs = {(e.type, e.data.run_id): e.data for e in read(redis_client, settings, RUNS)}
    assert runs[("run.failed", died)].failed_asset_keys == ["lonely"]
    assert runs[("run.succeeded", good)].failed_asset_keys is None
    assets = read(redis_client, settings, ASSETS)
    failures = [e.data for e in assets if e.type == "asset.materialization_failed"]
    assert [(f.asset_key, f.run_id) for f in failures] == [("lonely", died)]
