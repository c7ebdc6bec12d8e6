"""Removal of assets from monitor.db (`asset-manager simulate --clean`): their alerts leave no trace."""

from __future__ import annotations

from collections.abc import Sequence

from libs.common.sql import Connection


def delete_assets(conn: Connection, keys: Sequence[str]) -> dict[str, int]:
    """Delete the alert states, alerts, alert history, notifications (delivered or queued) and spec copies of
    `keys`, in the caller's transaction; rows deleted per table. Silences are people's, and stay."""
    deleted = dict.fromkeys(
        ("alert_states", "alerts", "alert_history", "notifications", "assets", "incidents", "asset_edges"), 0
    )
    for start in range(0, len(keys), 500):
        chunk = list(keys[start : start + 500])
        marks = ",".join("?" * len(chunk))
        # Their incidents' notices (keyed by incident), and the incidents left without a member below.
        incidents = sorted(
            {
                int(r[0])
                for r in conn.execute(
                    "SELECT DISTINCT incident_id FROM alerts"
                    f" WHERE incident_id IS NOT NULL AND asset_key IN ({marks})",
                    chunk,
                )
            }
        )
        # An alert's history and notices are keyed by its fingerprint (some history has no alert id).
        prints = sorted(
            {
                str(r[0])
                for table in ("alert_states", "alerts")
                for r in conn.execute(f"SELECT fingerprint FROM {table} WHERE asset_key IN ({marks})", chunk)
            }
        )
        for first in range(0, len(prints), 500):
            part = prints[first : first + 500]
            marked = ",".join("?" * len(part))
            for table in ("alert_history", "notifications"):
                deleted[table] += conn.execute(
                    f"DELETE FROM {table} WHERE fingerprint IN ({marked})", part
                ).rowcount
        for table in ("alert_states", "alerts", "assets"):
            deleted[table] += conn.execute(
                f"DELETE FROM {table} WHERE asset_key IN ({marks})", chunk
            ).rowcount
        for first in range(0, len(incidents), 500):
            part_ids = incidents[first : first + 500]
            marked = ",".join("?" * len(part_ids))
            deleted["notifications"] += conn.execute(
                f"DELETE FROM notifications WHERE incident_id IN ({marked})", part_ids
            ).rowcount
            deleted["incidents"] += conn.execute(
                f"""DELETE FROM incidents WHERE id IN ({marked})
                    AND NOT EXISTS (SELECT 1 FROM alerts WHERE alerts.incident_id = incidents.id)""",
                part_ids,
            ).rowcount
        deleted["asset_edges"] += conn.execute(
            f"DELETE FROM asset_edges WHERE upstream IN ({marks}) OR downstream IN ({marks})", chunk * 2
        ).rowcount
    return deleted
