"""The health engine: records each batch of events in health.db, re-evaluates every asset the batch
touched (once per batch), and stages a health.changed event when an asset's health signature changes.

One lock serialises the consume loop and the periodic jobs (time-driven evaluation, retention), so both
see the same in-memory copy of the history. The copy is a cache of health.db: it is discarded whenever a
transaction fails, and rebuilt from the store on demand. On a PostgreSQL store shared by several replicas
it is discarded at the start of every transaction instead, since other replicas write between them.
"""

from __future__ import annotations

import bisect
import json
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from libs.common import outbox
from libs.common.bus import Delivery
from libs.common.events import (
    HEALTH,
    AssetChanged,
    AssetMaterializationFailed,
    AssetMaterialized,
    AssetSpecData,
    CheckResult,
    Event,
    HealthChanged,
    HealthChangedData,
    HealthStatus,
    RunEvent,
    new_event,
)
from libs.common.log import get_logger
from libs.common.sql import Connection
from libs.common.store import Store
from services.health import metrics
from services.health.evaluators import (
    DURATION,
    EXECUTION,
    FRESHNESS,
    HISTORY_ONLY,
    evaluate,
    health_status,
    reasons_of,
    signature,
)
from services.health.model import TERMINAL, AssetHistory, Execution, Failure, Materialization, UpstreamState
from services.health.settings import HealthWorkerSettings
from services.health.store import all_asset_keys, columns_json, load_history, prune
from services.health.thresholds import Resolved, resolve

log = get_logger(__name__)
SOURCE = "health"
_MAX_CACHED_ASSETS = 20_000
_GAUGE_INTERVAL_S = 1.0
# Assets per transaction of the periodic full evaluation (~1 ms each at worst: about 0.1 s of lock).
_EVALUATE_ALL_CHUNK = 100


@dataclass(slots=True)
class HealthState:
    """The last evaluation of one asset as stored in asset_health / check_results."""

    status: HealthStatus = "UNKNOWN"
    signature: str = "UNKNOWN|"
    transitions: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)
    stored: bool = False


@dataclass(frozen=True)
class Evaluation:
    key: str
    status: HealthStatus
    results: list[CheckResult]
    changed: bool
    # The checks the asset's definitions declare (spec.checks), None while its spec is unknown: only
    # declared checks are reported to Dagster, so a team that did not add `with_health_checks` gets no
    # undeclared check results in its instance.
    declared: frozenset[str] | None = None

    @property
    def reportable(self) -> list[CheckResult]:
        if self.declared is None:
            return self.results
        return [r for r in self.results if r.check in self.declared]


def _ts(event: Event) -> float:
    return event.occurred_at.timestamp()


