"""Read functions over monitor.db for the CLI (alerts listings, deliveries, silences, history)."""

from __future__ import annotations

import json
import time
from typing import Any

from libs.common.events import from_timestamp
from libs.common.store import Store

SEVERITY_ORDER = {"critical": 0, "error": 1, "warning": 2, "info": 3}


def _iso(ts: float | None) -> str | None:
    return from_timestamp(ts).isoformat(timespec="seconds") if ts is not None else None


def _alert(row: Any, now: float) -> dict[str, Any]:
    data = dict(row)
    status = data["status"]
    if status == "firing":
        if data["silenced_until"] is not None and data["silenced_until"] > now:
            status = "silenced"
        elif data["acked_by"]:
            status = "acknowledged"
    return {
        "id": data["id"],
        "asset_key": data["asset_key"],
        "check": data["check_name"],
        "severity": data["severity"],
        "status": status,
        "summary": data["summary"],
        "values": json.loads(data["detail"] or "{}"),
        "owners": json.loads(data["owners"] or "[]"),
        "downstream": json.loads(data["downstream"] or "[]"),
        "started_at": _iso(data["started_at"]),
        "resolved_at": _iso(data["resolved_at"]),
        "acked_by": data["acked_by"],
        "ack_reason": data["ack_reason"],
        "silence_id": data["silence_id"] if status == "silenced" else None,
        "silenced_until": _iso(data["silenced_until"]) if status == "silenced" else None,
        "fingerprint": data["fingerprint"],
        "notices": data["notices"],
    }


def list_alerts(
    store: Store,
    *,
    include_resolved: bool = False,
    asset_key: str | None = None,
    severity: str | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Alerts, firing first then newest; only firing ones unless `include_resolved`."""
    clauses: list[str] = []
    params: list[Any] = []
    if not include_resolved:
        clauses.append("status = 'firing'")
    if asset_key:
        clauses.append("asset_key = ?")
        params.append(asset_key)
    if severity:
        clauses.append("severity = ?")
        params.append(severity)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    now = time.time()
    with store.read() as conn:
        rows = conn.execute(
            f"""SELECT * FROM alerts {where}
                ORDER BY status = 'firing' DESC,
                  CASE severity WHEN 'critical' THEN 0 WHEN 'error' THEN 1 WHEN 'warning' THEN 2 ELSE 3 END,
                  started_at DESC LIMIT ?""",
            [*params, limit],
        ).fetchall()
    return [_alert(r, now) for r in rows]


def open_alerts(store: Store, asset_key: str | None = None) -> list[dict[str, Any]]:
    """Alerts still firing (acknowledged or silenced included), optionally of one asset."""
    return list_alerts(store, asset_key=asset_key)


def get_alert(store: Store, alert_id: int) -> dict[str, Any] | None:
    """One alert with its full history (who, when, why)."""
    with store.read() as conn:
        row = conn.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        if row is None:
            return None
        history = conn.execute(
            "SELECT at, event, actor, reason, detail FROM alert_history WHERE alert_id = ? ORDER BY id", (alert_id,)
        ).fetchall()
    alert = _alert(row, time.time())
    alert["history"] = [
        {"at": _iso(h["at"]), "event": h["event"], "actor": h["actor"], "reason": h["reason"],
         "detail": json.loads(h["detail"] or "{}")}
        for h in history
    ]
    return alert


def deliveries(store: Store, *, failed_only: bool = False, limit: int = 200) -> list[dict[str, Any]]:
    """Notifications, newest first; `failed_only`: dead ones and pending ones that failed at least once."""
    where = "WHERE status = 'dead' OR (status = 'pending' AND attempts > 0)" if failed_only else ""
    with store.read() as conn:
        rows = conn.execute(
            f"""SELECT id, alert_id, kind, receiver, status, attempts, created_at, next_attempt_at, delivered_at,
                       last_status, last_error FROM notifications {where} ORDER BY created_at DESC LIMIT ?""",
            (limit,),
        ).fetchall()
    return [
        {
            "id": r["id"],
            "alert_id": r["alert_id"],
            "kind": r["kind"],
            "receiver": r["receiver"],
            "status": r["status"],
            "attempts": r["attempts"],
            "created_at": _iso(r["created_at"]),
            "next_attempt_at": _iso(r["next_attempt_at"]) if r["status"] == "pending" else None,
            "delivered_at": _iso(r["delivered_at"]),
            "last_status": r["last_status"],
            "last_error": r["last_error"],
        }
        for r in rows
    ]


def silences(store: Store, *, active_only: bool = True) -> list[dict[str, Any]]:
    """Silences, active ones (not removed, not expired) unless `active_only` is False."""
    now = time.time()
    where = "WHERE removed_at IS NULL AND ends_at > ?" if active_only else "WHERE ? IS NOT NULL"
    with store.read() as conn:
        rows = conn.execute(f"SELECT * FROM silences {where} ORDER BY ends_at DESC", (now,)).fetchall()
    return [
        {
            "id": r["id"],
            "matchers": json.loads(r["matchers"]),
            "created_by": r["created_by"],
            "reason": r["reason"],
            "created_at": _iso(r["created_at"]),
            "ends_at": _iso(r["ends_at"]),
            "removed_at": _iso(r["removed_at"]),
            "removed_by": r["removed_by"],
        }
        for r in rows
    ]
