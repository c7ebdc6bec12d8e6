"""Discovery metrics (prefix `ams_discovery_`, base units, counters `_total`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from libs.common.sql import Connection

ASSETS_BY_GROUP = Gauge("ams_discovery_registered_assets", "Active registered assets per group", ["group"])
ASSETS_BY_OWNERSHIP = Gauge(
    "ams_discovery_registered_assets_by_ownership",
    "Active registered assets with and without an owner",
    ["ownership"],
)
VERSIONS = Counter("ams_discovery_versions_created_total", "Registry changes recorded", ["kind"])
DURATION = Histogram(
    "ams_discovery_duration_seconds",
    "Time to load (when scanning) and register one code location's snapshot",
    ["trigger"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
LAST_SCAN = Gauge(
    "ams_discovery_last_scan_timestamp_seconds",
    "When a code location was last scanned or its snapshot last received (even if nothing changed)",
    ["code_location"],
)
SCAN_PROBLEMS = Gauge(
    "ams_discovery_scan_problems",
    "Problems reported by the latest scan of a code location",
    ["code_location"],
)


def refresh_gauges(conn: Connection) -> None:
    """Recompute the per-group and ownership gauges from the registry."""
    groups = {
        str(row[0] or "default"): int(row[1])
        for row in conn.execute(
            "SELECT group_name, COUNT(*) FROM assets WHERE retired_at IS NULL GROUP BY group_name"
        )
    }
    for labels in list(ASSETS_BY_GROUP._metrics):  # drop groups that no longer exist
        if labels[0] not in groups:
            ASSETS_BY_GROUP.remove(*labels)
    for group, count in groups.items():
        ASSETS_BY_GROUP.labels(group=group).set(count)
    row = conn.execute(
        "SELECT SUM(owners != '[]'), SUM(owners = '[]') FROM assets WHERE retired_at IS NULL"
    ).fetchone()
    ASSETS_BY_OWNERSHIP.labels(ownership="owned").set(int(row[0] or 0))
    ASSETS_BY_OWNERSHIP.labels(ownership="unowned").set(int(row[1] or 0))


DAGSTER_UNAVAILABLE = Counter(
    "ams_discovery_dagster_unavailable_total",
    "Polls of the Dagster webserver that got no usable answer (the registry was kept as it was)",
)
