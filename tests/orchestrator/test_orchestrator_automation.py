"""The publisher's automation events on a real Dagster instance and real Redis: sensor and schedule ticks
evaluated by Dagster's own daemon code (in-process), daemon heartbeats, the publisher's heartbeat, op jobs."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from dagster import DagsterInstance, RepositoryDefinition, build_sensor_context

# No public names (read in dagster 1.13.27): Dagster's own tests drive the sensor and schedule daemons'
# iterations this way, against a workspace of in-process code locations.
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.scheduler.instigation import SensorInstigatorData
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.sensor import execute_sensor_iteration
from dagster._daemon.types import DaemonHeartbeat as DagsterDaemonHeartbeat
from dagster._scheduler.scheduler import launch_scheduled_runs
from dagster._utils.error import SerializableErrorInfo

from libs.common.events import ASSETS, AUTOMATION, RUNS, parse_event
from orchestrator.sensors import PublisherCursor, build_event_sensor
from orchestrator.settings import OrchestratorSettings
from orchestrator.testing import add_sensor_states, record_finished_runs, record_sensor_ticks
from tests.orchestrator import automation_defs

DEFS_FILE = Path(automation_defs.__file__)


def publish(
    settings: OrchestratorSettings,
    instance: DagsterInstance,
    cursor: str | None,
    repo: RepositoryDefinition | None = None,
) -> str | None:
    """One tick of the publishing sensor, as the daemon would run it; returns its new cursor."""
    context = build_sensor_context(instance=instance, cursor=cursor, repository_def=repo)
    build_event_sensor(settings=settings)(context)
    return context.cursor


def published_ticks(cursor: str | None) -> dict[str, tuple[int, str]]:
    """The cursor's last published tick (id, status) per sensor or schedule."""
    instigators = PublisherCursor.from_json(cursor).automation.instigators
    return {sid: (c.last, c.status) for sid, c in instigators.items()}


def read(client: redis.Redis, settings: OrchestratorSettings, stream: str) -> list[Any]:
    return [parse_event(f[b"event"]) for _, f in client.xrange(f"{settings.bus.prefix}:{stream}")]


def automation(client: redis.Redis, settings: OrchestratorSettings, event_type: str) -> list[Any]:
    return [e for e in read(client, settings, AUTOMATION) if e.type == event_type]


@pytest.fixture
def workspace(
    settings: OrchestratorSettings, dagster_instance: DagsterInstance
) -> Iterator[WorkspaceProcessContext]:
    """The test code location (tests/orchestrator/automation_defs.py) loaded as the daemon loads one,
    under this project's code location name (so the publisher knows its definitions' owners and tags)."""
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(
            python_file=str(DEFS_FILE), attribute="defs", working_directory=str(DEFS_FILE.parent)
        ),
        location_name=settings.dagster.code_location,
    )
    target = InProcessWorkspaceLoadTarget(origin)
    with create_test_daemon_workspace_context(target, dagster_instance) as context:
        yield context


def evaluate(workspace: WorkspaceProcessContext, at: datetime) -> None:
    """One iteration of the sensor daemon and of the scheduler at time `at` (schedule ticks retried once)."""
    logger = logging.getLogger("test-daemon")
    with freeze_time(at):
        list(execute_sensor_iteration(workspace, logger, None, None))
        list(launch_scheduled_runs(workspace, logger, at, {}, max_tick_retries=1))


