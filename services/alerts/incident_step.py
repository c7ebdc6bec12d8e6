"""The incident step at the end of every alerts transaction: group, settle, notify.

`AlertService` (service.py) runs each alert's own state machine (lifecycle.py) and records in a `Txn` what
its transaction changed and which notices the members decided. At the end of the same transaction,
`IncidentStep.settle` puts the alerts that started firing into incidents (the grouping itself is pure:
incidents.py), brings each touched incident up to date with its members, and queues the incident's one
notice per receiver (one outbox row each), so a notice exists if and only if its change was committed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

from libs.common.events import from_timestamp, object_kind_of
from libs.common.sql import Connection
from services.alerts import metrics
from services.alerts.incidents import (
    SEVERITY_RANK,
    IncidentNoticeKind,
    IncidentView,
    Member,
    causes_of,
    group,
    incident_notice,
)
from services.alerts.receivers import AlertPayload, IncidentMember, dagster_asset_url, title_for
from services.alerts.routing import AlertLabels, route, teams_of
from services.alerts.settings import AlertsWorkerSettings

# How far up (and down) the lineage incident grouping looks.
LINEAGE_DEPTH = 50


@dataclass
class Txn:
    """What one transaction's alert state changes produced, for the incident step at its end."""

    notices: list[tuple[int, str]] = field(default_factory=list)  # (alert id, member notice kind)
    alerts: set[int] = field(default_factory=set)  # alerts whose row changed
    opened: int = 0  # incidents opened
    waited: list[int] = field(default_factory=list)  # incidents whose first notice's wait is over
    resolved: list[float] = field(default_factory=list)  # their time to resolve, for the metrics

    def committed(self) -> None:
        """Count what the committed transaction did in the metrics (never for a rolled-back one)."""
        if self.opened:
            metrics.INCIDENTS_OPENED.inc(self.opened)
        for seconds in self.resolved:
            metrics.INCIDENT_TIME_TO_RESOLVE.observe(seconds)


@dataclass(frozen=True)
class AssetInfo:
    """What routing and messages know about an asset (its spec, else hints from the health event)."""

    owners: tuple[str, ...] = ()
    group: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    downstream: tuple[str, ...] = ()
    code_location: str | None = None

    def labels(self, asset_key: str, check: str, severity: str) -> AlertLabels:
        """What routes and silences match for an alert about `check` on this asset."""
        return AlertLabels(
            asset_key=asset_key,
            check=check,
            severity=severity,
            owners=self.owners,
            teams=teams_of(self.owners, self.tags),
            group=self.group,
            tags=self.tags,
        )


def asset_info(conn: Connection, asset_key: str, hints: AssetInfo | None) -> AssetInfo:
    """What routing and messages know of `asset_key`: its spec copy, completed by `hints`."""
    row = conn.execute(
        "SELECT owners, group_name, tags, downstream, code_location FROM assets WHERE asset_key = ?",
        (asset_key,),
    ).fetchone()
    if hints is None:
        # No event at hand (a tick, a person's action): what the last health event said about the asset.
        last = conn.execute(
            "SELECT owners, downstream, code_location FROM alerts WHERE asset_key = ? "
            "ORDER BY id DESC LIMIT 1",
            (asset_key,),
        ).fetchone()
        hints = (
            AssetInfo(
                owners=tuple(json.loads(last["owners"])),
                downstream=tuple(json.loads(last["downstream"])),
                code_location=last["code_location"],
            )
            if last is not None
            else AssetInfo()
        )
    if row is None:
        return hints
    owners = tuple(json.loads(row["owners"])) or hints.owners
    downstream = hints.downstream or tuple(json.loads(row["downstream"]))
    group = row["group_name"] or hints.group
    return AssetInfo(
        owners=owners,
        group=group,
        tags=json.loads(row["tags"]),
        downstream=downstream,
        code_location=row["code_location"] or hints.code_location,
    )


def record_history(
    conn: Connection,
    alert_id: int,
    fp: str,
    now: float,
    event: str,
    reason: str | None,
    **detail: Any,
) -> None:
    """One history entry written by the system (not by a person) for an alert."""
    conn.execute(
        "INSERT INTO alert_history (alert_id, fingerprint, at, event, actor, reason, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (alert_id, fp, now, event, "system", reason, json.dumps(detail, default=str)),
    )


