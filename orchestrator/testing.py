"""Helpers for tests and benchmarks: finished runs recorded cheaply through the instance's own APIs.

`record_finished_runs` writes, per run, exactly the events a one-asset run writes to the event log (planned
materialization, RUN_START, STEP_START, a materialization with row count and column schema, RUN_SUCCESS or RUN_FAILURE),
through `DagsterInstance.add_run` and `report_dagster_event`, without executing anything. The run storage
and the event log end up as after real runs, at a fraction of the cost of `materialize()`.
"""

from __future__ import annotations

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
from dagster._core.events import AssetMaterializationPlannedData, StepMaterializationData

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

