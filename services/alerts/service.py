"""The alerts service's effects: apply inputs to the state machine inside monitor.db transactions.

Every state change, its history and the notifications it produces (one outbox row per receiver) are
written in one transaction, so a notification exists if and only if its state change was committed.
Each alert's own state machine (lifecycle.py) decides when it would announce itself; at the end of the
transaction the incident step (incident_step.py) groups the alerts that started firing into incidents and
each incident whose members announced something sends one notice per receiver. The CLI uses the same code
for acknowledgements and silences.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from libs.common.bus import Delivery
from libs.common.events import AssetChanged, CheckResult, HealthChanged, from_timestamp, object_kind_of
from libs.common.log import get_logger
from libs.common.sql import Connection
from libs.common.store import Store
from services.alerts import metrics
from services.alerts.incident_step import AssetInfo, IncidentStep, Txn, asset_info
from services.alerts.lifecycle import (
    Ack,
    AlertState,
    HistoryEntry,
    Input,
    LifecycleConfig,
    Notice,
    Observe,
    Release,
    Severity,
    Silence,
    Tick,
    Unsilence,
    next_due,
    step,
)
from services.alerts.routing import AlertLabels, silence_matches
from services.alerts.settings import AlertsWorkerSettings
from services.alerts.watch import Heartbeat, heartbeat_limit

log = get_logger(__name__)

# No batch for this long after a full one: the worker has caught up with its streams.
CAUGHT_UP_QUIET_S = 2.0
# The check alerts use when a health event carries a status but no check results.
STATUS_CHECK = "health_status"
# The check of the alert the worker raises itself when a publisher's heartbeat is late (watch.py).
PUBLISHER_CHECK = "heartbeat"


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
        group_wait_s=cfg.group_wait_s,
        flap_window_s=cfg.flap_window_s,
        repeat_interval_s=cfg.repeat_interval_s,
    )


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
        self.incidents = IncidentStep(settings, self.config.repeat_interval_s)
        # Behind on the streams (the last batch was full): observations are held until caught up. Unknown
        # after a start, so whatever an earlier process held is released at the first chance.
        self._behind = True
        self._last_batch = 0.0  # monotonic

    # -- consuming -------------------------------------------------------------------------------------

    def handle(self, deliveries: list[Delivery]) -> None:
        """The bus handler: apply a batch in one transaction, then wake the sender if it produced mail."""
        now = self.clock()
        txn = Txn()
        behind = len(deliveries) >= self.settings.bus.batch_size
        with self.store.write() as conn:
            for delivery in Store.claim_new(conn, deliveries, lambda d: d.event.id):
                event = delivery.event
                if isinstance(event, AssetChanged):
                    self._asset_changed(conn, event, now, txn)
                elif isinstance(event, HealthChanged):
                    self._health_changed(conn, event, now, txn, behind=behind)
            if not behind:
                self._release_held(conn, now, txn)
            produced = self.incidents.settle(conn, txn, now)
        self._behind = behind
        self._last_batch = time.monotonic()
        txn.committed()
        if produced:
            self._committed()

    def _committed(self) -> None:
        if self.on_commit is not None:
            self.on_commit()

    def _asset_changed(self, conn: Connection, event: AssetChanged, now: float, txn: Txn) -> None:
        spec = event.data.spec
        row = conn.execute("SELECT version FROM assets WHERE asset_key = ?", (spec.key,)).fetchone()
        if row is not None and int(row["version"]) > event.data.version:
            return  # an older version arriving late
        retired = event.type == "asset.retired" or event.data.retired_at is not None
        conn.execute(
            """INSERT INTO assets (asset_key, owners, group_name, tags, downstream, version, retired,
                 updated_at, code_location)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(asset_key) DO UPDATE SET owners = excluded.owners,
                 group_name = excluded.group_name, tags = excluded.tags, downstream = excluded.downstream,
                 version = excluded.version,
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
        conn.execute("DELETE FROM asset_edges WHERE downstream = ?", (spec.key,))
        self._add_edges(
            conn, [(up, spec.key) for up in spec.upstream] + [(spec.key, d) for d in spec.downstream]
        )
        if not retired:
            return
        for state_row in conn.execute(
            "SELECT fingerprint, check_name FROM alert_states WHERE asset_key = ?", (spec.key,)
        ).fetchall():
            self._apply(
                conn,
                state_row["fingerprint"],
                spec.key,
                state_row["check_name"],
                [Observe(firing=False, at=event.occurred_at.timestamp(), summary="asset retired")],
                now,
                txn,
            )

    @staticmethod
    def _add_edges(conn: Connection, edges: Sequence[tuple[str, str]]) -> None:
        edges = [(up, down) for up, down in edges if up != down]
        if edges:
            conn.executemany("INSERT OR IGNORE INTO asset_edges (upstream, downstream) VALUES (?, ?)", edges)

    def _health_changed(
        self, conn: Connection, event: HealthChanged, now: float, txn: Txn, *, behind: bool = False
    ) -> None:
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
                replay=data.replay,
                behind=behind,
            )
        if not data.checks and data.status != "UNKNOWN":
            # A status without check results: one alert about the status itself.
            firing = data.status != "HEALTHY"
            severity: Severity = "critical" if data.status == "FAILED" else "warning"
            summary = "; ".join(data.reasons) or f"asset is {data.status.lower()}"
            observations[STATUS_CHECK] = Observe(
                firing=firing,
                at=at,
                severity=severity,
                summary=summary,
                values={"status": data.status},
                replay=data.replay,
                behind=behind,
            )
        if data.status == "HEALTHY":
            # A healthy asset has nothing firing, whatever checks this event happened to list.
            for state_row in conn.execute(
                "SELECT check_name FROM alert_states WHERE asset_key = ?", (data.asset_key,)
            ).fetchall():
                observations.setdefault(
                    state_row["check_name"],
                    Observe(
                        firing=False,
                        at=at,
                        summary="asset is healthy again",
                        replay=data.replay,
                        behind=behind,
                    ),
                )
        hints = AssetInfo(
            owners=tuple(data.owners),
            downstream=tuple(data.downstream),
            group=data.group,
            code_location=data.code_location,
            tags=dict(data.tags),
        )
        if object_kind_of(data.asset_key) != "asset":  # by its key: an event cannot overwrite an asset's spec
            self._automation_object(conn, data.asset_key, hints, now)
        self._add_edges(conn, [(data.asset_key, d) for d in data.downstream])
        for check, observation in observations.items():
            self._apply(
                conn,
                fingerprint(data.asset_key, check),
                data.asset_key,
                check,
                [observation],
                now,
                txn,
                hints=hints,
            )

    @staticmethod
    def _automation_object(
        conn: Connection, key: str, info: AssetInfo, now: float, *, replace: bool = True
    ) -> None:
        """An automation object (a sensor, schedule, daemon, publisher) has no asset spec: what its health
        event says of it (owners, tags, code location) is kept as its spec copy, so that routing when an
        incident's notice is sent later (a tick, a person's action) sees it too."""
        update = (
            "DO UPDATE SET owners = excluded.owners, tags = excluded.tags, "
            "updated_at = excluded.updated_at, code_location = excluded.code_location"
            if replace
            else "DO NOTHING"
        )
        conn.execute(
            f"""INSERT INTO assets (asset_key, owners, tags, version, updated_at, code_location)
               VALUES (?, ?, ?, 0, ?, ?) ON CONFLICT(asset_key) {update}""",
            (key, json.dumps(list(info.owners)), json.dumps(dict(info.tags)), now, info.code_location),
        )

    def publisher_heartbeats(self, now_redis: float, seen: Mapping[str, Heartbeat]) -> int:
        """Watching the watcher: fire (or resolve) `publisher:<location>` / `heartbeat` for each publisher
        whose newest heartbeat (`watch.PublisherWatch`, times on Redis's clock as `now_redis`) is older than
        its limit. Returns the notifications queued."""
        cfg = self.settings.alerts
        if not seen or cfg.publisher_heartbeat_intervals <= 0:
            return 0
        now = self.clock()
        txn = Txn()
        with self.store.write() as conn:
            for location, beat in sorted(seen.items()):
                limit = heartbeat_limit(
                    beat, cfg.publisher_heartbeat_intervals, cfg.publisher_heartbeat_min_s
                )
                late = now_redis - beat.at > limit
                last = from_timestamp(beat.at).isoformat(timespec="seconds")
                summary = (
                    f"the publisher of code location {location} has written no heartbeat to the "
                    f"automation stream since {last} (limit {limit:g} s): no Dagster event reaches the "
                    f"workers; is the daemon running, does the publishing sensor fail?"
                    if late
                    else f"the publisher of {location} writes heartbeats again"
                )
                key = f"publisher:{location}"
                info = AssetInfo(code_location=location)
                self._automation_object(conn, key, info, now, replace=False)
                values = {"last_heartbeat_at": last, "limit_s": limit, "code_location": location}
                observation = Observe(
                    firing=late, at=now, severity="critical", summary=summary, values=values
                )
                fp = fingerprint(key, PUBLISHER_CHECK)
                self._apply(conn, fp, key, PUBLISHER_CHECK, [observation], now, txn, hints=info)
            produced = self.incidents.settle(conn, txn, now)
        txn.committed()
        if produced:
            self._committed()
        return produced

    # -- clock -----------------------------------------------------------------------------------------

    def tick(self) -> int:
        """Apply the clock to every state with something due (waits, repeats, silence expiry)."""
        now = self.clock()
        txn = Txn()
        with self.store.write() as conn:
            if self._behind and time.monotonic() - self._last_batch >= CAUGHT_UP_QUIET_S:
                self._release_held(conn, now, txn)  # the last batch was full, and nothing came since
                self._behind = False
            rows = conn.execute(
                "SELECT fingerprint, asset_key, check_name FROM alert_states"
                " WHERE next_due IS NOT NULL AND next_due <= ?",
                (now,),
            ).fetchall()
            for r in rows:
                self._apply(conn, r["fingerprint"], r["asset_key"], r["check_name"], [Tick()], now, txn)
            for incident in conn.execute(
                "SELECT id FROM incidents"
                " WHERE announce_at <= ? AND announced_at IS NULL AND status = 'open'",
                (now,),
            ).fetchall():  # the wait of its first notice is over
                txn.waited.append(int(incident["id"]))
            produced = self.incidents.settle(conn, txn, now)
        txn.committed()
        if produced:
            self._committed()
        return produced

    def _release_held(self, conn: Connection, now: float, txn: Txn) -> None:
        """Caught up with the streams: what was held as read from a backlog is current; announce it."""
        for r in conn.execute(
            "SELECT fingerprint, asset_key, check_name FROM alert_states WHERE held = 'backlog'"
        ).fetchall():
            self._apply(conn, r["fingerprint"], r["asset_key"], r["check_name"], [Release()], now, txn)

    # -- people ----------------------------------------------------------------------------------------

    def acknowledge(self, alert_id: int, by: str, reason: str | None = None) -> dict[str, Any]:
        """Acknowledge a firing alert and, with it, its incident: every firing member of the incident stops
        repeating. Returns the alert row, with `acknowledged` the number of alerts acknowledged."""
        now = self.clock()
        txn = Txn()
        with self.store.write() as conn:
            alert = conn.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone()
            if alert is None:
                raise AlertsError(f"no alert with id {alert_id}")
            state = self._load(conn, alert["fingerprint"])
            if state.incident != alert["incident"] or not state.firing:
                raise AlertsError(f"alert {alert_id} is resolved; nothing to acknowledge")
            if state.acked_by is not None:
                raise AlertsError(f"alert {alert_id} was already acknowledged by {state.acked_by}")
            members = [alert]
            if alert["incident_id"] is not None:
                members += conn.execute(
                    """SELECT * FROM alerts WHERE incident_id = ? AND status = 'firing' AND acked_by IS NULL
                         AND id != ? ORDER BY id""",
                    (alert["incident_id"], alert_id),
                ).fetchall()
                conn.execute(
                    "UPDATE incidents SET acked_by = ?, acked_at = ?, updated_at = ?"
                    " WHERE id = ? AND acked_at IS NULL",
                    (by, now, now, alert["incident_id"]),
                )
            for member in members:
                self._apply(
                    conn,
                    member["fingerprint"],
                    member["asset_key"],
                    member["check_name"],
                    [Ack(by, reason)],
                    now,
                    txn,
                )
            incident = conn.execute(
                "SELECT opened_at, acked_at FROM incidents WHERE id = ?", (alert["incident_id"],)
            ).fetchone()
            produced = self.incidents.settle(conn, txn, now)
            row = conn.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        txn.committed()
        if incident is not None and incident["acked_at"] == now:
            metrics.INCIDENT_TIME_TO_ACK.observe(max(0.0, now - incident["opened_at"]))
        if produced:
            self._committed()
        return {**dict(row), "acknowledged": len(members)}

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
        txn = Txn()
        with self.store.write() as conn:
            conn.execute(
                "INSERT INTO silences (id, matchers, created_by, reason, created_at, ends_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (silence_id, json.dumps(dict(matchers), sort_keys=True), by, reason, now, ends_at),
            )
            covered = 0
            for row in conn.execute(
                "SELECT fingerprint, asset_key, check_name, state FROM alert_states"
            ).fetchall():
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
                        txn,
                    )
            produced = self.incidents.settle(conn, txn, now)
        txn.committed()
        if produced:
            self._committed()
        return silence_id, covered

    def unsilence(self, silence_id: str, by: str, reason: str | None = None) -> int:
        """End a silence now; alerts it held that still fire are announced. Returns the states released."""
        now = self.clock()
        txn = Txn()
        with self.store.write() as conn:
            row = conn.execute("SELECT * FROM silences WHERE id = ?", (silence_id,)).fetchone()
            if row is None:
                raise AlertsError(f"no silence with id {silence_id}")
            if row["removed_at"] is not None or row["ends_at"] <= now:
                raise AlertsError(f"silence {silence_id} is no longer active")
            conn.execute(
                "UPDATE silences SET removed_at = ?, removed_by = ? WHERE id = ?", (now, by, silence_id)
            )
            released = 0
            for state_row in conn.execute(
                "SELECT fingerprint, asset_key, check_name, state FROM alert_states"
            ).fetchall():
                state = AlertState.from_dict(json.loads(state_row["state"]))
                if state.silence_id != silence_id:
                    continue
                released += 1
                self._apply(
                    conn,
                    state_row["fingerprint"],
                    state_row["asset_key"],
                    state_row["check_name"],
                    [Unsilence(silence_id, by, reason)],
                    now,
                    txn,
                )
            produced = self.incidents.settle(conn, txn, now)
        txn.committed()
        if produced:
            self._committed()
        return released

    # -- the core --------------------------------------------------------------------------------------

    def _load(self, conn: Connection, fp: str) -> AlertState:
        row = conn.execute("SELECT state FROM alert_states WHERE fingerprint = ?", (fp,)).fetchone()
        return AlertState.from_dict(json.loads(row["state"])) if row else AlertState(fingerprint=fp)

    def _labels(
        self, conn: Connection, asset_key: str, check: str, severity: str, hints: AssetInfo | None = None
    ) -> AlertLabels:
        return asset_info(conn, asset_key, hints).labels(asset_key, check, severity)

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
        txn: Txn,
        *,
        hints: AssetInfo | None = None,
    ) -> None:
        """Run inputs through the state machine and persist state, alert row and history; the notices it
        decided go to `txn` for the incident step."""
        exists = (
            conn.execute("SELECT 1 FROM alert_states WHERE fingerprint = ?", (fp,)).fetchone() is not None
        )
        if not exists and not any(isinstance(i, Observe) and i.firing for i in inputs):
            return  # a passing check that never failed: nothing to remember
        state = original = self._load(conn, fp)
        inputs = list(inputs)
        first = inputs[0]
        if isinstance(first, Observe) and first.firing and not state.firing and state.silence_id is None:
            labels = self._labels(conn, asset_key, check, first.severity, hints)
            silence = self._active_silence(conn, labels, now)
            if silence is not None:
                inputs.insert(
                    0, Silence(silence["id"], silence["ends_at"], silence["created_by"], silence["reason"])
                )
        history: list[HistoryEntry] = []
        notices: list[Notice] = []
        for inp in inputs:
            result = step(state, inp, now, self.config)
            state = result.state
            history.extend(result.history)
            notices.extend(result.notices)
        if exists and state == original:
            return  # nothing changed (not even the latest numbers)
        info = asset_info(conn, asset_key, hints)
        alert_id = self._save(conn, state, asset_key, check, info, now) if state.incident else None
        conn.execute(
            """INSERT INTO alert_states (fingerprint, asset_key, check_name, state, alert_id, next_due,
                 updated_at, held)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(fingerprint) DO UPDATE SET state = excluded.state, alert_id = excluded.alert_id,
                 next_due = excluded.next_due, updated_at = excluded.updated_at, held = excluded.held""",
            (
                fp,
                asset_key,
                check,
                json.dumps(state.to_dict()),
                alert_id,
                next_due(state, self.config),
                now,
                state.held,
            ),
        )
        conn.executemany(
            "INSERT INTO alert_history (alert_id, fingerprint, at, event, actor, reason, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (alert_id, fp, h.at, h.event, h.actor, h.reason, json.dumps(dict(h.detail), default=str))
                for h in history
            ],
        )
        if alert_id is not None:
            txn.alerts.add(alert_id)
            txn.notices.extend((alert_id, notice.kind) for notice in notices)

    def _save(
        self, conn: Connection, s: AlertState, asset_key: str, check: str, info: AssetInfo, now: float
    ) -> int:
        row = conn.execute(
            """INSERT INTO alerts (fingerprint, incident, asset_key, check_name, status, severity, summary,
                 detail, owners, downstream, started_at, resolved_at, acked_by, acked_at, ack_reason,
                 silence_id, silenced_until, notices, last_notified_at, updated_at, code_location)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(fingerprint, incident) DO UPDATE SET status = excluded.status,
                 severity = excluded.severity, summary = excluded.summary, detail = excluded.detail,
                 owners = excluded.owners, downstream = excluded.downstream,
                 resolved_at = excluded.resolved_at, acked_by = excluded.acked_by,
                 acked_at = excluded.acked_at, ack_reason = excluded.ack_reason,
                 silence_id = excluded.silence_id, silenced_until = excluded.silenced_until,
                 notices = excluded.notices, last_notified_at = excluded.last_notified_at,
                 updated_at = excluded.updated_at,
                 code_location = COALESCE(excluded.code_location, alerts.code_location)
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
                info.code_location,
            ),
        ).fetchone()
        return int(row[0])

    # -- housekeeping ----------------------------------------------------------------------------------

    def update_gauges(self) -> None:
        """Refresh the firing-by-severity and outbox gauges."""
        now = self.clock()
        with self.store.read() as conn:
            firing = dict.fromkeys(("critical", "error", "warning", "info"), 0)
            for row in conn.execute(
                "SELECT severity, COUNT(*) FROM alerts WHERE status = 'firing' GROUP BY severity"
            ):
                firing[row[0] or "error"] = int(row[1])
            depth, oldest = conn.execute(
                "SELECT COUNT(*), MIN(created_at) FROM notifications WHERE status = 'pending'"
            ).fetchone()
            incidents_open = conn.execute("SELECT COUNT(*) FROM incidents WHERE status = 'open'").fetchone()[
                0
            ]
        for severity, count in firing.items():
            metrics.ALERTS_FIRING.labels(severity=severity).set(count)
        metrics.OUTBOX_DEPTH.set(int(depth))
        metrics.INCIDENTS_OPEN.set(int(incidents_open))
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
                "incidents": conn.execute(
                    """DELETE FROM incidents WHERE status != 'open' AND resolved_at < ?
                         AND id NOT IN (SELECT incident_id FROM alerts WHERE incident_id IS NOT NULL)""",
                    (cutoff,),
                ).rowcount,
            }
        self.store.prune_processed(7 * 86400)
        return counts
