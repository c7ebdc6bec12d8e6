"""Health service metrics (the shared bus metrics live in libs.common.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from libs.common.metrics import BatchHistogram

ASSETS_BY_STATUS = Gauge(
    "ams_health_assets", "Assets by group and current health status", ["group", "status"]
)
# Per-asset series only for assets that are not HEALTHY (bounded by what is broken, not by the catalog).
ASSET_STATUS = Gauge(
    "ams_health_asset_status",
    "1 for each asset that is not healthy, by its status",
    ["asset_key", "group", "status"],
)
CHECK_RESULTS = Counter(
    "ams_health_check_results_total", "Check evaluations by check and outcome", ["check", "outcome"]
)
EVALUATION_SECONDS = Histogram(
    "ams_health_evaluation_seconds",
    "Time to evaluate every check of one asset",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
# Observed per batch (a thousand events at a time when catching up).
EVENT_LAG_SECONDS = BatchHistogram(
    "ams_health_event_lag_seconds",
    "Seconds from an event's occurred_at to its handling by the health service",
    ["stream"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
TRANSITIONS = Counter(
    "ams_health_transitions_total", "health.changed events staged, by new status", ["status"]
)
DAGSTER_REPORTS = Counter(
    "ams_health_dagster_reports_total",
    "Check results reported to the Dagster webserver, by result",
    ["result"],
)
FULL_EVALUATION_SECONDS = Histogram(
    "ams_health_full_evaluation_seconds",
    "Duration of each periodic evaluation of every asset (compare with health.evaluation_interval_s)",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 300),
)
CACHE_BYTES = Gauge(
    "ams_health_cache_bytes", "Estimated memory of the histories the health service keeps (cache_mb)"
)
# Deferred under a backlog, or judged again on the wall clock after a catch-up: the evaluation work still
# ahead of the worker.
AWAITING_EVALUATION = Gauge(
    "ams_health_assets_awaiting_evaluation",
    "Assets whose evaluation is deferred (new facts under a backlog, or a confirmation after a catch-up)",
)
# The time of each code location's publisher's last heartbeat as health recorded it: the Prometheus rule
# AmsPublisherHeartbeatLate fires on its age (it keeps its value while Redis or the publisher is down).
PUBLISHER_LAST_HEARTBEAT = Gauge(
    "ams_publisher_last_heartbeat_timestamp_seconds",
    "Epoch time of the publisher's last heartbeat on the automation stream, by code location",
    ["code_location"],
)
# health.automation.publisher_rule_after_s: the age of that heartbeat at which AmsPublisherHeartbeatLate
# fires.
PUBLISHER_RULE_AFTER = Gauge(
    "ams_publisher_heartbeat_rule_after_seconds",
    "How old a publisher's last heartbeat may be before the Prometheus rule AmsPublisherHeartbeatLate fires",
)
