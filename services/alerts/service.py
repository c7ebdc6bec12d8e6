"""The alerts service's effects: apply inputs to the state machine inside monitor.db transactions.

Every state change, its history and the notifications it produces (one outbox row per receiver) are
written in one transaction, so a notification exists if and only if its state change was committed.
Each alert's own state machine (lifecycle.py) decides when it would announce itself; at the end of the
transaction the alerts that started firing are grouped into incidents (incidents.py) and each incident whose
members announced something sends one notice per receiver. The CLI uses the same code for acknowledgements
and silences.
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
from functools import cache
from typing import Any

from libs.common.bus import Delivery
from libs.common.events import AssetChanged, CheckResult, HealthChanged, from_timestamp, object_kind_of
from libs.common.log import get_logger
from libs.common.sql import Connection
from libs.common.store import Store
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
from services.alerts.receivers import AlertPayload, IncidentMember, dagster_asset_url, title_for
from services.alerts.routing import AlertLabels, route, silence_matches, teams_of
from services.alerts.settings import AlertsWorkerSettings
from services.alerts.watch import Heartbeat, heartbeat_limit

log = get_logger(__name__)

# No batch for this long after a full one: the worker has caught up with its streams.
CAUGHT_UP_QUIET_S = 2.0
# How far up (and down) the lineage incident grouping looks.
LINEAGE_DEPTH = 50
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


@dataclass
class _Txn:
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
        # Behind on the streams (the last batch was full): observations are held until caught up. Unknown
        # after a start, so whatever an earlier process held is released at the first chance.
        self._behind = True
        self._last_batch = 0.0  # monotonic

    # -- consuming -------------------------------------------------------------------------------------

    def handle(self, deliveries: list[Delivery]) -> None:
        """The bus handler: apply a batch in one transaction, then wake the sender if it produced mail."""
        now = self.clock()
        txn = _Txn()
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
            produced = self._settle_incidents(conn, txn, now)
        self._behind = behind
        self._last_batch = time.monotonic()
        txn.committed()
        if produced:
            self._committed()

    def _committed(self) -> None:
        if self.on_commit is not None:
            self.on_commit()

    def _asset_changed(self, conn: Connection, event: AssetChanged, now: float, txn: _Txn) -> None:
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
        self, conn: Connection, event: HealthChanged, now: float, txn: _Txn, *, behind: bool = False
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
        txn = _Txn()
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
            produced = self._settle_incidents(conn, txn, now)
        txn.committed()
        if produced:
            self._committed()
        return produced

    # -- clock -----------------------------------------------------------------------------------------

    def tick(self) -> int:
        """Apply the clock to every state with something due (waits, repeats, silence expiry)."""
        now = self.clock()
        txn = _Txn()
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
            produced = self._settle_incidents(conn, txn, now)
        txn.committed()
        if produced:
            self._committed()
        return produced

    def _release_held(self, conn: Connection, now: float, txn: _Txn) -> None:
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
        txn = _Txn()
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
            produced = self._settle_incidents(conn, txn, now)
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
        txn = _Txn()
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
            produced = self._settle_incidents(conn, txn, now)
        txn.committed()
        if produced:
            self._committed()
        return silence_id, covered

    def unsilence(self, silence_id: str, by: str, reason: str | None = None) -> int:
        """End a silence now; alerts it held that still fire are announced. Returns the states released."""
        now = self.clock()
        txn = _Txn()
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
            produced = self._settle_incidents(conn, txn, now)
        txn.committed()
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
        txn: _Txn,
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
        info = self._asset_info(conn, asset_key, hints)
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

    # -- incidents -------------------------------------------------------------------------------------

    def _settle_incidents(self, conn: Connection, txn: _Txn, now: float) -> int:
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
        self, conn: Connection, now: float, txn: _Txn
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
                        self._history(
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

    def _history(
        self,
        conn: Connection,
        alert_id: int,
        fp: str,
        now: float,
        event: str,
        reason: str | None,
        **detail: Any,
    ) -> None:
        conn.execute(
            "INSERT INTO alert_history (alert_id, fingerprint, at, event, actor, reason, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (alert_id, fp, now, event, "system", reason, json.dumps(detail, default=str)),
        )

    def _settle(
        self, conn: Connection, incident_id: int, member_notices: list[tuple[str, str]], now: float, txn: _Txn
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
        kind = incident_notice(view, member_notices, now, self.config.repeat_interval_s)
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
        info = self._asset_info(conn, row["asset_key"], None)
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
        labels = AlertLabels(
            asset_key=row["asset_key"],
            check=row["check_name"],
            severity=row["severity"] or "error",
            owners=info.owners,
            teams=teams_of(info.owners, info.tags),
            group=info.group,
            tags=info.tags,
        )
        return member, labels

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
        root_info = self._asset_info(conn, root["asset_key"], None)
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
        self._history(
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
