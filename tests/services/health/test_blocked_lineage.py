"""A real Dagster run of root → child_a, child_b → grandchild where the root raises: the real sensor publishes
it to real Redis, discovery and health handle it in-process through their workers. The root is FAILED; the
three Dagster skipped are WARNING, blocked by the root, never FAILED; a good run makes all four HEALTHY."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dagster import DagsterInstance, Definitions, asset, build_sensor_context, instance_for_test

from asset_manager.settings import AppSettings
from libs.common import outbox
from libs.common.events import ASSETS, HEALTH, RUNS, HealthChanged, HealthStatus, parse_event
from libs.common.worker import Worker
from orchestrator.sensors import build_event_sensor
from orchestrator.settings import get_settings
from services.health.queries import latest_health

FAILING: set[str] = set()


@asset(owners=["team:platform"])
def root() -> int:
    if "root" in FAILING:
        raise ValueError("root raised on purpose")
    return 1


@asset(owners=["team:sales"])
def child_a(root: int) -> int:
    return root + 1


@asset(owners=["team:finance"])
def child_b(root: int) -> int:
    return root + 2


@asset(owners=["analyst@example.com"])
def grandchild(child_a: int, child_b: int) -> int:
    return child_a + child_b


DEFS = Definitions(assets=[root, child_a, child_b, grandchild])
BELOW = ("child_a", "child_b", "grandchild")


@pytest.fixture
def instance(settings: AppSettings) -> Iterator[DagsterInstance]:
    get_settings.cache_clear()
    with instance_for_test(temp_dir=str(settings.dagster_home)) as dagster_instance:
        yield dagster_instance
    get_settings.cache_clear()
    FAILING.clear()


@pytest.fixture
def workers(settings: AppSettings) -> Iterator[dict[str, Worker]]:
    from services.discovery.app import build as discovery
    from services.health.app import build as health

    built = {"discovery": discovery(settings, port=0), "health": health(settings, port=0)}
    for worker in built.values():
        worker.consumer.ensure_groups()
    yield built
    for worker in built.values():
        worker.store.close()
        worker.client.close()


def settle(workers: dict[str, Worker]) -> None:
    """What the workers' loops do, until nothing is left: read, handle, acknowledge, publish the outbox."""
    for _ in range(50):
        moved = 0
        for worker in workers.values():
            moved += worker.consumer.poll(block=False)
            moved += outbox.flush(worker.store, worker.bus) or 0
        if not moved and all(w.bus.unsettled(w.consumer.group, w.streams) == 0 for w in workers.values()):
            return
    raise AssertionError("the workers did not settle")


def run_and_publish(
    settings: AppSettings, instance: DagsterInstance, cursor: str | None
) -> tuple[bool, str | None]:
    """One run of the four assets, then one tick of the real sensor (as the daemon evaluates it)."""
    job = DEFS.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    context = build_sensor_context(instance=instance, cursor=cursor, repository_def=DEFS.get_repository_def())
    build_event_sensor(settings=settings).evaluate_tick(context)
    return result.success, context.cursor


def stream(workers: dict[str, Worker], name: str) -> list[Any]:
    worker = workers["health"]
    return [parse_event(fields[b"event"]) for _, fields in worker.client.xrange(worker.bus.key(name))]


def health_events(workers: dict[str, Worker]) -> list[HealthChanged]:
    events = stream(workers, HEALTH)
    assert all(isinstance(e, HealthChanged) for e in events)
    return events


def test_a_failing_root_blocks_its_lineage_and_its_recovery_heals_it(
    settings: AppSettings, instance: DagsterInstance, workers: dict[str, Worker]
) -> None:
    FAILING.add("root")
    succeeded, cursor = run_and_publish(settings, instance, None)
    assert not succeeded
    # The sensor says which asset failed on its own; Dagster skipped the three others.
    (failed_run,) = [e.data for e in stream(workers, RUNS) if e.type == "run.failed"]
    assert failed_run.asset_keys == ["child_a", "child_b", "grandchild", "root"]
    assert failed_run.failed_asset_keys == ["root"]
    failures = [e.data.asset_key for e in stream(workers, ASSETS) if e.type == "asset.materialization_failed"]
    assert failures == ["root"]
    settle(workers)

    def health() -> dict[str, Any]:
        return {h.asset_key: h for h in latest_health(workers["health"].store)}

    def check(h: Any, name: str) -> Any:
        return next(c for c in h.checks if c.check == name)

    now = health()
    assert {k: h.status for k, h in now.items()} == {
        "root": "FAILED",
        "child_a": "WARNING",
        "child_b": "WARNING",
        "grandchild": "WARNING",
    }
    assert "root raised on purpose" in check(now["root"], "execution_status").reason
    for key in BELOW:
        execution = check(now[key], "execution_status")
        assert execution.outcome == "warn" and execution.values["blocked_by"] == ["root"], execution
        assert "blocked by the failure of upstream root" in execution.reason
        deps = check(now[key], "dependencies")
        assert deps.outcome == "warn" and deps.values["failed_upstream"] == ["root"], deps
    # What the alerts worker reads: the health.changed events, with the owners from the catalog.
    latest = {e.data.asset_key: e.data for e in health_events(workers)}
    assert latest["grandchild"].owners == ["analyst@example.com"]
    assert check(latest["grandchild"], "execution_status").values["blocked_by"] == ["root"]

    FAILING.clear()
    succeeded, _ = run_and_publish(settings, instance, cursor)
    assert succeeded
    settle(workers)
    assert {k: h.status for k, h in health().items()} == dict.fromkeys(["root", *BELOW], "HEALTHY")
    never = [
        e.data.asset_key
        for e in health_events(workers)
        if e.data.asset_key in BELOW and e.data.status == HealthStatus.FAILED
    ]
    assert never == []