class HealthEngine:
    """Keeps health.db and decides health; `handle` is the consumer's handler."""

    def __init__(
        self,
        store: Store,
        settings: HealthWorkerSettings,
        *,
        clock: Callable[[], float] = time.time,
        report: Callable[[str, Sequence[CheckResult]], None] | None = None,
        on_staged: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.cfg = settings.health
        self.clock = clock
        self.report = report
        self.on_staged = on_staged
        self.lock = threading.RLock()
        self._histories: OrderedDict[str, AssetHistory] = OrderedDict()
        self._states: dict[str, HealthState] = {}
        self._resolved: dict[str, tuple[AssetSpecData | None, Resolved]] = {}
        self._memo: dict[str, tuple[int, Resolved, dict[str, CheckResult]]] = {}
        self._dirty: dict[str, None] = {}
        self._dirty_since: float | None = None
        self._last_evaluation_s = 0.0
        self._last_handled = 0.0
        self._gauge_lock = threading.Lock()
        self._gauges_stale = False
        self._gauges_refreshed = 0.0
        self._load_dirty()

    # -- cache -------------------------------------------------------------------------------------------

    def _forget(self) -> None:
        self._histories.clear()
        self._states.clear()
        self._resolved.clear()
        self._memo.clear()
        self._load_dirty()

    def _refresh_if_shared(self) -> None:
        """On a store shared by several replicas (PostgreSQL), other workers write too: drop the in-memory
        copy and read what is needed afresh, inside the transaction that holds the writers' lock."""
        if self.store.dialect != "sqlite":
            self._forget()

    def _load_dirty(self) -> None:
        """The assets awaiting evaluation according to the store (after a restart or a failed batch)."""
        try:
            rows = self.store.connection().execute("SELECT asset_key FROM dirty_assets").fetchall()
        except sqlite3.Error as exc:  # the store is unwell; the periodic evaluate_all covers these assets
            log.warning("dirty_assets_unreadable", error=str(exc))
            rows = []
        self._dirty = dict.fromkeys(r[0] for r in rows)
        self._dirty_since = time.monotonic() if self._dirty else None

    def _history(self, conn: Connection, key: str) -> AssetHistory:
        history = self._histories.get(key)
        if history is None:
            history = load_history(conn, key, self.cfg.history_limit)
            self._histories[key] = history
            if len(self._histories) > _MAX_CACHED_ASSETS:
                evicted, _ = self._histories.popitem(last=False)
                self._resolved.pop(evicted, None)
                self._memo.pop(evicted, None)
        else:
            self._histories.move_to_end(key)
        return history

    def _state(self, conn: Connection, key: str) -> HealthState:
        state = self._states.get(key)
        if state is None:
            state = HealthState()
            row = conn.execute("SELECT status, signature, transitions FROM asset_health WHERE asset_key = ?", (key,)).fetchone()
            if row is not None:
                state = HealthState(row[0], row[1], row[2], stored=True)
                state.outcomes = dict(
                    conn.execute("SELECT check_name, outcome FROM check_results WHERE asset_key = ?", (key,)).fetchall()
                )
            self._states[key] = state
        return state

    def _resolve(self, history: AssetHistory) -> Resolved:
        cached = self._resolved.get(history.key)
        if cached is not None and cached[0] is history.spec:
            return cached[1]
        resolved = resolve(self.cfg, history.spec)
        for problem in resolved.problems:
            log.warning("asset_threshold_ignored", asset=history.key, problem=problem)
        self._resolved[history.key] = (history.spec, resolved)
        return resolved

    # -- the handler -------------------------------------------------------------------------------------

    def handle(self, deliveries: list[Delivery]) -> None:
        """Record a batch (dedupe by event id), evaluate the touched assets, stage transitions; one commit."""
        if not deliveries:
            return
        events = [d.event for d in deliveries]
        with self.lock:
            now = self.clock()
            try:
                with self.store.write() as conn:
                    self._refresh_if_shared()
                    fresh = Store.claim_events(conn, [e.id for e in events])
                    new = [e for e in events if e.id in fresh]
                    touched = self._record(conn, new)
                    self._mark_dirty(conn, touched)
                    # A full batch means a backlog: coalesce evaluations instead of evaluating after every
                    # batch; caught up, evaluate at once.
                    backlog = len(deliveries) >= self.settings.bus.batch_size
                    evaluations = self._evaluate_dirty(conn, now) if (not backlog or self._due()) else []
                self._last_handled = time.monotonic()
            except BaseException:
                self._forget()
                raise
        handled = time.time()
        lags: dict[str, list[float]] = {}
        for delivery in deliveries:
            if delivery.event.id in fresh:
                lags.setdefault(delivery.stream, []).append(max(0.0, handled - _ts(delivery.event)))
        for stream, values in lags.items():
            metrics.EVENT_LAG_SECONDS.labels(stream=stream).observe_many(values)
        self._after_commit(evaluations, report_all=True)

    def _mark_dirty(self, conn: Connection, keys: Sequence[str]) -> None:
        """Remember `keys` as awaiting evaluation, durably (a crash before evaluating loses nothing)."""
        fresh = [k for k in keys if k not in self._dirty]
        if not fresh:
            return
        conn.executemany("INSERT OR IGNORE INTO dirty_assets (asset_key, since) VALUES (?, ?)", [(k, time.time()) for k in fresh])
        for k in fresh:
            self._dirty[k] = None
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()

    def _due(self) -> bool:
        """Deferred evaluations are due: waiting `max_defer_s`, or nine times what the last one took, so
        that under a backlog evaluation takes at most about a tenth of the worker's time."""
        if self._dirty_since is None:
            return False
        wait = max(self.cfg.max_defer_s, 9 * self._last_evaluation_s)
        return time.monotonic() - self._dirty_since >= wait

    def _evaluate_dirty(self, conn: Connection, now: float) -> list[Evaluation]:
        if not self._dirty:
            return []
        started = time.monotonic()
        keys = list(self._dirty)
        evaluations = self._evaluate(conn, keys, now)
        conn.execute("DELETE FROM dirty_assets")
        self._dirty.clear()
        self._dirty_since = None
        self._last_evaluation_s = time.monotonic() - started
        return evaluations

    def evaluate_pending(self) -> int:
        """Evaluate assets whose evaluation was deferred (periodic, every `max_defer_s`), once the stream
        is quiet or the deferral is due; returns how many."""
        with self.lock:
            idle = time.monotonic() - self._last_handled >= self.cfg.max_defer_s
            if not self._dirty or not (idle or self._due()):
                return 0
            now = self.clock()
            try:
                with self.store.write() as conn:
                    self._refresh_if_shared()
                    evaluations = self._evaluate_dirty(conn, now)
            except BaseException:
                self._forget()
                raise
        self._after_commit(evaluations, report_all=True)
        return len(evaluations)

    def _record(self, conn: Connection, events: Sequence[Event]) -> list[str]:
        """Write the events' facts to health.db and the cache; returns the asset keys to re-evaluate."""
        runs: list[RunEvent] = []
        mats: list[AssetMaterialized] = []
        fails: list[AssetMaterializationFailed] = []
        changes: list[AssetChanged] = []
        for event in events:
            if isinstance(event, AssetMaterialized):
                mats.append(event)
            elif isinstance(event, RunEvent):
                runs.append(event)
            elif isinstance(event, AssetMaterializationFailed):
                fails.append(event)
            elif isinstance(event, AssetChanged):
                changes.append(event)
        touched: dict[str, None] = {}
        for m in mats:
            touched[m.data.asset_key] = None
        for f in fails:
            touched[f.data.asset_key] = None
        for r in runs:
            for key in r.data.asset_keys:
                touched[key] = None
        for c in changes:
            touched[c.data.spec.key] = None
        # Load what the store held before this batch, then add the batch to both.
        histories = {key: self._history(conn, key) for key in touched}
        if changes:
            self._record_changes(conn, changes, histories)
        if runs:
            self._record_runs(conn, runs, histories)
        if mats:
            self._record_materializations(conn, mats, histories)
        if fails:
            self._record_failures(conn, fails, histories)
        limit = self.cfg.history_limit
        for history in histories.values():
            history.version += 1
            for name in ("materializations", "executions", "failures"):
                items = getattr(history, name)
                if len(items) > limit:
                    del items[: len(items) - limit]
            if len(history.run_ids) > 2 * limit:
                history.run_ids = {e.run_id for e in history.executions}
        # Downstream assets judge their upstreams: a registration, retirement or failure changes them too.
        for key in list(touched):
            spec = histories[key].spec
            if spec is not None:
                for down in spec.downstream:
                    touched.setdefault(down, None)
        return list(touched)

    def _record_changes(
        self, conn: Connection, changes: Sequence[AssetChanged], histories: dict[str, AssetHistory]
    ) -> None:
        now = time.time()
        rows = []
        for c in sorted(changes, key=lambda c: c.data.version):
            spec = c.data.spec
            retired_at = c.data.retired_at.timestamp() if c.data.retired_at else (_ts(c) if c.type == "asset.retired" else None)
            rows.append((spec.key, c.data.version, spec.group, spec.model_dump_json(), retired_at, _ts(c), now))
            history = histories[spec.key]
            current = history.spec
            if current is None or c.data.version >= self._spec_version(conn, spec.key, c.data.version):
                history.spec = spec
                history.retired = retired_at is not None
                if history.registered_at is None:
                    history.registered_at = _ts(c)
        # An older version arriving late never replaces a newer one.
        conn.executemany(
            "INSERT INTO asset_specs (asset_key, version, group_name, spec, retired_at, registered_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (asset_key) DO UPDATE SET version = excluded.version, "
            "group_name = excluded.group_name, spec = excluded.spec, retired_at = excluded.retired_at, "
            "updated_at = excluded.updated_at WHERE excluded.version >= asset_specs.version",
            rows,
        )

    @staticmethod
    def _spec_version(conn: Connection, key: str, default: int) -> int:
        row = conn.execute("SELECT version FROM asset_specs WHERE asset_key = ?", (key,)).fetchone()
        return int(row[0]) if row is not None else default

    def _record_runs(self, conn: Connection, runs: Sequence[RunEvent], histories: dict[str, AssetHistory]) -> None:
        now = time.time()
        # A backlog brings a run's start and end in one batch: merge them first (merging is associative, so
        # the result is the same as one event after the other), then write and insert once per asset and run.
        merged: dict[tuple[str, str], tuple[Execution, str]] = {}
        for r in runs:
            d = r.data
            started = d.started_at.timestamp() if d.started_at else (_ts(r) if d.status == "STARTED" else None)
            ended = d.ended_at.timestamp() if d.ended_at else (_ts(r) if d.status in TERMINAL else None)
            duration = d.duration_s
            if duration is None and started is not None and ended is not None:
                duration = max(0.0, ended - started)
            incoming = Execution(d.run_id, d.status, started, ended, duration, d.error, d.partition)
            for key in d.asset_keys:
                earlier = merged.get((key, d.run_id))
                merged[(key, d.run_id)] = (_merge(earlier[0], incoming), earlier[1]) if earlier else (incoming, d.job_name)
        rows = []
        for (key, run_id), (incoming, job_name) in merged.items():
            rows.append((key, run_id, job_name, incoming.status, incoming.started_at, incoming.ended_at,
                         incoming.duration_s, incoming.error, incoming.partition, now))
            history = histories[key]
            executions = history.executions
            if run_id in history.run_ids:
                # Newest first: the run being finished is almost always among the last few executions.
                for i in range(len(executions) - 1, -1, -1):
                    if executions[i].run_id == run_id:
                        incoming = _merge(executions.pop(i), incoming)
                        break
            history.run_ids.add(run_id)
            if not executions or executions[-1].at <= incoming.at:
                executions.append(incoming)
            else:
                bisect.insort(executions, incoming, key=_execution_at)
        # A late run.started never downgrades a finished run; known timings are kept.
        conn.executemany(
            "INSERT INTO executions (asset_key, run_id, job_name, status, started_at, ended_at, duration_s, error, "
            "partition, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (asset_key, run_id) DO UPDATE SET "
            "status = CASE WHEN excluded.status = 'STARTED' THEN executions.status ELSE excluded.status END, "
            "started_at = COALESCE(executions.started_at, excluded.started_at), "
            "ended_at = COALESCE(excluded.ended_at, executions.ended_at), "
            "duration_s = COALESCE(excluded.duration_s, executions.duration_s), "
            "error = COALESCE(excluded.error, executions.error), updated_at = excluded.updated_at",
            rows,
        )

    def _record_materializations(
        self, conn: Connection, mats: Sequence[AssetMaterialized], histories: dict[str, AssetHistory]
    ) -> None:
        rows = []
        for m in mats:
            d = m.data
            columns = tuple((c.name, c.type) for c in d.column_schema) if d.column_schema is not None else None
            record = Materialization(_ts(m), d.run_id, d.row_count, d.duration_s, columns, d.partition, d.storage_id)
            rows.append((m.id, d.asset_key, d.run_id, d.storage_id, d.partition, d.row_count, d.duration_s,
                         columns_json(columns), record.at))
            items = histories[d.asset_key].materializations
            if items and items[-1].at > record.at:
                bisect.insort(items, record, key=lambda x: x.at)
            else:
                items.append(record)
        conn.executemany(
            "INSERT INTO materializations (event_id, asset_key, run_id, storage_id, partition, row_count, "
            "duration_s, column_schema, occurred_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def _record_failures(
        self, conn: Connection, fails: Sequence[AssetMaterializationFailed], histories: dict[str, AssetHistory]
    ) -> None:
        rows = []
        for f in fails:
            d = f.data
            rows.append((f.id, d.asset_key, d.run_id, d.storage_id, d.partition, d.error, _ts(f)))
            bisect.insort(histories[d.asset_key].failures, Failure(_ts(f), d.run_id, d.error, d.partition), key=lambda x: x.at)
        conn.executemany(
            "INSERT INTO materialization_failures (event_id, asset_key, run_id, storage_id, partition, error, "
            "occurred_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    # -- evaluation --------------------------------------------------------------------------------------

    def _upstreams(self, conn: Connection, history: AssetHistory) -> dict[str, UpstreamState]:
        states: dict[str, UpstreamState] = {}
        if history.spec is None:
            return states
        for key in history.spec.upstream:
            up = self._history(conn, key)
            st = self._state(conn, key)
            last = up.last_materialization
            states[key] = UpstreamState(
                key=key,
                registered=up.spec is not None,
                retired=up.retired,
                status=st.status,
                execution_failed=st.outcomes.get(EXECUTION) == "error",
                stale=st.outcomes.get(FRESHNESS, "passed") != "passed",
                last_materialized_at=last.at if last else None,
                last_run_id=last.run_id if last else None,
            )
        return states

    def _evaluate(self, conn: Connection, keys: Iterable[str], now: float) -> list[Evaluation]:
        """Evaluate `keys` (then, once, the downstream of those whose health changed); stage transitions."""
        evaluations: list[Evaluation] = []
        done: set[str] = set()
        queue = list(dict.fromkeys(keys))
        check_rows: list[tuple[str, str, str, str, str, float]] = []
        health_rows: list[tuple[str, str, str, str, int, float, float]] = []
        transition_rows: list[tuple[str, int, str, str, str, str, float]] = []
        staged: list[Event] = []
        second_pass: list[str] = []
        for pass_keys in (queue, second_pass):
            for key in pass_keys:
                if key in done:
                    continue
                done.add(key)
                history = self._history(conn, key)
                if history.spec is None and not history.has_data and not self._state(conn, key).stored:
                    continue  # named as someone's downstream, but nothing known about it yet
                ev = self._evaluate_one(conn, key, now, check_rows, health_rows, transition_rows, staged)
                evaluations.append(ev)
                if ev.changed and pass_keys is queue:
                    spec = self._histories[key].spec
                    if spec is not None:
                        second_pass.extend(d for d in spec.downstream if d not in done)
        conn.executemany(
            "INSERT INTO check_results (asset_key, check_name, outcome, reason, check_values, evaluated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (asset_key, check_name) DO UPDATE SET outcome = excluded.outcome, "
            "reason = excluded.reason, check_values = excluded.check_values, evaluated_at = excluded.evaluated_at",
            check_rows,
        )
        conn.executemany(
            "INSERT INTO asset_health (asset_key, status, signature, reasons, transitions, evaluated_at, changed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (asset_key) DO UPDATE SET status = excluded.status, "
            "signature = excluded.signature, reasons = excluded.reasons, transitions = excluded.transitions, "
            "evaluated_at = excluded.evaluated_at, changed_at = CASE WHEN excluded.signature = asset_health.signature "
            "THEN asset_health.changed_at ELSE excluded.changed_at END",
            health_rows,
        )
        if transition_rows:
            conn.executemany(
                "INSERT OR IGNORE INTO health_transitions (asset_key, transition, status, previous_status, reasons, "
                "event_id, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                transition_rows,
            )
        if staged:
            outbox.stage(conn, HEALTH, staged)
        return evaluations

    def _evaluate_one(
        self,
        conn: Connection,
        key: str,
        now: float,
        check_rows: list[tuple[str, str, str, str, str, float]],
        health_rows: list[tuple[str, str, str, str, int, float, float]],
        transition_rows: list[tuple[str, int, str, str, str, str, float]],
        staged: list[Event],
    ) -> Evaluation:
        started = time.perf_counter()
        history = self._history(conn, key)
        resolved = self._resolve(history)
        memo = self._memo.get(key)
        reuse: dict[str, CheckResult] = {}
        if memo is not None and memo[0] == history.version and memo[1] is resolved:
            running = any(e.status == "STARTED" for e in history.executions[-20:])
            reuse = {c: r for c, r in memo[2].items() if not (c == DURATION and running)}
        results = evaluate(history, resolved, now, self._upstreams(conn, history), reuse)
        self._memo[key] = (history.version, resolved, {r.check: r for r in results if r.check in HISTORY_ONLY})
        status = health_status(results, has_data=history.has_data, retired=history.retired)
        metrics.EVALUATION_SECONDS.observe(time.perf_counter() - started)
        for r in results:
            metrics.CHECK_RESULTS.labels(check=r.check, outcome=r.outcome).inc()
            check_rows.append((key, r.check, r.outcome, r.reason, json.dumps(r.values), now))
        state = self._state(conn, key)
        sig = signature(status, results)
        reasons = reasons_of(results, status, retired=history.retired)
        changed = sig != state.signature
        if changed:
            previous = state.status
            state.transitions += 1
            spec = history.spec
            outcomes_before = state.outcomes
            data = HealthChangedData(
                asset_key=key,
                status=status,
                previous_status=previous,
                checks=results,
                reasons=reasons,
                evaluated_at=datetime.fromtimestamp(now, UTC),
                owners=list(spec.owners) if spec else [],
                downstream=list(spec.downstream) if spec else [],
                transition=state.transitions,
                group=spec.group if spec else None,
                code_location=spec.code_location if spec else None,
                changed_checks=[r.check for r in results if outcomes_before.get(r.check, "passed") != r.outcome],
            )
            # The evaluation time is part of the identity: a health.db rebuilt from scratch numbers its
            # transitions from 1 again, and those must not collide with ids consumers already processed.
            event = new_event(HealthChanged, "health.changed", identity=f"{key}:{state.transitions}:{now!r}",
                              data=data, source=SOURCE)
            staged.append(event)
            transition_rows.append((key, state.transitions, status, previous, json.dumps(reasons), event.id, now))
            metrics.TRANSITIONS.labels(status=status).inc()
            state.status = status
            state.signature = sig
        state.outcomes = {r.check: r.outcome for r in results}
        state.stored = True
        health_rows.append((key, status, sig, json.dumps(reasons), state.transitions, now, now))
        declared = frozenset(history.spec.checks) if history.spec is not None else None
        return Evaluation(key, status, results, changed, declared)

    def _after_commit(self, evaluations: Sequence[Evaluation], *, report_all: bool) -> None:
        if any(e.changed for e in evaluations) and self.on_staged is not None:
            self.on_staged()
        if self.report is not None:
            for e in evaluations:
                if (report_all or e.changed) and e.reportable:
                    self.report(e.key, e.reportable)
        if any(e.changed for e in evaluations):  # the gauges only move with a transition
            self._gauges_stale = True
            self.refresh_status_gauges()

    # -- periodic jobs -----------------------------------------------------------------------------------

    def evaluate_all(self) -> int:
        """Re-evaluate every asset now (freshness and running-time limits move with the clock); returns
        how many transitions were staged.

        Assets are evaluated `_EVALUATE_ALL_CHUNK` at a time, one transaction each, releasing the lock in
        between: with thousands of assets a single pass takes seconds, and the consume loop must not wait
        that long for the lock (a failing materialization would wait with it)."""
        with self.lock:
            keys = all_asset_keys(self.store.connection())
        changed = 0
        for start in range(0, len(keys), _EVALUATE_ALL_CHUNK):
            chunk = keys[start : start + _EVALUATE_ALL_CHUNK]
            with self.lock:
                now = self.clock()
                try:
                    with self.store.write() as conn:
                        self._refresh_if_shared()
                        evaluations = self._evaluate(conn, chunk, now)
                        done = {*chunk, *(e.key for e in evaluations)} & self._dirty.keys()
                        conn.executemany("DELETE FROM dirty_assets WHERE asset_key = ?", [(k,) for k in done])
                    for key in done:
                        self._dirty.pop(key, None)
                    if not self._dirty:
                        self._dirty_since = None
                except BaseException:
                    self._forget()
                    raise
            self._after_commit(evaluations, report_all=False)
            changed += sum(e.changed for e in evaluations)
        return changed

    def retention(self) -> dict[str, int]:
        """Delete history older than `health.retention_days`; the cache is rebuilt from what is left."""
        with self.lock:
            deleted = prune(self.store, self.cfg.retention_days, now=self.clock())
            self._forget()
        if any(deleted.values()):
            log.info("health_retention", deleted=deleted)
        return deleted

    def refresh_status_gauges(self) -> None:
        """Rebuild the status gauges if a transition happened since the last rebuild, at most once a
        second: a rebuild reads every asset's health, and a worker keeping up with a busy stream sees a
        transition in most batches (the `status_gauges` job brings in the last ones)."""
        with self._gauge_lock:
            if not self._gauges_stale or time.monotonic() - self._gauges_refreshed < _GAUGE_INTERVAL_S:
                return
            self._gauges_stale = False
            self._gauges_refreshed = time.monotonic()
            self.update_status_gauge()

    def update_status_gauge(self) -> None:
        """Set the assets-by-group-and-status and the per-unhealthy-asset gauges from health.db."""
        rows = self.store.connection().execute(
            """SELECT h.asset_key, COALESCE(s.group_name, '') AS grp, h.status
               FROM asset_health h LEFT JOIN asset_specs s ON s.asset_key = h.asset_key"""
        ).fetchall()
        counts: dict[tuple[str, str], int] = {}
        for row in rows:
            counts[(row["grp"], row["status"])] = counts.get((row["grp"], row["status"]), 0) + 1
        # Groups and broken assets come and go: rebuild the series rather than leave stale ones behind.
        metrics.ASSETS_BY_STATUS.clear()
        for status in ("HEALTHY", "WARNING", "DEGRADED", "FAILED", "UNKNOWN"):
            metrics.ASSETS_BY_STATUS.labels(group="", status=status).set(counts.pop(("", status), 0))
        for (group, status), n in counts.items():
            metrics.ASSETS_BY_STATUS.labels(group=group, status=status).set(n)
        metrics.ASSET_STATUS.clear()
        for row in rows:
            if row["status"] not in ("HEALTHY", "UNKNOWN"):
                metrics.ASSET_STATUS.labels(asset_key=row["asset_key"], group=row["grp"], status=row["status"]).set(1)


def _execution_at(execution: Execution) -> float:
    return execution.at


def _merge(old: Execution, new: Execution) -> Execution:
    """Combine two descriptions of one run: a late STARTED never undoes a finish; known timings stay."""
    status = old.status if new.status == "STARTED" else new.status
    return Execution(
        run_id=old.run_id,
        status=status,
        started_at=old.started_at if old.started_at is not None else new.started_at,
        ended_at=new.ended_at if new.ended_at is not None else old.ended_at,
        duration_s=new.duration_s if new.duration_s is not None else old.duration_s,
        error=new.error or old.error,
        partition=new.partition or old.partition,
    )

