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


# An alert with the code location of its asset: as its notices named it, else (an alert written before that
# was recorded) the asset's current one from the spec copy.
_ALERT_COLUMNS = "alerts.*, COALESCE(alerts.code_location, assets.code_location) AS location"
_FROM_ALERTS = "FROM alerts LEFT JOIN assets ON assets.asset_key = alerts.asset_key"


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
        "incident": data.get("incident_id"),
        "asset_key": data["asset_key"],
        "location": data["location"],
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
        clauses.append("alerts.status = 'firing'")
    if asset_key:
        clauses.append("alerts.asset_key = ?")
        params.append(asset_key)
    if severity:
        clauses.append("alerts.severity = ?")
        params.append(severity)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    now = time.time()
    with store.read() as conn:
        rows = conn.execute(
            f"""SELECT {_ALERT_COLUMNS} {_FROM_ALERTS} {where}
                ORDER BY alerts.status = 'firing' DESC,
                  CASE alerts.severity WHEN 'critical' THEN 0 WHEN 'error' THEN 1 WHEN 'warning' THEN 2
                    ELSE 3 END,
                  alerts.started_at DESC LIMIT ?""",
            [*params, limit],
        ).fetchall()
    return [_alert(r, now) for r in rows]


def open_alerts(store: Store, asset_key: str | None = None) -> list[dict[str, Any]]:
    """Alerts still firing (acknowledged or silenced included), optionally of one asset."""
    return list_alerts(store, asset_key=asset_key)


def get_alert(store: Store, alert_id: int) -> dict[str, Any] | None:
    """One alert with its full history (who, when, why)."""
    with store.read() as conn:
        row = conn.execute(
            f"SELECT {_ALERT_COLUMNS} {_FROM_ALERTS} WHERE alerts.id = ?", (alert_id,)
        ).fetchone()
        if row is None:
            return None
        history = conn.execute(
            "SELECT at, event, actor, reason, detail FROM alert_history WHERE alert_id = ? ORDER BY id",
            (alert_id,),
        ).fetchall()
    alert = _alert(row, time.time())
    alert["history"] = [
        {
            "at": _iso(h["at"]),
            "event": h["event"],
            "actor": h["actor"],
            "reason": h["reason"],
            "detail": json.loads(h["detail"] or "{}"),
        }
        for h in history
    ]
    return alert


