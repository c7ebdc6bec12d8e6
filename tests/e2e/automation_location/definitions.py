"""`defs`: the publisher, `flaky_sensor` and `flaky_schedule`, which raise while their flag file exists."""
# No `from __future__ import annotations`: Dagster reads the context type hints at definition time.

import os
from pathlib import Path

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    OpExecutionContext,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SkipReason,
    job,
    op,
    schedule,
    sensor,
)

from orchestrator.sensors import build_event_sensor

FLAGS = "AUTOMATION_E2E_FLAGS"
SENSOR_FLAG = "sensor_fails"
SCHEDULE_FLAG = "schedule_fails"
SENSOR_ERROR = "inbox unreachable: connection refused"
SCHEDULE_ERROR = "partition config unavailable"
OWNERS = ["team:ingest"]


def _flagged(name: str) -> bool:
    return (Path(os.environ[FLAGS]) / name).exists()


@op
def ping(context: OpExecutionContext) -> None:
    context.log.info("ping")


@job
def ping_job() -> None:
    ping()


@sensor(job=ping_job, minimum_interval_seconds=1, default_status=DefaultSensorStatus.RUNNING, owners=OWNERS)
def flaky_sensor(context: SensorEvaluationContext) -> SkipReason:
    if _flagged(SENSOR_FLAG):
        raise RuntimeError(SENSOR_ERROR)
    return SkipReason("no new files")


@schedule(job=ping_job, cron_schedule="* * * * *", default_status=DefaultScheduleStatus.RUNNING)
def flaky_schedule(context: ScheduleEvaluationContext) -> SkipReason:
    if _flagged(SCHEDULE_FLAG):
        raise RuntimeError(SCHEDULE_ERROR)
    return SkipReason("nothing to run")  # no run: the test launches none


defs = Definitions(jobs=[ping_job], sensors=[build_event_sensor(), flaky_sensor], schedules=[flaky_schedule])