class IncidentStep:
    """Groups firing alerts into incidents and sends each incident's notices (see the module's docstring)."""

    def __init__(self, settings: AlertsWorkerSettings, repeat_interval_s: float) -> None:
        self.settings = settings
        self.repeat_interval_s = repeat_interval_s

    def settle(self, conn: Connection, txn: Txn, now: float) -> int:
        """The incident step at the end of a transaction: group the alerts that started firing, then let
        each incident whose members changed decide its one notice. Returns the notifications queued."""
        incidents_of: dict[int, list[tuple[str, str]]] = {}
        queued = 0
        touched, merged = self._group(conn, now, txn)
        for absorbed, survivor, announced in merged:
            queued += self._merge_notice(conn, absorbed, survivor, now)
            # The survivor announces what the absorbed incident had announced, as an update of its own.
            incidents_of.setdefault(survivor, []).extend((key, "firing") for key in announced)
        ids = sorted(txn.alerts)
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            rows = conn.execute(
                f"SELECT id, incident_id FROM alerts WHERE id IN ({','.join('?' * len(part))})", part
            ).fetchall()
            for row in rows:
                if row["incident_id"] is not None:
                    incidents_of.setdefault(int(row["incident_id"]), [])
            by_alert = {int(r["id"]): r["incident_id"] for r in rows}
            for alert_id, kind in txn.notices:
                incident = by_alert.get(alert_id)
                if incident is not None and alert_id in part:
                    incidents_of.setdefault(int(incident), []).append((str(alert_id), kind))
        for incident in touched:
            incidents_of.setdefault(incident, [])
        for incident in txn.waited:  # announced now for what its members announced during the wait
            incidents_of.setdefault(incident, []).append(("", "firing"))
        for incident, member_notices in sorted(incidents_of.items()):
            queued += self._settle(conn, incident, member_notices, now, txn)
        return queued

    def _lineage(self, conn: Connection) -> Callable[[str], frozenset[str]]:
        """Every asset upstream of an asset (any depth, cycle-safe), read once per asset and transaction."""
        return cache(lambda asset_key: frozenset(_related(conn, asset_key, upstream=True)))

    def _group(
        self, conn: Connection, now: float, txn: Txn
    ) -> tuple[set[int], list[tuple[int, int, list[str]]]]:
        """Put every firing alert that has no incident yet into one (new, or the open incident it links to,
        merging incidents it links together). Returns the incidents touched and the merges made
        (absorbed, survivor, the absorbed incident's announced members)."""
        # A held state (replayed history not yet confirmed live, or read from a backlog) may be superseded by
        # the rest of the backlog: it joins an incident once released, so no incident rests on a passing past.
        new = conn.execute(
            """SELECT a.* FROM alerts AS a LEFT JOIN alert_states AS s ON s.fingerprint = a.fingerprint
               WHERE a.incident_id IS NULL AND a.status = 'firing' AND s.held IS NULL ORDER BY a.id"""
        ).fetchall()
        if not new:
            return set(), []
        ancestors = self._lineage(conn)
        related: set[str] = set()
        for row in new:
            key = row["asset_key"]
            downstream = _related(conn, key, upstream=False)
            related |= {key} | ancestors(key) | downstream | causes_of(json.loads(row["detail"]))
        open_members = self._open_members(conn, related)
        rows = {int(r["id"]): r for r in [*open_members, *new]}
        together: dict[int, list[str]] = {}
        for r in open_members:
            together.setdefault(int(r["incident_id"]), []).append(str(r["id"]))
        members = [
            Member(
                key=str(i),
                asset_key=r["asset_key"],
                check=r["check_name"],
                started_at=float(r["started_at"]),
                causes=causes_of(json.loads(r["detail"])),
            )
            for i, r in rows.items()
        ]
        touched: set[int] = set()
        merges: list[tuple[int, int, list[str]]] = []
        window = self.settings.alerts.incident_window_s
        for g in group(members, ancestors, window, together.values()):
            existing = sorted(
                {
                    int(rows[int(m.key)]["incident_id"])
                    for m in g.members
                    if rows[int(m.key)]["incident_id"] is not None
                }
            )
            root = rows[int(g.root.key)]
            if not existing:
                incident = self._open_incident(conn, root, now)
                txn.opened += 1
            else:
                incident = int(root["incident_id"]) if root["incident_id"] is not None else existing[0]
                for absorbed in existing:
                    if absorbed != incident:
                        merges.append((absorbed, incident, self._absorb(conn, absorbed, incident, now)))
            touched.add(incident)
            for placement in g.placements:
                row = rows[int(placement.member.key)]
                if row["incident_id"] != incident or row["incident_reason"] != placement.why:
                    conn.execute(
                        "UPDATE alerts SET incident_id = ?, incident_reason = ? WHERE id = ?",
                        (incident, placement.why, row["id"]),
                    )
                    if row["incident_id"] is None:
                        record_history(
                            conn,
                            int(row["id"]),
                            row["fingerprint"],
                            now,
                            "grouped",
                            placement.why,
                            incident=incident,
                        )
            conn.execute(
                """UPDATE incidents SET root_alert_id = ?, root_asset = ?, root_check = ?,
                     opened_at = MIN(opened_at, ?), updated_at = ? WHERE id = ?""",
                (
                    root["id"],
                    root["asset_key"],
                    root["check_name"],
                    min(m.started_at for m in g.members),
                    now,
                    incident,
                ),
            )
        return touched, merges

    def _open_members(self, conn: Connection, assets: set[str]) -> list[Any]:
        """Every member of each open incident that has a member on one of `assets`."""
        keys = sorted(assets)
        incidents: set[int] = set()
        for chunk in range(0, len(keys), 500):
            part = keys[chunk : chunk + 500]
            incidents |= {
                int(r[0])
                for r in conn.execute(
                    f"""SELECT DISTINCT a.incident_id FROM alerts AS a
                    JOIN incidents AS i ON i.id = a.incident_id
                    WHERE i.status = 'open' AND a.asset_key IN ({",".join("?" * len(part))})""",
                    part,
                ).fetchall()
            }
        if not incidents:
            return []
        ids = sorted(incidents)
        return conn.execute(
            f"SELECT * FROM alerts WHERE incident_id IN ({','.join('?' * len(ids))}) ORDER BY id", ids
        ).fetchall()

    def _open_incident(self, conn: Connection, root: Any, now: float) -> int:
        # An alert announced before incidents existed (an upgraded store) keeps its receivers and
        # announcement.
        told = (
            [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT receiver FROM notifications"
                    " WHERE alert_id = ? AND kind != 'resolved' ORDER BY 1",
                    (root["id"],),
                ).fetchall()
            ]
            if root["notices"]
            else []
        )
        row = conn.execute(
            """INSERT INTO incidents (status, root_alert_id, root_asset, root_check, severity, opened_at,
                 announced_at, notified_severity, last_notified_at, receivers, announced_members, updated_at,
                 created_at)
               VALUES ('open', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id""",
            (
                root["id"],
                root["asset_key"],
                root["check_name"],
                root["severity"],
                root["started_at"],
                root["last_notified_at"] if told else None,
                root["severity"] if told else None,
                root["last_notified_at"] if told else None,
                json.dumps(told),
                json.dumps([str(root["id"])] if told else []),
                now,
                now,
            ),
        ).fetchone()
        return int(row[0])

    def _absorb(self, conn: Connection, absorbed: int, survivor: int, now: float) -> list[str]:
        """Merge incident `absorbed` into `survivor`; returns the members `absorbed` had announced."""
        row = conn.execute("SELECT * FROM incidents WHERE id = ?", (absorbed,)).fetchone()
        conn.execute("UPDATE alerts SET incident_id = ? WHERE incident_id = ?", (survivor, absorbed))
        conn.execute(
            """UPDATE incidents SET status = 'merged', merged_into = ?, resolved_at = ?, updated_at = ?
               WHERE id = ?""",
            (survivor, now, now, absorbed),
        )
        if row["acked_at"] is not None:
            conn.execute(
                "UPDATE incidents SET acked_by = ?, acked_at = ?"
                " WHERE id = ? AND (acked_at IS NULL OR acked_at > ?)",
                (row["acked_by"], row["acked_at"], survivor, row["acked_at"]),
            )
        return list(json.loads(row["announced_members"])) if row["announced_at"] is not None else []

    def _settle(
        self, conn: Connection, incident_id: int, member_notices: list[tuple[str, str]], now: float, txn: Txn
    ) -> int:
        """Bring one incident's status up to date with its members and send its notice, if any."""
        row = conn.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        if row is None or row["status"] == "merged":
            return 0
        members = conn.execute(
            "SELECT * FROM alerts WHERE incident_id = ? ORDER BY started_at, id", (incident_id,)
        ).fetchall()
        firing = [m for m in members if m["status"] == "firing"]
        if not firing and row["status"] != "open":
            return 0
        severity = max(
            (m["severity"] or "error" for m in firing),
            key=lambda s: SEVERITY_RANK.get(s, 0),
            default=row["severity"],
        )
        view = IncidentView(
            open=bool(firing),
            announced=row["announced_at"] is not None,
            acked=row["acked_at"] is not None,
            severity=severity,
            notified_severity=row["notified_severity"],
            last_notified_at=row["last_notified_at"],
            announced_members=frozenset(json.loads(row["announced_members"])),
        )
        kind = incident_notice(view, member_notices, now, self.repeat_interval_s)
        if kind == "firing":
            # The first notice waits `incident_wait_s` from the incident's opening, gathering its members.
            due = row["announce_at"] or row["created_at"] + self.settings.alerts.incident_wait_s
            if now < due:
                conn.execute("UPDATE incidents SET announce_at = ? WHERE id = ?", (due, incident_id))
                kind = None
        if firing:
            conn.execute(
                "UPDATE incidents SET severity = ?, updated_at = ? WHERE id = ?", (severity, now, incident_id)
            )
        else:
            conn.execute(
                "UPDATE incidents SET status = 'resolved', resolved_at = ?, updated_at = ? WHERE id = ?",
                (now, now, incident_id),
            )
            txn.resolved.append(max(0.0, now - row["opened_at"]))
        if kind is None:
            return 0
        return self._notify(
            conn,
            dict(row) | {"severity": severity, "resolved_at": None if firing else now},
            members,
            kind,
            now,
        )

    def _member(self, conn: Connection, row: Any, now: float) -> tuple[IncidentMember, AlertLabels]:
        info = asset_info(conn, row["asset_key"], None)
        status = row["status"]
        if status == "firing" and row["silenced_until"] is not None and row["silenced_until"] > now:
            status = "silenced"
        elif status == "firing" and row["acked_by"]:
            status = "acknowledged"
        member = IncidentMember(
            alert_id=row["id"],
            asset_key=row["asset_key"],
            check=row["check_name"],
            severity=row["severity"],
            status=status,
            reason=row["summary"],
            owners=list(info.owners),
            code_location=info.code_location,
            why=row["incident_reason"] or "",
        )
        return member, info.labels(row["asset_key"], row["check_name"], row["severity"] or "error")

    def _notify(
        self,
        conn: Connection,
        incident: Mapping[str, Any],
        members: Sequence[Any],
        kind: IncidentNoticeKind,
        now: float,
    ) -> int:
        """Queue one notification per receiver for the incident's notice `kind`."""
        root = next((m for m in members if m["id"] == incident["root_alert_id"]), members[0])
        described = [self._member(conn, m, now) for m in members]
        told = list(json.loads(incident["receivers"]))
        receivers: list[str] = []
        muted: list[str] = []
        if kind in ("resolved", "merged"):
            receivers = told
        else:
            at = datetime.fromtimestamp(now, UTC)
            for member, labels in described:
                if member.status in ("firing", "acknowledged"):
                    decision = route(labels, self.settings.alerts, at)
                    receivers += decision.receivers
                    muted += decision.muted
        receivers = list(dict.fromkeys(receivers))
        muted = [r for r in dict.fromkeys(muted) if r not in receivers]
        root_info = asset_info(conn, root["asset_key"], None)
        owners = list(dict.fromkeys(o for member, _ in described for o in member.owners))
        teams = list(dict.fromkeys(t for _, labels in described for t in labels.teams))
        status = "resolved" if kind in ("resolved", "merged") else "firing"
        rows: list[tuple[Any, ...]] = []
        queued = declined = 0
        for name, row_status in [(n, "pending") for n in receivers] + [(n, "muted") for n in muted]:
            try:
                receiver = self.settings.receiver(name)
            except KeyError:
                continue
            if status == "resolved" and not receiver.send_resolved:
                declined += 1
                continue
            # A receiver hearing of the incident for the first time gets it as news, not as an update.
            own_kind = "firing" if kind in ("updated", "escalated", "repeat") and name not in told else kind
            notification_id = f"msg_{uuid.uuid4().hex}"
            payload = AlertPayload(
                notification_id=notification_id,
                kind=own_kind,
                status=status,
                alert_id=root["id"],
                fingerprint=root["fingerprint"],
                asset_key=root["asset_key"],
                check=root["check_name"],
                severity=incident["severity"],
                title=title_for(
                    own_kind,
                    status,
                    incident["severity"],
                    root["asset_key"],
                    root["check_name"],
                    affected=len(members) - 1,
                    incident_id=incident["id"],
                    merged_into=incident.get("merged_into"),
                ),
                reason=root["summary"],
                values=json.loads(root["detail"] or "{}"),
                owners=owners,
                teams=teams,
                group=root_info.group,
                code_location=root_info.code_location,
                tags=dict(root_info.tags),
                downstream=list(root_info.downstream),
                dagster_url=dagster_asset_url(self.settings.alerts.dagster_ui_url, root["asset_key"])
                if object_kind_of(root["asset_key"]) == "asset"
                else None,
                started_at=_dt(incident["opened_at"]),
                resolved_at=_dt(incident["resolved_at"]),
                acknowledged_by=incident["acked_by"],
                created_at=_dt(now) or datetime.now(UTC),
                incident_id=incident["id"],
                members=[member for member, _ in described],
                merged_into=incident.get("merged_into"),
                object_kind=object_kind_of(root["asset_key"]),
            )
            rows.append(
                (
                    notification_id,
                    root["id"],
                    f"incident-{incident['id']}",
                    own_kind,
                    name,
                    payload.model_dump_json(),
                    row_status,
                    now,
                    now,
                    incident["id"],
                )
            )
            queued += row_status == "pending"
        conn.executemany(
            """INSERT INTO notifications (id, alert_id, fingerprint, kind, receiver, content, status,
                 created_at, next_attempt_at, incident_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            rows,
        )
        if status == "firing":
            announced = sorted(
                set(json.loads(incident["announced_members"]))
                | {str(m["id"]) for m in members if m["status"] == "firing"}
            )
            conn.execute(
                """UPDATE incidents SET announced_at = COALESCE(announced_at, ?), notified_severity = ?,
                     last_notified_at = ?, notices = notices + 1, receivers = ?, announced_members = ?
                   WHERE id = ?""",
                (
                    now,
                    incident["severity"],
                    now,
                    json.dumps(list(dict.fromkeys([*told, *receivers]))),
                    json.dumps(announced),
                    incident["id"],
                ),
            )
        else:
            conn.execute(
                "UPDATE incidents SET last_notified_at = ?, notices = notices + 1 WHERE id = ?",
                (now, incident["id"]),
            )
        reason = None if rows or declined else "no receiver configured or matched"
        record_history(
            conn,
            int(root["id"]),
            root["fingerprint"],
            now,
            "incident_notice" if rows else "unrouted",
            reason,
            incident=incident["id"],
            kind=kind,
            receivers=[r[4] for r in rows],
        )
        return queued

    def _merge_notice(self, conn: Connection, absorbed: int, survivor: int, now: float) -> int:
        """Tell the receivers of an announced incident that it continues as `survivor` (resolving its key)."""
        row = conn.execute("SELECT * FROM incidents WHERE id = ?", (absorbed,)).fetchone()
        if row["announced_at"] is None:
            return 0
        members = conn.execute("SELECT * FROM alerts WHERE id = ?", (row["root_alert_id"],)).fetchall()
        return self._notify(conn, dict(row), members, "merged", now) if members else 0


def _related(conn: Connection, asset_key: str, *, upstream: bool) -> set[str]:
    """The assets upstream (or downstream) of `asset_key` in `asset_edges`, any depth, cycle-safe."""
    near, far = ("upstream", "downstream") if upstream else ("downstream", "upstream")
    rows = conn.execute(
        f"""WITH RECURSIVE lineage(asset_key, depth) AS (
              SELECT {near}, 1 FROM asset_edges WHERE {far} = ?
              UNION
              SELECT e.{near}, lineage.depth + 1 FROM asset_edges AS e
              JOIN lineage ON e.{far} = lineage.asset_key WHERE lineage.depth < ?)
            SELECT DISTINCT asset_key FROM lineage""",
        (asset_key, LINEAGE_DEPTH),
    ).fetchall()
    return {r[0] for r in rows}


def _dt(ts: float | None) -> datetime | None:
    return from_timestamp(ts) if ts is not None else None