def deliveries(store: Store, *, failed_only: bool = False, limit: int = 200) -> list[dict[str, Any]]:
    """Notifications, newest first; `failed_only`: dead ones and pending ones that failed at least once."""
    where = "WHERE status = 'dead' OR (status = 'pending' AND attempts > 0)" if failed_only else ""
    with store.read() as conn:
        rows = conn.execute(
            f"""SELECT id, alert_id, kind, receiver, status, attempts, created_at, next_attempt_at,
                       delivered_at, last_status, last_error FROM notifications {where}
                       ORDER BY created_at DESC LIMIT ?""",
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


# -- incidents -----------------------------------------------------------------------------------------------


def _incident(row: Any, members: list[dict[str, Any]]) -> dict[str, Any]:
    data = dict(row)
    status = data["status"]
    if status == "open" and data["acked_by"]:
        status = "acknowledged"
    return {
        "id": data["id"],
        "status": status,
        "severity": data["severity"],
        "root_asset": data["root_asset"],
        "root_location": next((m["location"] for m in members if m["id"] == data["root_alert_id"]), None),
        "root_check": data["root_check"],
        "root_alert_id": data["root_alert_id"],
        "members": len(members),
        "affected": ", ".join(sorted({m["asset_key"] for m in members} - {data["root_asset"]})),
        "owners": sorted({o for m in members for o in m["owners"]}),
        "opened_at": _iso(data["opened_at"]),
        "acked_by": data["acked_by"],
        "acked_at": _iso(data["acked_at"]),
        "resolved_at": _iso(data["resolved_at"]),
        "merged_into": data["merged_into"],
        "notices": data["notices"],
        "alerts": members,
    }


def list_incidents(
    store: Store, *, include_resolved: bool = False, limit: int = 1000
) -> list[dict[str, Any]]:
    """Incidents with their member alerts, open ones first then newest; only open ones unless asked."""
    where = "" if include_resolved else "WHERE status = 'open'"
    now = time.time()
    with store.read() as conn:
        rows = conn.execute(
            f"SELECT * FROM incidents {where} ORDER BY status = 'open' DESC, opened_at DESC LIMIT ?", (limit,)
        ).fetchall()
        members: dict[int, list[dict[str, Any]]] = {}
        ids = [r["id"] for r in rows]
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            for alert in conn.execute(
                f"SELECT {_ALERT_COLUMNS} {_FROM_ALERTS} "
                f"WHERE alerts.incident_id IN ({','.join('?' * len(part))}) "
                "ORDER BY alerts.started_at, alerts.id",
                part,
            ):
                member = _alert(alert, now)
                member["why"] = alert["incident_reason"]
                members.setdefault(alert["incident_id"], []).append(member)
    return [_incident(r, members.get(r["id"], [])) for r in rows]


def incident_of(store: Store, alert_id: int) -> dict[str, Any] | None:
    """The incident an alert belongs to, with every member and why it is there."""
    with store.read() as conn:
        row = conn.execute("SELECT incident_id FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        incident = conn.execute("SELECT * FROM incidents WHERE id = ?", (row[0],)).fetchone()
        alerts = conn.execute(
            f"SELECT {_ALERT_COLUMNS} {_FROM_ALERTS} WHERE alerts.incident_id = ? "
            "ORDER BY alerts.started_at, alerts.id",
            (row[0],),
        ).fetchall()
    now = time.time()
    members = [{**_alert(a, now), "why": a["incident_reason"]} for a in alerts]
    return _incident(incident, members)


def reliability(store: Store, since: float, *, worst: int = 10) -> dict[str, list[dict[str, Any]]]:
    """Incidents opened since `since` (epoch seconds) per owner, team and group: how many, how many were
    acknowledged and resolved, the mean time to acknowledge (MTTA) and to resolve (MTTR) in seconds, and the
    assets in the most incidents. Only incidents someone was told of count (not those silenced throughout,
    nor history replayed during a catch-up). An incident counts for every owner, team and group of an asset
    it affected; merged incidents count once, in the incident they continued as."""
    from services.alerts.routing import teams_of

    with store.read() as conn:
        incidents = conn.execute(
            """SELECT * FROM incidents
               WHERE status != 'merged' AND announced_at IS NOT NULL AND opened_at >= ?
               ORDER BY id""",
            (since,),
        ).fetchall()
        members: dict[int, list[Any]] = {}
        for alert in conn.execute(
            """SELECT a.incident_id, a.asset_key, a.owners, a.started_at, a.resolved_at, s.group_name, s.tags,
                      s.owners AS spec_owners
               FROM alerts AS a JOIN incidents AS i ON i.id = a.incident_id
               LEFT JOIN assets AS s ON s.asset_key = a.asset_key
               WHERE i.status != 'merged' AND i.announced_at IS NOT NULL AND i.opened_at >= ?""",
            (since,),
        ):
            members.setdefault(alert["incident_id"], []).append(alert)
    buckets: dict[str, dict[str, dict[str, Any]]] = {"owner": {}, "team": {}, "group": {}}
    assets: dict[str, dict[str, Any]] = {}
    for incident in incidents:
        keys: dict[str, set[str]] = {"owner": set(), "team": set(), "group": set()}
        for m in members.get(incident["id"], []):
            owners = json.loads(m["spec_owners"] or m["owners"] or "[]")
            keys["owner"].update(owners)
            keys["team"].update(teams_of(owners, json.loads(m["tags"] or "{}")))
            if m["group_name"]:
                keys["group"].add(m["group_name"])
            asset = assets.setdefault(
                m["asset_key"],
                {"asset_key": m["asset_key"], "incidents": set(), "as_root": 0, "firing_s": 0.0},
            )
            asset["incidents"].add(incident["id"])
            end = m["resolved_at"] if m["resolved_at"] is not None else time.time()
            asset["firing_s"] += max(0.0, end - m["started_at"])
        if incident["root_asset"] in assets:
            assets[incident["root_asset"]]["as_root"] += 1
        for kind, names in keys.items():
            for name in names:
                row = buckets[kind].setdefault(
                    name,
                    {kind: name, "incidents": 0, "acknowledged": 0, "resolved": 0, "_tta": 0.0, "_ttr": 0.0},
                )
                row["incidents"] += 1
                if incident["acked_at"] is not None:
                    row["acknowledged"] += 1
                    row["_tta"] += max(0.0, incident["acked_at"] - incident["opened_at"])
                if incident["resolved_at"] is not None:
                    row["resolved"] += 1
                    row["_ttr"] += max(0.0, incident["resolved_at"] - incident["opened_at"])

    def finish(row: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in row.items() if not k.startswith("_")}
        out["mtta_s"] = round(row["_tta"] / row["acknowledged"], 1) if row["acknowledged"] else None
        out["mttr_s"] = round(row["_ttr"] / row["resolved"], 1) if row["resolved"] else None
        return out

    worst_assets = sorted(
        assets.values(), key=lambda a: (-len(a["incidents"]), -a["as_root"], -a["firing_s"], a["asset_key"])
    )
    return {
        **{kind: [finish(r) for _, r in sorted(rows.items())] for kind, rows in buckets.items()},
        "worst_assets": [
            {
                "asset_key": a["asset_key"],
                "incidents": len(a["incidents"]),
                "as_root": a["as_root"],
                "firing_s": round(a["firing_s"], 1),
            }
            for a in worst_assets[:worst]
        ],
        "totals": [
            finish(
                {
                    "scope": "all",
                    "incidents": len(incidents),
                    "acknowledged": sum(i["acked_at"] is not None for i in incidents),
                    "resolved": sum(i["resolved_at"] is not None for i in incidents),
                    "_tta": sum(
                        i["acked_at"] - i["opened_at"] for i in incidents if i["acked_at"] is not None
                    ),
                    "_ttr": sum(
                        i["resolved_at"] - i["opened_at"] for i in incidents if i["resolved_at"] is not None
                    ),
                }
            )
        ],
    }
