"""A code location for the tick-history tests: a sensor and a schedule that raise while a variable is set,
and an op job (no assets) whose op fails."""
# No `from __future__ import annotations`: Dagster reads the context type hints of ops at definition time.

import os

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

SENSOR_FAILS = "AMS_TEST_SENSOR_FAILS"
SCHEDULE_FAILS = "AMS_TEST_SCHEDULE_FAILS"


@op
def ping(context: OpExecutionContext) -> None:
    context.log.info("ping")


@op
def send_report(context: OpExecutionContext) -> None:
    raise RuntimeError("smtp relay refused the report")


@job
def report_job() -> None:
    send_report()


@job
def ping_job() -> None:
    ping()


@sensor(
    job=ping_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    owners=["team:ingest"],
    tags={"tier": "gold"},
)
def watch_inbox(context: SensorEvaluationContext) -> SkipReason:
    if os.environ.get(SENSOR_FAILS):
        raise RuntimeError("inbox unreachable: connection refused")
    return SkipReason("no new files")


@schedule(
    job=ping_job,
    cron_schedule="*/5 * * * *",
    execution_timezone="Europe/Berlin",
    default_status=DefaultScheduleStatus.RUNNING,
)
def every_five_minutes(context: ScheduleEvaluationContext) -> SkipReason:
    if os.environ.get(SCHEDULE_FAILS):
        raise RuntimeError("partition config unavailable")
    return SkipReason("holiday")  # no run: the tests launch none


defs = Definitions(jobs=[ping_job, report_job], sensors=[watch_inbox], schedules=[every_five_minutes])
