"""The alerts service's effects: apply inputs to the state machine inside monitor.db transactions.

Every state change, its history and the notifications it produces (one outbox row per receiver) are
written in one transaction, so a notification exists if and only if its state change was committed.
The CLI uses the same code for acknowledgements and silences.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from libs.common.bus import Delivery
from libs.common.events import AssetChanged, CheckResult, HealthChanged, from_timestamp
from libs.common.log import get_logger
from libs.common.sql import Connection
from libs.common.store import Store
from services.alerts import metrics
from services.alerts.lifecycle import (
    Ack,
    AlertState,
    HistoryEntry,
    Input,
    LifecycleConfig,
    Notice,
    Observe,
    Severity,
    Silence,
    Tick,
    Unsilence,
    next_due,
    step,
)
from services.alerts.receivers import AlertPayload, dagster_asset_url, title_for
from services.alerts.routing import AlertLabels, route, silence_matches, teams_of
from services.alerts.settings import AlertsWorkerSettings

log = get_logger(__name__)

# The check alerts use when a health event carries a status but no check results.
STATUS_CHECK = "health_status"


# The longest silence: a year and a day. Longer is a mistake (or a wish to delete the alert's rule), and
# every stored time stays a date a listing can print.
MAX_SILENCE_S = 366 * 86400.0

class AlertsError(Exception):
    """A request about alerts or silences that cannot be honoured (unknown id, resolved alert...)."""


def fingerprint(asset_key: str, check: str) -> str:
    """The stable identity of the alert about `check` on `asset_key`."""
    return hashlib.sha256(f"{asset_key}|{check}".encode()).hexdigest()[:16]


def severity_of(result: CheckResult, status: str) -> Severity:
    """error → critical when the asset itself failed, else error; warn → warning."""
    if result.outcome == "warn":
        return "warning"
    return "critical" if status == "FAILED" else "error"


def lifecycle_config(settings: AlertsWorkerSettings) -> LifecycleConfig:
    cfg = settings.alerts
    return LifecycleConfig(
        group_wait_s=cfg.group_wait_s, flap_window_s=cfg.flap_window_s, repeat_interval_s=cfg.repeat_interval_s
    )


@dataclass(frozen=True)
class AssetInfo:
    """What routing and messages know about an asset (its spec, else hints from the health event)."""

    owners: tuple[str, ...] = ()
    group: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    downstream: tuple[str, ...] = ()
    code_location: str | None = None


class AlertService:
    """Applies health and asset events, clock ticks and people's actions to monitor.db."""

    def __init__(
        self,
        store: Store,
        settings: AlertsWorkerSettings,
        *,
        on_commit: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.config = lifecycle_config(settings)
        self.on_commit = on_commit
        self.clock = clock

    # -- consuming -------------------------------------------------------------------------------------

    def handle(self, deliveries: list[Delivery]) -> None:
        """The bus handler: apply a batch in one transaction, then wake the sender if it produced mail."""
        now = self.clock()
        produced = 0
        with self.store.write() as conn:
            for delivery in Store.claim_new(conn, deliveries, lambda d: d.event.id):
                event = delivery.event
                if isinstance(event, AssetChanged):
                    produced += self._asset_changed(conn, event, now)
                elif isinstance(event, HealthChanged):
                    produced += self._health_changed(conn, event, now)
        if produced:
            self._committed()

    def _committed(self) -> None:
        if self.on_commit is not None:
            self.on_commit()

    def _asset_changed(self, conn: Connection, event: AssetChanged, now: float) -> int:
        spec = event.data.spec
        row = conn.execute("SELECT version FROM assets WHERE asset_key = ?", (spec.key,)).fetchone()
        if row is not None and int(row["version"]) > event.data.version:
            return 0  # an older version arriving late
        retired = event.type == "asset.retired" or event.data.retired_at is not None
        conn.execute(
            """INSERT INTO assets (asset_key, owners, group_name, tags, downstream, version, retired,
                 updated_at, code_location)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(asset_key) DO UPDATE SET owners = excluded.owners, group_name = excluded.group_name,
                 tags = excluded.tags, downstream = excluded.downstream, version = excluded.version,
                 retired = excluded.retired, updated_at = excluded.updated_at,
                 code_location = excluded.code_location""",
            (
                spec.key,
                json.dumps(spec.owners),
                spec.group,
                json.dumps(spec.tags),
                json.dumps(spec.downstream),
                event.data.version,
                int(retired),
                now,
                spec.code_location,
            ),
        )
        if not retired:
            return 0
        produced = 0
        for state_row in conn.execute(
            "SELECT fingerprint, check_name FROM alert_states WHERE asset_key = ?", (spec.key,)
        ).fetchall():
            produced += self._apply(
                conn,
                state_row["fingerprint"],
                spec.key,
                state_row["check_name"],
                [Observe(firing=False, at=event.occurred_at.timestamp(), summary="asset retired")],
                now,
            )
        return produced

    def _health_changed(self, conn: Connection, event: HealthChanged, now: float) -> int:
        data = event.data
        at = data.evaluated_at.timestamp()
        observations: dict[str, Observe] = {}
        for result in data.checks:
            observations[result.check] = Observe(
                firing=result.outcome != "passed",
                at=at,
                severity=severity_of(result, data.status),
                summary=result.reason,
                values=dict(result.values),
            )
        if not data.checks and data.status != "UNKNOWN":
            # A status without check results: one alert about the status itself.
            firing = data.status != "HEALTHY"
            severity: Severity = "critical" if data.status == "FAILED" else "warning"
            summary = "; ".join(data.reasons) or f"asset is {data.status.lower()}"
            observations[STATUS_CHECK] = Observe(
                firing=firing, at=at, severity=severity, summary=summary, values={"status": data.status}
            )
        if data.status == "HEALTHY":
            # A healthy asset has nothing firing, whatever checks this event happened to list.
            for state_row in conn.execute(
                "SELECT check_name FROM alert_states WHERE asset_key = ?", (data.asset_key,)
            ).fetchall():
                observations.setdefault(
                    state_row["check_name"], Observe(firing=False, at=at, summary="asset is healthy again")
                )
        hints = AssetInfo(owners=tuple(data.owners), downstream=tuple(data.downstream), group=data.group,
                          code_location=data.code_location)
        produced = 0
        for check, observation in observations.items():
            produced += self._apply(
                conn, fingerprint(data.asset_key, check), data.asset_key, check, [observation], now, hints=hints
            )
        return produced

    # -- clock -----------------------------------------------------------------------------------------

    def tick(self) -> int:
        """Apply the clock to every state with something due (waits, repeats, silence expiry)."""
        now = self.clock()
        with self.store.write() as conn:
            rows = conn.execute(
                "SELECT fingerprint, asset_key, check_name FROM alert_states WHERE next_due IS NOT NULL AND next_due <= ?",
                (now,),
            ).fetchall()
            produced = sum(
                self._apply(conn, r["fingerprint"], r["asset_key"], r["check_name"], [Tick()], now) for r in rows
            )
        if produced:
            self._committed()
        return produced

    # -- people ----------------------------------------------------------------------------------------

    def acknowledge(self, alert_id: int, by: str, reason: str | None = None) -> dict[str, Any]:
        """Acknowledge a firing alert (stops its repeats); returns the alert row."""
        now = self.clock()
        with self.store.write() as conn:
            alert = conn.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone()
            if alert is None:
                raise AlertsError(f"no alert with id {alert_id}")
            state = self._load(conn, alert["fingerprint"])
            if state.incident != alert["incident"] or not state.firing:
                raise AlertsError(f"alert {alert_id} is resolved; nothing to acknowledge")
            if state.acked_by is not None:
                raise AlertsError(f"alert {alert_id} was already acknowledged by {state.acked_by}")
            self._apply(conn, alert["fingerprint"], alert["asset_key"], alert["check_name"], [Ack(by, reason)], now)
            row = conn.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        return dict(row)

    def silence(
        self, matchers: Mapping[str, str], duration_s: float, by: str, reason: str | None = None
    ) -> tuple[str, int]:
        """Silence every alert (current and future) matching all `matchers` for `duration_s` seconds.

        Returns the silence id and how many current alert states it covers."""
        if not matchers:
            raise AlertsError("a silence needs at least one matcher")
        if not 0 < duration_s <= MAX_SILENCE_S:  # NaN too
            limit = f"{MAX_SILENCE_S / 86400:g} days"
            raise AlertsError(f"a silence must last a positive time of at most {limit}")
        now = self.clock()
        silence_id = uuid.uuid4().hex[:12]
        ends_at = now + duration_s
        with self.store.write() as conn:
            conn.execute(
                "INSERT INTO silences (id, matchers, created_by, reason, created_at, ends_at) VALUES (?, ?, ?, ?, ?, ?)",
                (silence_id, json.dumps(dict(matchers), sort_keys=True), by, reason, now, ends_at),
            )
            covered = 0
            for row in conn.execute("SELECT fingerprint, asset_key, check_name, state FROM alert_states").fetchall():
                state = AlertState.from_dict(json.loads(row["state"]))
                if not state.firing:
                    continue  # a later incident checks the active silences when it opens
                labels = self._labels(conn, row["asset_key"], row["check_name"], state.severity or "error")
                if silence_matches(matchers, labels):
                    covered += 1
                    self._apply(
                        conn,
                        row["fingerprint"],
                        row["asset_key"],
                        row["check_name"],
                        [Silence(silence_id, ends_at, by, reason)],
                        now,
                    )
        return silence_id, covered

    def unsilence(self, silence_id: str, by: str, reason: str | None = None) -> int:
        """End a silence now; alerts it held that still fire are announced. Returns the states released."""
        now = self.clock()
        produced = 0
        with self.store.write() as conn:
            row = conn.execute("SELECT * FROM silences WHERE id = ?", (silence_id,)).fetchone()
            if row is None:
                raise AlertsError(f"no silence with id {silence_id}")
            if row["removed_at"] is not None or row["ends_at"] <= now:
                raise AlertsError(f"silence {silence_id} is no longer active")
            conn.execute("UPDATE silences SET removed_at = ?, removed_by = ? WHERE id = ?", (now, by, silence_id))
            released = 0
            for state_row in conn.execute(
                "SELECT fingerprint, asset_key, check_name, state FROM alert_states"
            ).fetchall():
                state = AlertState.from_dict(json.loads(state_row["state"]))
                if state.silence_id != silence_id:
                    continue
                released += 1
                produced += self._apply(
                    conn,
                    state_row["fingerprint"],
                    state_row["asset_key"],
                    state_row["check_name"],
                    [Unsilence(silence_id, by, reason)],
                    now,
                )
        if produced:
            self._committed()
        return released

    # -- the core --------------------------------------------------------------------------------------

    def _load(self, conn: Connection, fp: str) -> AlertState:
        row = conn.execute("SELECT state FROM alert_states WHERE fingerprint = ?", (fp,)).fetchone()
        return AlertState.from_dict(json.loads(row["state"])) if row else AlertState(fingerprint=fp)

    def _asset_info(self, conn: Connection, asset_key: str, hints: AssetInfo | None) -> AssetInfo:
        row = conn.execute(
            "SELECT owners, group_name, tags, downstream, code_location FROM assets WHERE asset_key = ?",
            (asset_key,),
        ).fetchone()
        if hints is None:
            # No event at hand (a tick, a person's action): what the last health event said about the asset.
            last = conn.execute(
                "SELECT owners, downstream FROM alerts WHERE asset_key = ? ORDER BY id DESC LIMIT 1", (asset_key,)
            ).fetchone()
            hints = (
                AssetInfo(owners=tuple(json.loads(last["owners"])), downstream=tuple(json.loads(last["downstream"])))
                if last is not None
                else AssetInfo()
            )
        if row is None:
            return hints
        owners = tuple(json.loads(row["owners"])) or hints.owners
        downstream = hints.downstream or tuple(json.loads(row["downstream"]))
        group = row["group_name"] or hints.group
        return AssetInfo(owners=owners, group=group, tags=json.loads(row["tags"]), downstream=downstream,
                         code_location=row["code_location"] or hints.code_location)

    def _labels(
        self, conn: Connection, asset_key: str, check: str, severity: str, hints: AssetInfo | None = None
    ) -> AlertLabels:
        info = self._asset_info(conn, asset_key, hints)
        return AlertLabels(
            asset_key=asset_key,
            check=check,
            severity=severity,
            owners=info.owners,
            teams=teams_of(info.owners, info.tags),
            group=info.group,
            tags=info.tags,
        )

    def _active_silence(self, conn: Connection, labels: AlertLabels, now: float) -> sqlite3.Row | None:
        best: sqlite3.Row | None = None
        for row in conn.execute(
            "SELECT * FROM silences WHERE removed_at IS NULL AND ends_at > ? ORDER BY ends_at DESC", (now,)
        ):
            if silence_matches(json.loads(row["matchers"]), labels):
                best = row
                break
        return best

    def _apply(
        self,
        conn: Connection,
        fp: str,
        asset_key: str,
        check: str,
        inputs: Sequence[Input],
        now: float,
        *,
        hints: AssetInfo | None = None,
    ) -> int:
        """Run inputs through the state machine and persist state, incident, history and notifications.

        Returns how many notifications were queued for delivery."""
        exists = conn.execute("SELECT 1 FROM alert_states WHERE fingerprint = ?", (fp,)).fetchone() is not None
        if not exists and not any(isinstance(i, Observe) and i.firing for i in inputs):
            return 0  # a passing check that never failed: nothing to remember
        state = original = self._load(conn, fp)
        inputs = list(inputs)
        first = inputs[0]
        if isinstance(first, Observe) and first.firing and not state.firing and state.silence_id is None:
            labels = self._labels(conn, asset_key, check, first.severity, hints)
            silence = self._active_silence(conn, labels, now)
            if silence is not None:
                inputs.insert(0, Silence(silence["id"], silence["ends_at"], silence["created_by"], silence["reason"]))
        history: list[HistoryEntry] = []
        notices: list[Notice] = []
        for inp in inputs:
            result = step(state, inp, now, self.config)
            state = result.state
            history.extend(result.history)
            notices.extend(result.notices)
        if exists and state == original:
            return 0  # nothing changed (not even the latest numbers)
        info = self._asset_info(conn, asset_key, hints)
        alert_id = self._save(conn, state, asset_key, check, info, now) if state.incident else None
        conn.execute(
            """INSERT INTO alert_states (fingerprint, asset_key, check_name, state, alert_id, next_due, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(fingerprint) DO UPDATE SET state = excluded.state, alert_id = excluded.alert_id,
                 next_due = excluded.next_due, updated_at = excluded.updated_at""",
            (fp, asset_key, check, json.dumps(state.to_dict()), alert_id, next_due(state, self.config), now),
        )
        conn.executemany(
            "INSERT INTO alert_history (alert_id, fingerprint, at, event, actor, reason, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (alert_id, fp, h.at, h.event, h.actor, h.reason, json.dumps(dict(h.detail), default=str))
                for h in history
            ],
        )
        queued = 0
        for notice in notices:
            queued += self._enqueue(conn, notice, state, alert_id, asset_key, check, info, now)
        return queued

    def _save(
        self, conn: Connection, s: AlertState, asset_key: str, check: str, info: AssetInfo, now: float
    ) -> int:
        row = conn.execute(
            """INSERT INTO alerts (fingerprint, incident, asset_key, check_name, status, severity, summary, detail,
                 owners, downstream, started_at, resolved_at, acked_by, acked_at, ack_reason, silence_id,
                 silenced_until, notices, last_notified_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(fingerprint, incident) DO UPDATE SET status = excluded.status,
                 severity = excluded.severity, summary = excluded.summary, detail = excluded.detail,
                 owners = excluded.owners, downstream = excluded.downstream, resolved_at = excluded.resolved_at,
                 acked_by = excluded.acked_by, acked_at = excluded.acked_at, ack_reason = excluded.ack_reason,
                 silence_id = excluded.silence_id, silenced_until = excluded.silenced_until,
                 notices = excluded.notices, last_notified_at = excluded.last_notified_at,
                 updated_at = excluded.updated_at
               RETURNING id""",
            (
                s.fingerprint,
                s.incident,
                asset_key,
                check,
                "firing" if s.firing else "resolved",
                s.severity,
                s.summary,
                json.dumps(dict(s.values), default=str),
                json.dumps(list(info.owners)),
                json.dumps(list(info.downstream)),
                now if s.active_since is None else s.active_since,
                s.resolved_at,
                s.acked_by,
                s.acked_at,
                s.ack_reason,
                s.silence_id,
                s.silenced_until,
                s.notices,
                s.last_notified_at,
                now,
            ),
        ).fetchone()
        return int(row[0])

    def _enqueue(
        self,
        conn: Connection,
        notice: Notice,
        state: AlertState,
        alert_id: int | None,
        asset_key: str,
        check: str,
        info: AssetInfo,
        now: float,
    ) -> int:
        severity = notice.severity or "error"
        labels = AlertLabels(
            asset_key=asset_key,
            check=check,
            severity=severity,
            owners=info.owners,
            teams=teams_of(info.owners, info.tags),
            group=info.group,
            tags=info.tags,
        )
        decision = route(labels, self.settings.alerts, datetime.fromtimestamp(now, UTC))
        status = "resolved" if notice.kind == "resolved" else "firing"
        rows: list[tuple[Any, ...]] = []
        queued = declined = 0
        targets = [(name, "pending") for name in decision.receivers] + [(name, "muted") for name in decision.muted]
        for name, row_status in targets:
            try:
                receiver = self.settings.receiver(name)
            except KeyError:
                continue
            if status == "resolved" and not receiver.send_resolved:
                declined += 1
                continue
            notification_id = f"msg_{uuid.uuid4().hex}"
            payload = AlertPayload(
                notification_id=notification_id,
                kind=notice.kind,
                status=status,
                alert_id=alert_id,
                fingerprint=notice.fingerprint,
                asset_key=asset_key,
                check=check,
                severity=notice.severity,
                title=title_for(notice.kind, status, notice.severity, asset_key, check),
                reason=notice.summary,
                values=dict(notice.values),
                owners=list(info.owners),
                teams=list(labels.teams),
                group=info.group,
                code_location=info.code_location,
                tags=dict(info.tags),
                downstream=list(info.downstream),
                dagster_url=dagster_asset_url(self.settings.alerts.dagster_ui_url, asset_key),
                started_at=_dt(notice.started_at),
                resolved_at=_dt(notice.resolved_at),
                acknowledged_by=state.acked_by,
                created_at=_dt(now) or datetime.now(UTC),
            )
            rows.append(
                (notification_id, alert_id, notice.fingerprint, notice.kind, name, payload.model_dump_json(), row_status, now, now)
            )
            queued += row_status == "pending"
        conn.executemany(
            """INSERT INTO notifications (id, alert_id, fingerprint, kind, receiver, content, status, created_at,
                 next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            rows,
        )
        if not rows and not declined:
            conn.execute(
                "INSERT INTO alert_history (alert_id, fingerprint, at, event, actor, reason, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (alert_id, notice.fingerprint, now, "unrouted", "system", "no receiver configured or matched", "{}"),
            )
        return queued

    # -- housekeeping ----------------------------------------------------------------------------------

    def update_gauges(self) -> None:
        """Refresh the firing-by-severity and outbox gauges."""
        now = self.clock()
        with self.store.read() as conn:
            firing = dict.fromkeys(("critical", "error", "warning", "info"), 0)
            for row in conn.execute("SELECT severity, COUNT(*) FROM alerts WHERE status = 'firing' GROUP BY severity"):
                firing[row[0] or "error"] = int(row[1])
            depth, oldest = conn.execute(
                "SELECT COUNT(*), MIN(created_at) FROM notifications WHERE status = 'pending'"
            ).fetchone()
        for severity, count in firing.items():
            metrics.ALERTS_FIRING.labels(severity=severity).set(count)
        metrics.OUTBOX_DEPTH.set(int(depth))
        metrics.OUTBOX_OLDEST_AGE.set(max(0.0, now - oldest) if oldest is not None else 0.0)

    def prune(self) -> dict[str, int]:
        """Drop resolved incidents, their history and finished notifications older than the retention."""
        cutoff = self.clock() - self.settings.alerts.retention_days * 86400
        with self.store.write() as conn:
            counts = {
                "notifications": conn.execute(
                    "DELETE FROM notifications WHERE status != 'pending' AND created_at < ?", (cutoff,)
                ).rowcount,
                "history": conn.execute(
                    """DELETE FROM alert_history WHERE at < ? AND (alert_id IS NULL OR alert_id IN
                         (SELECT id FROM alerts WHERE status = 'resolved'))""",
                    (cutoff,),
                ).rowcount,
                "alerts": conn.execute(
                    """DELETE FROM alerts WHERE status = 'resolved' AND resolved_at < ?
                         AND id NOT IN (SELECT alert_id FROM alert_states WHERE alert_id IS NOT NULL)""",
                    (cutoff,),
                ).rowcount,
                "silences": conn.execute("DELETE FROM silences WHERE ends_at < ?", (cutoff,)).rowcount,
            }
        self.store.prune_processed(7 * 86400)
        return counts


def _dt(ts: float | None) -> datetime | None:
    return from_timestamp(ts) if ts is not None else None