def test_failing_sensor_and_schedule_ticks_are_published_once_per_status(
    settings: OrchestratorSettings,
    dagster_instance: DagsterInstance,
    redis_client: redis.Redis,
    workspace: WorkspaceProcessContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = automation_defs.defs.get_repository_def()
    monkeypatch.setenv(automation_defs.SENSOR_FAILS, "1")
    monkeypatch.setenv(automation_defs.SCHEDULE_FAILS, "1")
    # One minute past a five-minute mark, in the past: the schedule's cron times are start + 4, + 9 minutes.
    past = datetime.now(UTC) - timedelta(minutes=15)
    start = past.replace(minute=past.minute - past.minute % 5, second=0, microsecond=0) + timedelta(minutes=1)
    evaluate(workspace, start)  # the sensor's first tick fails; the schedule starts (no tick due yet)
    cursor = publish(settings, dagster_instance, None, repo)

    (failed,) = automation(redis_client, settings, "automation.tick")
    assert failed.data.kind == "sensor" and failed.data.name == "watch_inbox"
    assert failed.data.status == "FAILURE"
    assert failed.data.error == "RuntimeError: inbox unreachable: connection refused"
    assert failed.data.code_location == settings.dagster.code_location
    assert failed.data.repository == repo.name
    assert failed.data.running and failed.data.interval_s == 30
    # Owners and tags as the sensor's definition declares them.
    assert failed.data.owners == ["team:ingest"] and failed.data.tags == {"tier": "gold"}

    # Five minutes later (past a */5 cron time): the sensor fails again, the schedule's tick fails.
    evaluate(workspace, start + timedelta(minutes=5))
    cursor = publish(settings, dagster_instance, cursor, repo)
    ticks = automation(redis_client, settings, "automation.tick")
    assert [(e.data.name, e.data.status) for e in ticks] == [
        ("watch_inbox", "FAILURE"),
        ("watch_inbox", "FAILURE"),
        ("every_five_minutes", "FAILURE"),
    ]
    assert ticks[0].data.tick_id != ticks[1].data.tick_id
    scheduled = ticks[2]
    assert scheduled.data.kind == "schedule" and scheduled.data.cron_schedule == "*/5 * * * *"
    assert scheduled.data.timezone == "Europe/Berlin"
    assert scheduled.data.error == "RuntimeError: partition config unavailable"

    # Nothing changed: nothing republished, the cursor stays readable and equal.
    again = publish(settings, dagster_instance, cursor, repo)
    assert len(automation(redis_client, settings, "automation.tick")) == 3
    assert published_ticks(again) == published_ticks(cursor)

    # Fixed: the schedule retries its failed tick in place (same tick id, new status), the sensor skips.
    monkeypatch.delenv(automation_defs.SENSOR_FAILS)
    monkeypatch.delenv(automation_defs.SCHEDULE_FAILS)
    evaluate(workspace, start + timedelta(minutes=6))
    publish(settings, dagster_instance, again, repo)
    new = automation(redis_client, settings, "automation.tick")[3:]
    assert sorted((e.data.name, e.data.status, e.data.skip_reason) for e in new) == [
        ("every_five_minutes", "SKIPPED", "holiday"),
        ("watch_inbox", "SKIPPED", "no new files"),
    ]
    retried = next(e for e in new if e.data.name == "every_five_minutes")
    assert retried.data.tick_id == scheduled.data.tick_id and retried.id != scheduled.id


def test_a_tick_still_running_is_published_when_it_finishes_and_stopping_is_published(
    settings: OrchestratorSettings,
    dagster_instance: DagsterInstance,
    redis_client: redis.Redis,
    workspace: WorkspaceProcessContext,
) -> None:
    evaluate(workspace, datetime.now(UTC) - timedelta(minutes=3))
    cursor = publish(settings, dagster_instance, None)
    (state,) = [s for s in dagster_instance.all_instigator_state() if s.name == "watch_inbox"]
    (done,) = dagster_instance.get_ticks(state.instigator_origin_id, state.selector_id)
    # A tick the daemon has started but not finished, written as the daemon writes one: the sensor's state
    # marked with the tick's start first, then the tick.
    at = time.time() - 60
    assert isinstance(state.instigator_data, SensorInstigatorData)
    dagster_instance.update_instigator_state(
        state.with_data(state.instigator_data._replace(last_tick_start_timestamp=at))
    )
    started = dagster_instance.create_tick(
        done.tick_data._replace(status=done.status.STARTED, skip_reason=None, timestamp=at)
    )
    cursor = publish(settings, dagster_instance, cursor)
    assert [e.data.tick_id for e in automation(redis_client, settings, "automation.tick")] == [done.tick_id]
    dagster_instance.update_tick(started.with_status(started.status.SKIPPED).with_reason("no new files"))
    cursor = publish(settings, dagster_instance, cursor)
    ticks = automation(redis_client, settings, "automation.tick")
    assert [(e.data.tick_id, e.data.status) for e in ticks] == [
        (done.tick_id, "SKIPPED"),
        (started.tick_id, "SKIPPED"),
    ]

    # Turned off without a new tick: its latest tick again, saying it is not running.
    (state,) = [s for s in dagster_instance.all_instigator_state() if s.name == "watch_inbox"]
    dagster_instance.update_instigator_state(state.with_status(state.status.STOPPED))
    cursor = publish(settings, dagster_instance, cursor)
    publish(settings, dagster_instance, cursor)
    ticks = automation(redis_client, settings, "automation.tick")
    assert [(e.data.tick_id, e.data.running) for e in ticks[2:]] == [(started.tick_id, False)]


def test_a_sensor_whose_state_dagster_deleted_is_published_as_removed_once(
    settings: OrchestratorSettings,
    dagster_instance: DagsterInstance,
    redis_client: redis.Redis,
    workspace: WorkspaceProcessContext,
) -> None:
    """Dagster's daemons delete the state of a sensor or schedule its code location (loaded without error) no
    longer has (`instance.delete_instigator_state`, as the sensor daemon and the scheduler call it): the
    publisher says so once, with health's key, so that health retires it."""
    evaluate(workspace, datetime.now(UTC) - timedelta(minutes=3))
    cursor = publish(settings, dagster_instance, None)
    assert automation(redis_client, settings, "automation.removed") == []
    (state,) = [s for s in dagster_instance.all_instigator_state() if s.name == "watch_inbox"]
    dagster_instance.delete_instigator_state(state.instigator_origin_id, state.selector_id)
    cursor = publish(settings, dagster_instance, cursor)
    publish(settings, dagster_instance, cursor)
    (removed,) = automation(redis_client, settings, "automation.removed")
    assert removed.data.object_key == f"sensor:{settings.dagster.code_location}/watch_inbox"
    assert "no longer in its code location" in removed.data.reason
    assert state.selector_id not in PublisherCursor.from_json(cursor).automation.instigators


def test_a_sensor_gone_from_the_publishers_own_code_location_is_published_as_removed_once(
    settings: OrchestratorSettings,
    dagster_instance: DagsterInstance,
    redis_client: redis.Redis,
    workspace: WorkspaceProcessContext,
) -> None:
    """The sensor daemon deletes no state: a sensor gone from the code keeps its state and never ticks again.
    The publisher runs in its own code location, loaded: what that repository no longer defines is removed,
    published once; defined again, it is read again."""
    from dagster import Definitions

    evaluate(workspace, datetime.now(UTC) - timedelta(minutes=3))
    repo = automation_defs.defs.get_repository_def()
    cursor = publish(settings, dagster_instance, None, repo)
    without = Definitions(
        jobs=[automation_defs.ping_job, automation_defs.report_job],
        schedules=[automation_defs.every_five_minutes],
    ).get_repository_def()
    assert without.name == repo.name
    cursor = publish(settings, dagster_instance, cursor, without)
    cursor = publish(settings, dagster_instance, cursor, without)
    (removed,) = automation(redis_client, settings, "automation.removed")
    assert removed.data.object_key == f"sensor:{settings.dagster.code_location}/watch_inbox"
    assert [s.name for s in dagster_instance.all_instigator_state() if s.name == "watch_inbox"]  # still there

    # Back in the code, it ticks again: read and published as before, not removed again.
    ticks = len(automation(redis_client, settings, "automation.tick"))
    evaluate(workspace, datetime.now(UTC) - timedelta(minutes=1))
    publish(settings, dagster_instance, cursor, repo)
    assert len(automation(redis_client, settings, "automation.tick")) > ticks
    assert len(automation(redis_client, settings, "automation.removed")) == 1


def test_daemon_heartbeats_are_published_when_they_change(
    settings: OrchestratorSettings, dagster_instance: DagsterInstance, redis_client: redis.Redis
) -> None:
    now = time.time()
    dagster_instance.add_daemon_heartbeat(DagsterDaemonHeartbeat(now - 30, "SENSOR", "d-1", None))
    dagster_instance.add_daemon_heartbeat(DagsterDaemonHeartbeat(now - 25, "SCHEDULER", "d-1", None))
    cursor = publish(settings, dagster_instance, None)
    beats = automation(redis_client, settings, "automation.daemon_heartbeat")
    assert sorted((e.data.daemon_type, e.data.last_heartbeat_at.timestamp()) for e in beats) == [
        ("SCHEDULER", pytest.approx(now - 25)),
        ("SENSOR", pytest.approx(now - 30)),
    ]
    cursor = publish(settings, dagster_instance, cursor)
    assert len(automation(redis_client, settings, "automation.daemon_heartbeat")) == 2  # unchanged: not again

    # Two beats of one daemon between publishing ticks: its latest, once.
    dagster_instance.add_daemon_heartbeat(DagsterDaemonHeartbeat(now - 10, "SENSOR", "d-1", None))
    dagster_instance.add_daemon_heartbeat(DagsterDaemonHeartbeat(now - 5, "SENSOR", "d-1", None))
    publish(settings, dagster_instance, cursor)
    (latest,) = automation(redis_client, settings, "automation.daemon_heartbeat")[2:]
    assert latest.data.daemon_type == "SENSOR"
    assert latest.data.last_heartbeat_at.timestamp() == pytest.approx(now - 5)


def test_a_daemon_heartbeat_leaves_out_the_errors_of_its_sensors_and_schedules(
    settings: OrchestratorSettings, dagster_instance: DagsterInstance, redis_client: redis.Redis
) -> None:
    """The sensor daemon reports a sensor's exception as its own error too (as the real daemon does, seen in
    tests/e2e/test_automation_daemon.py); that is the sensor's failed tick, not the daemon's problem."""

    def error(
        cls_name: str, message: str, cause: SerializableErrorInfo | None = None
    ) -> SerializableErrorInfo:
        return SerializableErrorInfo(f"{cls_name}: {message}\n", [], cls_name, cause)

    sensor_failed = error(
        "SensorExecutionError",
        "Error occurred during the execution of evaluation_fn for sensor flaky",
        error("RuntimeError", "inbox unreachable"),
    )
    schedule_failed = error(
        "ScheduleExecutionError",
        "Error occurred during the evaluation of schedule daily",
        error("RuntimeError", "partition config unavailable"),
    )
    unreachable = error("DagsterUserCodeUnreachableError", "Could not reach user code server")
    now = time.time()
    dagster_instance.add_daemon_heartbeat(
        DagsterDaemonHeartbeat(now, "SENSOR", "d-1", [sensor_failed, unreachable])
    )
    dagster_instance.add_daemon_heartbeat(DagsterDaemonHeartbeat(now, "SCHEDULER", "d-1", [schedule_failed]))
    publish(settings, dagster_instance, None)
    beats = {
        e.data.daemon_type: e.data.errors
        for e in automation(redis_client, settings, "automation.daemon_heartbeat")
    }
    assert beats == {
        "SENSOR": ["DagsterUserCodeUnreachableError: Could not reach user code server"],
        "SCHEDULER": [],
    }


def test_every_tick_ends_with_the_publisher_heartbeat(
    settings: OrchestratorSettings, dagster_instance: DagsterInstance, redis_client: redis.Redis
) -> None:
    cursor = publish(settings, dagster_instance, None)
    publish(settings, dagster_instance, cursor)
    beats = automation(redis_client, settings, "automation.publisher_heartbeat")
    assert len(beats) == 2 and beats[0].id != beats[1].id
    for beat in beats:
        assert beat.data.code_location == settings.dagster.code_location
        assert beat.data.published == 0 and beat.data.caught_up
        assert beat.data.interval_s == settings.sensors.minimum_interval_s
    assert read(redis_client, settings, AUTOMATION)[-1].type == "automation.publisher_heartbeat"


def test_a_tick_stopped_at_its_budget_says_it_is_not_caught_up(
    settings: OrchestratorSettings, redis_client: redis.Redis
) -> None:
    instance = DagsterInstance.ephemeral()
    record_finished_runs(instance, 20)
    sensors = settings.sensors.model_copy(update={"page_size": 5, "tick_budget_s": 0.001})
    tight = settings.model_copy(update={"sensors": sensors})
    publish(tight, instance, None)
    (beat,) = automation(redis_client, settings, "automation.publisher_heartbeat")
    assert not beat.data.caught_up and beat.data.published > 0


def test_failed_op_job_run_is_published_with_its_job_and_no_assets(
    settings: OrchestratorSettings, dagster_instance: DagsterInstance, redis_client: redis.Redis
) -> None:
    result = automation_defs.report_job.execute_in_process(instance=dagster_instance, raise_on_error=False)
    assert not result.success
    publish(settings, dagster_instance, None)
    failed = [e for e in read(redis_client, settings, RUNS) if e.type == "run.failed"]
    assert [(e.data.run_id, e.data.job_name) for e in failed] == [(result.run_id, "report_job")]
    assert failed[0].data.asset_keys == [] and failed[0].data.failed_asset_keys == []
    assert "smtp relay refused the report" in (failed[0].data.error or "")
    assert read(redis_client, settings, ASSETS) == []


def test_a_cursor_written_before_tick_history_is_read() -> None:
    old = '{"catalog":null,"positions":{"materialized":7,"run_started":3},"v":1}'
    cursor = PublisherCursor.from_json(old)
    assert cursor.positions["materialized"] == 7 and not cursor.automation
    assert PublisherCursor.from_json(cursor.to_json()) == cursor
    with pytest.raises(ValueError):
        PublisherCursor.from_json('{"v":1,"automation":{"i":{"x":[1,2]}}}')


def test_tick_history_reads_a_bounded_number_of_sensors_per_tick_least_recently_read_first(
    settings: OrchestratorSettings, dagster_instance: DagsterInstance, redis_client: redis.Redis
) -> None:
    states = add_sensor_states(dagster_instance, 5)
    record_sensor_ticks(dagster_instance, states, 10, failed_every=4)
    sensors = settings.sensors.model_copy(update={"tick_history_instigators": 2})
    bounded = settings.model_copy(update={"sensors": sensors})
    cursor = None
    names_per_tick = []
    for _ in range(3):
        seen = len(automation(redis_client, settings, "automation.tick"))
        cursor = publish(bounded, dagster_instance, cursor)
        new = automation(redis_client, settings, "automation.tick")[seen:]
        names_per_tick.append({e.data.name for e in new})
    assert [len(names) for names in names_per_tick] == [2, 2, 1]
    assert set().union(*names_per_tick) == {s.name for s in states}
    ticks = automation(redis_client, settings, "automation.tick")
    assert len(ticks) == 10 and len({e.id for e in ticks}) == 10
    assert sorted(e.data.status for e in ticks) == ["FAILURE"] * 2 + ["SKIPPED"] * 8
    assert {e.data.code_location for e in ticks} == {"load_location"}
    failures = [e for e in ticks if e.data.status == "FAILURE"]
    assert all(e.data.error == "RuntimeError: source unreachable" for e in failures)

    # New ticks of one sensor: only it is read again.
    record_sensor_ticks(dagster_instance, states[:1], 2)
    publish(bounded, dagster_instance, cursor)
    again = automation(redis_client, settings, "automation.tick")[10:]
    assert [(e.data.name, e.data.status) for e in again] == [(states[0].name, "SKIPPED")] * 2


def test_an_instigator_cursor_from_before_its_key_is_read() -> None:
    from orchestrator.automation import InstigatorCursor

    old = InstigatorCursor.from_json([5, "SUCCESS", 1.0, [], "m", True, 3])
    assert (old.last, old.read, old.key) == (5, 3, "")  # learnt again on its next read
    keyed = InstigatorCursor(last=5, key="sensor:loc/s")
    assert InstigatorCursor.from_json(keyed.to_json()) == keyed
    with pytest.raises(ValueError, match="unreadable"):
        InstigatorCursor.from_json([5, "SUCCESS"])
