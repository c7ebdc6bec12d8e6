"""Helpers for tests and benchmarks: finished runs recorded cheaply through the instance's own APIs.

`record_run` writes the events of a run of a few asset steps that the publishing sensor reads (planned
materializations, RUN_START, per step STEP_START and a materialization with row count and column schema or a
STEP_FAILURE, RUN_SUCCESS or RUN_FAILURE) through `DagsterInstance.add_run` and `report_dagster_event`,
without executing anything, at the times given: an instance can hold a past (Dagster itself stamps events
with the current time). The run storage and the event log end up as after real runs, at a fraction of the
cost of `materialize()`. `record_finished_runs` records bursts of one-asset runs now.

`add_sensor_states` and `record_sensor_ticks` write sensor ticks as the sensor daemon writes them (the state
marked with the tick's start, the tick created STARTED, then finished, then the state's last tick time), for
a tick-history load without a daemon.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    TableColumn,
    TableSchema,
)

# No public names (read in dagster 1.13.28): writing run and step events straight into the event log, as a
# burst of thousands of runs needs, takes these event-specific data classes (and the error a step failure
# carries, defined in dagster's own dagster_shared).
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.definitions.sensor_definition import SensorType
from dagster._core.events import AssetMaterializationPlannedData, StepMaterializationData
from dagster._core.execution.plan.objects import StepFailureData
from dagster._core.remote_origin import (
    RegisteredCodeLocationOrigin,
    RemoteInstigatorOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    SensorInstigatorData,
    TickData,
    TickStatus,
)
from dagster_shared.error import SerializableErrorInfo

BURST_JOB = "burst_job"
SCHEMA = TableSchema(columns=[TableColumn("id", "int64"), TableColumn("value", "float64")])


@dataclass(frozen=True)
class Step:
    """One asset's step of a run: it takes `seconds`, then materializes `rows` rows, or fails with `error`."""

    asset: str  # the key's path joined by "/"
    rows: int = 100
    seconds: float = 0.0
    error: str | None = None  # "Class: message"


def record_run(
    instance: DagsterInstance,
    steps: Sequence[Step],
    *,
    job_name: str = BURST_JOB,
    start: float | None = None,
    died: str | None = None,
) -> str:
    """Record one finished run of `steps`, in order, begun at `start` (a POSIX time; None: now, every event
    stamped when written). A failed step stops the run: the steps after it are planned but never start,
    as Dagster skips the downstream of a failure. `died`: the run's process died with this message while
    its last step ran (a RUN_FAILURE without any step failure). Returns the run id."""
    run_id = str(uuid.uuid4())
    elapsed = 0.0

    def at() -> float | None:
        return None if start is None else start + elapsed

    def report(event_type: DagsterEventType, step_key: str | None = None, **kwargs: object) -> None:
        event = DagsterEvent(
            event_type_value=event_type.value,
            job_name=job_name,
            step_key=step_key,
            **kwargs,  # type: ignore[arg-type]
        )
        instance.report_dagster_event(event, run_id=run_id, timestamp=at())

    instance.add_run(DagsterRun(job_name=job_name, run_id=run_id, status=DagsterRunStatus.NOT_STARTED))
    for step in steps:
        planned = AssetMaterializationPlannedData(AssetKey(step.asset.split("/")))
        report(DagsterEventType.ASSET_MATERIALIZATION_PLANNED, step.asset, event_specific_data=planned)
    report(DagsterEventType.RUN_START)
    errors: list[str] = []
    for n, step in enumerate(steps):
        report(DagsterEventType.STEP_START, step.asset)
        if died is not None and n == len(steps) - 1:
            break
        elapsed += step.seconds
        if step.error is not None:
            cls_name, _, message = step.error.partition(": ")
            error = SerializableErrorInfo(message=message or cls_name, stack=[], cls_name=cls_name)
            failure = StepFailureData(error, None)  # type: ignore[no-untyped-call]
            report(DagsterEventType.STEP_FAILURE, step.asset, event_specific_data=failure)
            errors.append(step.asset)
            break
        metadata: dict[str, Any] = {"dagster/row_count": step.rows, "dagster/column_schema": SCHEMA}
        materialization = AssetMaterialization(AssetKey(step.asset.split("/")), metadata=metadata)
        report(
            DagsterEventType.ASSET_MATERIALIZATION,
            step.asset,
            event_specific_data=StepMaterializationData(materialization),
        )
    if died is not None or errors:
        message = died or f'Execution of run for "{job_name}" failed. Steps failed: {errors}.'
        report(DagsterEventType.RUN_FAILURE, message=message)
    else:
        report(DagsterEventType.RUN_SUCCESS)
    return run_id


def record_finished_runs(
    instance: DagsterInstance,
    count: int,
    *,
    asset: str = "burst_asset",
    job_name: str = BURST_JOB,
    failed_every: int = 0,
) -> list[str]:
    """Record `count` finished one-asset runs now; every `failed_every`-th one fails (its process dies).
    Returns the run ids."""
    run_ids: list[str] = []
    for i in range(count):
        failed = bool(failed_every) and (i + 1) % failed_every == 0
        died = f"run {i} failed on purpose" if failed else None
        run_ids.append(record_run(instance, [Step(asset, rows=100 + i % 7)], job_name=job_name, died=died))
    return run_ids


def add_sensor_states(
    instance: DagsterInstance, count: int, *, location: str = "load_location", interval_s: int = 30
) -> list[InstigatorState]:
    """`count` running sensors of a code location `location`, as the daemon records them."""
    repository = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin(location), "__repository__")
    states = []
    for i in range(count):
        state = InstigatorState(
            RemoteInstigatorOrigin(repository, f"load_sensor_{i}"),
            InstigatorType.SENSOR,
            InstigatorStatus.RUNNING,
            SensorInstigatorData(min_interval=interval_s, sensor_type=SensorType.STANDARD),
        )
        states.append(instance.add_instigator_state(state))
    return states


def record_sensor_ticks(
    instance: DagsterInstance, states: list[InstigatorState], count: int, *, failed_every: int = 0
) -> None:
    """`count` finished ticks spread over `states` (round robin); every `failed_every`-th one fails."""
    for i in range(count):
        selector_id = states[i % len(states)].selector_id
        state = instance.get_instigator_state(states[i % len(states)].instigator_origin_id, selector_id)
        assert state is not None and isinstance(state.instigator_data, SensorInstigatorData)
        now = time.time()
        instance.update_instigator_state(
            state.with_data(state.instigator_data._replace(last_tick_start_timestamp=now))
        )
        tick = instance.create_tick(
            TickData(
                instigator_origin_id=state.instigator_origin_id,
                instigator_name=state.name,
                instigator_type=InstigatorType.SENSOR,
                status=TickStatus.STARTED,
                timestamp=now,
                selector_id=selector_id,
            )
        )
        if failed_every and (i + 1) % failed_every == 0:
            error = SerializableErrorInfo("RuntimeError: source unreachable\n", [], "RuntimeError")
            instance.update_tick(tick.with_status(TickStatus.FAILURE, error=error))
        else:
            instance.update_tick(tick.with_status(TickStatus.SKIPPED).with_reason("no new files"))
        marked = instance.get_instigator_state(state.instigator_origin_id, selector_id)
        assert marked is not None and isinstance(marked.instigator_data, SensorInstigatorData)
        instance.update_instigator_state(
            marked.with_data(marked.instigator_data._replace(last_tick_timestamp=now))
        )
