"""Schedules: the demo pipeline (raw → stg → transformed) every hour.

`DEMO_SCHEDULE_CRON` overrides the cron expression (UTC); `DEMO_SCHEDULE=off` leaves the schedule stopped
(tests that run `dagster dev` set it so that no scheduled run lands in the middle of their assertions).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from dagster import (
    AssetKey,
    AssetSelection,
    DefaultScheduleStatus,
    ScheduleDefinition,
    define_asset_job,
)

DEMO_TAG = ("ams/pipeline", "demo")
DEMO_JOB = "demo_pipeline"
DEFAULT_CRON = "5 * * * *"


def build_schedules(demo_keys: Iterable[AssetKey]) -> list[ScheduleDefinition]:
    """The demo pipeline's schedule, or nothing when no demo asset is defined."""
    keys = list(demo_keys)
    if not keys:
        return []
    # Checks are reported by the health service; without_checks keeps the no-op check step out of runs.
    job = define_asset_job(
        DEMO_JOB,
        selection=AssetSelection.assets(*keys).without_checks(),
        description="The demo pipeline: ingest the demo shop, stage it, transform it.",
        tags={DEMO_TAG[0]: DEMO_TAG[1]},
    )
    enabled = os.environ.get("DEMO_SCHEDULE", "on").strip().lower() not in ("off", "0", "false", "no")
    return [
        ScheduleDefinition(
            name=f"{DEMO_JOB}_hourly",
            job=job,
            cron_schedule=os.environ.get("DEMO_SCHEDULE_CRON", DEFAULT_CRON),
            execution_timezone="UTC",
            default_status=DefaultScheduleStatus.RUNNING if enabled else DefaultScheduleStatus.STOPPED,
            description="Runs the demo pipeline every hour (DEMO_SCHEDULE=off to leave it stopped).",
        )
    ]
