"""The health worker's settings: the `health:` section (thresholds per asset, group and default)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from libs.common.settings import DurationS, Section, Settings

AnomalyDirection = Literal["both", "spike", "drop"]
Seasonality = Literal["none", "day_of_week", "hour_of_day", "auto"]


class HealthThresholds(Section):
    """Tunable thresholds of the health evaluators.

    Global defaults live in `health.defaults`, per Dagster group overrides in `health.groups.<group>`, and
    per asset overrides in the asset's tags or metadata as `ams/<field>` (e.g. `ams/volume_sensitivity`).
    """

    # volume_anomaly: robust z-score of the row count against its training window
    volume_sensitivity: float = Field(default=3.0, gt=0)
    volume_direction: AnomalyDirection = "both"
    volume_training_days: float = Field(default=30.0, gt=0)
    volume_min_training_size: int = Field(default=7, ge=3)
    # auto: a weekday (or, for sub-daily assets, hour-of-day) profile when the history clearly shows one
    volume_seasonality: Seasonality = "auto"
    volume_ignore_small_spike_pct: float = Field(default=0.0, ge=0)
    volume_ignore_small_drop_pct: float = Field(default=0.0, ge=0)
    volume_severity: Literal["warn", "error"] = "error"
    zero_rows: Literal["warn", "error", "ignore"] = "error"
    # duration_anomaly: the same detector on run durations, plus an absolute maximum
    duration_sensitivity: float = Field(default=3.0, gt=0)
    duration_direction: AnomalyDirection = "spike"
    duration_training_days: float = Field(default=30.0, gt=0)
    duration_min_training_size: int = Field(default=7, ge=3)
    duration_seasonality: Seasonality = "none"
    duration_ignore_small_spike_pct: float = Field(default=0.0, ge=0)
    duration_ignore_small_drop_pct: float = Field(default=0.0, ge=0)
    duration_min_delta_s: float = Field(default=1.0, ge=0)
    duration_max_s: DurationS = None
    duration_severity: Literal["warn", "error"] = "warn"
    # freshness: an explicit maximum lag, else a cadence learned from past materializations
    freshness_max_lag: DurationS = None
    freshness_warn_lag: DurationS = None
    freshness_cadence_warn_factor: float = Field(default=1.5, gt=1)
    freshness_cadence_error_factor: float = Field(default=3.0, gt=1)
    freshness_min_history: int = Field(default=5, ge=2)
    # execution_status: how a canceled last run counts (a failed one is always an error)
    canceled_run: Literal["warn", "error", "ignore"] = "warn"
    # checks switched off for an asset or group, e.g. ["volume_anomaly"]
    disabled_checks: list[str] = Field(default_factory=list)

    @field_validator("disabled_checks", mode="before")
    @classmethod
    def _split_checks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


class AutomationHealthSettings(Section):
    """Thresholds of the automation objects' checks (sensors, schedules, daemons, the publisher)."""

    # tick_failures: an error once this many of the latest ticks failed in a row
    failed_ticks: int = Field(default=1, ge=1)
    # stopped: a running sensor with no tick for this many times its minimum interval (Dagster's default
    # interval, 30 s, when the tick does not say), or a schedule past its next cron tick plus the grace
    stopped_intervals: float = Field(default=3.0, gt=1)
    sensor_interval_s: float = Field(default=30.0, gt=0)
    schedule_grace_s: float = Field(default=120.0, ge=0)
    # daemon_heartbeat: a daemon's last heartbeat older than this
    daemon_heartbeat_max_s: float = Field(default=120.0, gt=0)
    # publisher_heartbeat: older than this many times the publisher's interval, and at least the minimum
    publisher_intervals: float = Field(default=3.0, gt=1)
    publisher_min_s: float = Field(default=60.0, gt=0)
    # Prometheus's AmsPublisherHeartbeatLate fires when the publisher's last heartbeat is older than this (for
    # 30 s more: 6 minutes in all). Exported as ams_publisher_heartbeat_rule_after_seconds, which the rule
    # compares with, so that changing it needs no change to the rules. Far above publisher_min_s: the rule is
    # the backstop that needs neither Redis nor the alerts worker.
    publisher_rule_after_s: float = Field(default=330.0, gt=0)


class HealthSettings(Section):
    retention_days: int = Field(default=90, ge=1)
    retention_interval_s: float = Field(default=3600.0, gt=0)
    # Time-driven re-evaluation of every asset (freshness changes with time, not only with events).
    evaluation_interval_s: float = Field(default=60.0, gt=0)
    # Past materializations (and runs, and failures) per asset the evaluators see.
    history_limit: int = Field(default=400, ge=20, le=100_000)
    # Memory the service may use to keep histories between evaluations (an estimate; least recently used
    # assets are dropped beyond it and read again from health.db when needed). 32 MB holds every asset of
    # a few thousand; at 50,000 few are read twice between their evaluations whatever the size, and with
    # 64 MB the worker's RSS peaked at 302 MB instead of 245 (bench/scale.py, 90 days).
    cache_mb: int = Field(default=32, ge=1, le=65_536)
    # Under a backlog (full batches) evaluation is deferred and coalesced for at most this long.
    max_defer_s: float = Field(default=2.0, gt=0, le=60)
    # Catch-up: a batch whose newest event is older than this is history being replayed (a backlog after an
    # outage, or a first install reading an instance's past). It is judged as of its events' time, its
    # health events are marked `replay` (no one is paged for them), and clock-driven passes wait.
    catch_up_lag_s: float = Field(default=300.0, gt=0)
    # Replay ends with a batch of recent events, or after this long without any batch (the history is
    # read; longer than the publishing sensor's interval, whose pages of history arrive once per tick).
    # Then every replayed asset is evaluated on the wall clock and its state confirmed to the alerts.
    catch_up_quiet_s: float = Field(default=30.0, gt=0)
    defaults: HealthThresholds = HealthThresholds()
    automation: AutomationHealthSettings = AutomationHealthSettings()
    groups: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid_groups(self) -> HealthSettings:
        base = self.defaults.model_dump()
        for group, overrides in self.groups.items():
            try:
                HealthThresholds.model_validate({**base, **overrides})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"groups.{group}.{where}: {first['msg']}") from None
        return self


class HealthWorkerSettings(Settings):
    """Everything the health worker reads."""

    health: HealthSettings = HealthSettings()
