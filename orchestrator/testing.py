"""Helpers for tests and benchmarks: finished runs recorded cheaply through the instance's own APIs.

`record_finished_runs` writes, per run, exactly the events a one-asset run writes to the event log (planned
materialization, RUN_START, STEP_START, a materialization with row count and column schema, RUN_SUCCESS or RUN_FAILURE),
through `DagsterInstance.add_run` and `report_dagster_event`, without executing anything. The run storage
and the event log end up as after real runs, at a fraction of the cost of `materialize()`.

`add_sensor_states` and `record_sensor_ticks` write sensor ticks as the sensor daemon writes them (the state
marked with the tick's start, the tick created STARTED, then finished, then the state's last tick time), for
a tick-history load without a daemon.
"""

from __future__ import annotations

import time
import uuid

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
# burst of thousands of runs needs, takes these event-specific data classes.
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.definitions.sensor_definition import SensorType
from dagster._core.events import AssetMaterializationPlannedData, StepMaterializationData
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


def record_finished_runs(
    instance: DagsterInstance,
    count: int,
    *,
    asset: str = "burst_asset",
    job_name: str = BURST_JOB,
    failed_every: int = 0,
) -> list[str]:
    """Record `count` finished one-asset runs; every `failed_every`-th one fails. Returns the run ids."""
    key = AssetKey(asset)
    schema = TableSchema(columns=[TableColumn("id", "int64"), TableColumn("value", "float64")])
    run_ids: list[str] = []
    for i in range(count):
        run_id = str(uuid.uuid4())
        failed = bool(failed_every) and (i + 1) % failed_every == 0
        instance.add_run(DagsterRun(job_name=job_name, run_id=run_id, status=DagsterRunStatus.NOT_STARTED))
        events: list[DagsterEvent] = [
            DagsterEvent(
                event_type_value=DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value,
                job_name=job_name,
                step_key=asset,
                event_specific_data=AssetMaterializationPlannedData(key),
            ),
            DagsterEvent(event_type_value=DagsterEventType.RUN_START.value, job_name=job_name),
            DagsterEvent(event_type_value=DagsterEventType.STEP_START.value, job_name=job_name, step_key=asset),
        ]
        if not failed:
            events.append(
                DagsterEvent(
                    event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
                    job_name=job_name,
                    step_key=asset,
                    event_specific_data=StepMaterializationData(
                        AssetMaterialization(
                            key, metadata={"dagster/row_count": 100 + i % 7, "dagster/column_schema": schema}
                        )
                    ),
                )
            )
        events.append(
            DagsterEvent(
                event_type_value=(DagsterEventType.RUN_FAILURE if failed else DagsterEventType.RUN_SUCCESS).value,
                job_name=job_name,
                message=f"run {i} failed on purpose" if failed else None,
            )
        )
        for event in events:
            instance.report_dagster_event(event, run_id=run_id)
        run_ids.append(run_id)
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
