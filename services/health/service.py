"""The health service's effects: each batch of events is recorded in health.db, the assets it touched are
evaluated (once per batch, or coalesced under a backlog), and each decision is applied in the same
transaction: its rows, its health.changed event in the outbox. After the commit, the checks to report go
to Dagster and the metrics move.

    events ─ record.facts_of ─► store.write_facts + record.apply (in-memory histories)
    history ─ evaluators.evaluate ─► results ─ decide.decide(previous state, results, now) ─► Decision
    Decision ─► store.write_decision + outbox.stage (one transaction) ─► report, metrics (after commit)

One lock serialises the consume loop and the periodic jobs (time-driven evaluation, retention), so both
see the same cache (`cache.HistoryCache`). The cache is discarded whenever a transaction fails and rebuilt
from the store on demand; on a PostgreSQL store shared by several replicas it is discarded at the start
of every transaction instead, since other replicas write between them.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from libs.common import events as events_code
from libs.common import outbox
from libs.common import settings as common_settings_code
from libs.common import text as text_code
from libs.common.bus import Delivery
from libs.common.events import (
    HEALTH,
    CheckName,
    CheckResult,
    Event,
    HealthStatus,
    PublisherHeartbeatData,
    RunEvent,
)
from libs.common.log import get_logger
from libs.common.sql import Connection
from libs.common.store import Store
from services.health import anomaly, automation, evaluators, metrics, model, record, thresholds
from services.health import settings as settings_code
from services.health import store as db
from services.health.cache import Entry, HistoryCache, Memo
from services.health.decide import Decision, HealthState, Subject, Trigger, decide
from services.health.evaluators import (
    HISTORY_ONLY,
    TAIL_MATERIALIZATIONS,
    blocking_run,
    evaluate,
    next_change,
    running,
    tail_suffices,
    upstream_among,
)
from services.health.model import AssetHistory, UpstreamState
from services.health.settings import HealthSettings, HealthWorkerSettings
from services.health.thresholds import Resolved, resolve

log = get_logger(__name__)
_GAUGE_INTERVAL_S = 1.0
# Assets per transaction of the periodic full evaluation, at most; fewer when they take longer than
# `CHUNK_TARGET_S` (a cold history costs 1 to 3 ms, and the consume loop waits for the lock meanwhile).
EVALUATE_ALL_CHUNK = 100
CHUNK_TARGET_S = 0.05
# Pause between two chunks, so that a thread waiting for the lock gets it.
_YIELD_S = 0.002
# Assets a batch evaluates in its own transaction; more (a deferred backlog) go in chunks after it.
_EVALUATE_IN_BATCH = 1000
# Asset keys remembered as having a history (`HealthService._with_history`), at most (a few MB).
_WITH_HISTORY_MAX = 100_000
# The facts serial of an asset whose facts are of unknown age: later than any evaluation.
_UNKNOWN_FACTS = sys.maxsize

Report = Callable[[str, Sequence[CheckResult]], None]
# The events that carry history (runs, materializations): their times tell a replay from live events.
_FACT_TYPES = ("run.", "asset.materialized", "asset.materialization_failed")


# The code that decides the results of the history-only checks: a change to any of these (an upgrade)
# makes every stored result stale.
_EVALUATION_CODE = (
    evaluators,
    anomaly,
    thresholds,
    model,
    settings_code,
    text_code,
    events_code,
    common_settings_code,
)


def results_epoch(cfg: HealthSettings) -> str:
    """What stored check results are computed with: the evaluation code and the health settings (defaults,
    groups). The history-only results stored under the same epoch, of an asset without new facts, are
    read back instead of recomputed (`store.load_reusable`), across restarts too; under any other (new
    thresholds, an upgrade) they are recomputed."""
    digest = hashlib.sha256(cfg.model_dump_json().encode())
    for module in _EVALUATION_CODE:
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()[:32]


def chunk_size(size: int, elapsed_s: float) -> int:
    """The assets of the next chunk of a pass, given that the last one evaluated `size` assets in
    `elapsed_s`: as many as take about `CHUNK_TARGET_S`, from 5 to `EVALUATE_ALL_CHUNK`."""
    if size <= 0 or elapsed_s <= 0:
        return EVALUATE_ALL_CHUNK
    return max(5, min(EVALUATE_ALL_CHUNK, int(CHUNK_TARGET_S * size / elapsed_s)))


class HealthService:
    """health.db's writer; `handle` is the consumer's handler, the other public methods periodic jobs."""

    def __init__(
        self,
        store: Store,
        settings: HealthWorkerSettings,
        *,
        clock: Callable[[], float] = time.time,
        report: Report | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.cfg = settings.health
        self.clock = clock
        self.report = report
        self.lock = threading.RLock()
        # Held by the periodic jobs that evaluate many assets in chunks (evaluate_all, evaluate_pending):
        # one at a time.
        self._pass_lock = threading.Lock()
        self.cache = HistoryCache(self.cfg.cache_mb * 1024 * 1024)
        # Written with every evaluation: the stored results of another epoch are never reused.
        self.epoch = results_epoch(self.cfg)
        # Assets awaiting evaluation: the serial of the batch that last recorded facts about them (1: before
        # this process started), or 0 when they only await a confirmation on the wall clock (their history
        # unchanged). The serial grows with every batch that records facts (`_facts_serial`).
        self._dirty: dict[str, int] = {}
        self._facts_serial = 1
        self._dirty_since: float | None = None  # monotonic
        self._last_evaluation_s = 0.0
        self._last_handled = 0.0
        self._backlog = False  # the last batch was full
        self._gauge_lock = threading.Lock()
        self._gauges_stale = False
        self._gauges_refreshed = 0.0
        self._gauges_took = 0.0  # seconds of the last rebuild
        self._passes = 0  # periodic passes since start: the first evaluates every asset
        self._chunk = 20  # assets in the next chunk of a pass (`chunk_size` after the first)
        # Catch-up: the time of the history being replayed (None when live), and whether replayed assets may
        # still await their evaluation on the wall clock (unknown after a start, so True).
        self._replay_as_of: float | None = None
        self._confirm_pending = True
        # The same for automation objects, judged apart: their stream is read in step with the others, not
        # behind them, so its events never end (or start) the assets' catch-up.
        self._automation_as_of: float | None = None
        self._automation_confirm = True
        self._automation_handled = 0.0  # monotonic time of the last batch with automation events
        self._automation_passes = 0
        # Assets known to have a history in health.db, not asked about again (`_record`); a key here whose
        # history is gone after all is only read back when evaluated, as any uncached one.
        self._with_history: set[str] = set()
        self._load_dirty()

    # -- cache -------------------------------------------------------------------------------------------

    def _forget(self) -> None:
        self.cache.clear()
        self._load_dirty()

    def _begin(self) -> None:
        """At the start of a transaction: on a store shared by several replicas (PostgreSQL), other
        workers write too, so drop the in-memory copy and read what is needed afresh."""
        if self.store.dialect != "sqlite":
            self.cache.clear()

    def _release_memory(self) -> None:
        """At the end of a periodic job: free the page cache of this (job) thread's SQLite connection."""
        if self.store.dialect == "sqlite":
            db.release_memory(self.store.connection())

    def _load_dirty(self) -> None:
        """The assets awaiting evaluation according to the store (after a restart or a failed batch)."""
        try:
            dirty = db.dirty_assets(self.store.connection())
        except Exception as exc:  # the store is unwell; the periodic evaluate_all covers these assets
            log.warning("dirty_assets_unreadable", error=str(exc))
            dirty = {}
        self._dirty = {key: int(facts) for key, facts in dirty.items()}
        self._dirty_since = time.monotonic() if self._dirty else None

    def _entry(self, conn: Connection, key: str) -> Entry:
        return self.cache.entry(key, lambda k: db.load_history(conn, k, self.cfg.history_limit))

    def _entry_to_evaluate(self, conn: Connection, key: str) -> Entry:
        """The entry an evaluation of `key` reads, its memo filled from the store when the cache had none.

        Not cached, and the results of its history-only checks stored by this run still valid (no fact
        since, `store.load_reusable`): when they are all there and nothing else reads more than the newest
        materializations (`evaluators.tail_suffices`), an entry over that tail of the history, for this
        evaluation only (a periodic pass over 50,000 assets then reads a few rows of each instead of
        fitting the anomaly models of whole histories again). Otherwise the whole history, cached."""
        entry = self.cache.peek(key)
        stored: dict[str, CheckResult] = {}
        if entry is None or entry.memo is None:
            stored = db.load_reusable(conn, key, self.epoch, HISTORY_ONLY)
        if entry is None and len(stored) == len(HISTORY_ONLY):
            history = db.load_history(
                conn, key, self.cfg.history_limit, materializations=TAIL_MATERIALIZATIONS
            )
            if tail_suffices(history):
                entry = Entry(history)
                entry.memo = Memo(history.version, self._resolve(entry), stored)
                return entry
        entry = self._entry(conn, key)
        if entry.memo is None and stored:
            entry.memo = Memo(entry.history.version, self._resolve(entry), stored)
        return entry

    def _state(self, conn: Connection, entry: Entry) -> HealthState:
        if entry.state is None:
            entry.state = db.load_state(conn, entry.history.key)
        return entry.state

    def _resolve(self, entry: Entry) -> Resolved:
        history = entry.history
        if entry.resolved is not None and entry.resolved[0] is history.spec:
            return entry.resolved[1]
        resolved = resolve(self.cfg, history.spec)
        for problem in resolved.problems:
            log.warning("asset_threshold_ignored", asset=history.key, problem=problem)
        entry.resolved = (history.spec, resolved)
        return resolved

    # -- the handler -------------------------------------------------------------------------------------

    def handle(self, deliveries: list[Delivery]) -> None:
        """Record a batch (dedupe by event id), evaluate the touched assets, stage transitions; one commit
        (a long deferred evaluation follows in transactions of its own)."""
        if not deliveries:
            return
        with self.lock:
            now = self._catch_up(deliveries)
            replay = self._replay_as_of is not None
            decisions: list[Decision] = []
            try:
                with self.store.write() as conn:
                    self._begin()
                    new = Store.claim_new(conn, deliveries, lambda d: d.event.id)
                    events = [d.event for d in new]
                    facts = record.facts_of(events)
                    self._record(conn, facts, now)
                    if facts.touched:
                        self._facts_serial += 1
                        self._mark_dirty(conn, facts.touched, now, facts=True)
                    confirming = self._confirm_pending and not replay
                    # One isinstance per event: a batch of runs and materializations holds none of these.
                    ticks = [e for e in events if isinstance(e, automation.AUTOMATION_EVENTS)]
                    automated = self._record_automation(conn, ticks)
                    automated += self._record_jobs(conn, events, now, replay, confirming)
                    if confirming:  # caught up: what was replayed is judged again on the wall clock
                        self._mark_dirty(conn, db.replayed_asset_keys(conn), now, facts=False)
                    # A full batch means a backlog: coalesce evaluations instead of evaluating after every
                    # batch; caught up, evaluate at once.
                    backlog = self._backlog = len(deliveries) >= self.settings.bus.batch_size
                    due = bool(self._dirty) and (not backlog or self._due())
                    if due and len(self._dirty) <= _EVALUATE_IN_BATCH:
                        decisions = self._evaluate_dirty(conn, now, replay)
                    elif due and not backlog:
                        # Caught up after a long backlog: this batch's assets at once; the thousands still
                        # waiting go to the evaluate_pending job, in chunks between which batches are handled.
                        decisions = self._evaluate_some(conn, facts.touched, now, replay)
                self._last_handled = time.monotonic()
                if confirming:
                    self._confirm_pending = False
            except BaseException:
                self._forget()
                raise
            if due and backlog and len(self._dirty) > _EVALUATE_IN_BATCH:
                self._evaluate_pending_now()
        lags: dict[str, list[float]] = {}
        wall = self.clock()
        for delivery in new:
            lags.setdefault(delivery.stream, []).append(
                max(0.0, wall - delivery.event.occurred_at.timestamp())
            )
        for stream, values in lags.items():
            metrics.EVENT_LAG_SECONDS.labels(stream=stream).observe_many(values)
        self._after_commit([*decisions, *automated])
        metrics.AWAITING_EVALUATION.set(len(self._dirty))
        if any(e.type == "automation.publisher_heartbeat" for e in ticks):
            self.update_publisher_gauge()

    def _catch_up(self, deliveries: Sequence[Delivery]) -> float:
        """The time a batch is judged at: the wall clock, or while history is being replayed (its newest run
        or materialization is older than `catch_up_lag_s`) the time of that history, so that freshness and
        running-time limits are not judged against the wall clock. A batch without runs or
        materializations (asset specs only) leaves the mode as it is."""
        now = self.clock()
        # The newest time first, converted once (a time's timestamp() costs more than comparing two).
        times = [d.event.occurred_at for d in deliveries if d.event.type.startswith(_FACT_TYPES)]
        if times:
            newest = max(times).timestamp()
            if now - newest > self.cfg.catch_up_lag_s:
                if self._replay_as_of is None:
                    log.info("health_catching_up", history_at=newest, behind_s=round(now - newest))
                self._replay_as_of = max(self._replay_as_of or newest, newest)
                self._confirm_pending = True
            elif self._replay_as_of is not None:
                log.info("health_caught_up")
                self._replay_as_of = None
        if self._replay_as_of is not None and len(deliveries) < self.settings.bus.batch_size:
            # The publisher says it has read the whole event log (its heartbeat comes last in its tick, and
            # this batch, not full, holds everything published before it): the replay is over, no need to wait
            # for `catch_up_quiet_s`.
            for d in deliveries:
                beat = d.event.data
                if (
                    isinstance(beat, PublisherHeartbeatData)
                    and beat.caught_up
                    and now - beat.tick_at.timestamp() <= self.cfg.catch_up_lag_s
                ):
                    log.info("health_caught_up", publisher=beat.code_location)
                    self._replay_as_of = None
                    break
        return self._replay_as_of if self._replay_as_of is not None else now

    def _end_quiet_catch_up(self) -> None:
        """No batch for `catch_up_quiet_s` after a replay: the history is read. Every replayed asset is marked
        for evaluation on the wall clock (done by the caller, `evaluate_pending`). Caller holds the lock."""
        quiet = time.monotonic() - self._last_handled >= self.cfg.catch_up_quiet_s
        if self._replay_as_of is not None and quiet:
            log.info("health_caught_up", quiet_s=self.cfg.catch_up_quiet_s)
            self._replay_as_of = None
        if self._replay_as_of is None and self._confirm_pending:
            now = self.clock()
            try:
                with self.store.write() as conn:
                    self._mark_dirty(conn, db.replayed_asset_keys(conn), now, facts=False)
                    jobs = db.replayed_automation_keys(conn, jobs=True)
                    decisions = self._evaluate_automation(conn, jobs, now, Trigger.EVENTS, False)
            except BaseException:
                self._forget()
                raise
            self._confirm_pending = False
            self._after_commit(decisions)

    def _record(self, conn: Connection, facts: record.Facts, now: float) -> None:
        """Write the batch's facts to health.db, and to the histories in the cache (the others are read
        from the store, facts included, when next evaluated). An asset of which the store holds nothing yet
        enters the cache with an empty history first: what `load_history` would read of it before this
        batch, so its first evaluation reads nothing back (a backlog of new assets: a fifth of that
        evaluation's time was reading back the histories just written)."""
        if self.store.dialect == "sqlite":  # on PostgreSQL the cache lasts one transaction (`_begin`)
            known = self._with_history
            uncached = [key for key in facts.touched if key not in known and self.cache.peek(key) is None]
            for key in db.without_history(conn, uncached) if uncached else ():
                self.cache.entry(key, AssetHistory)
            if len(known) + len(uncached) > _WITH_HISTORY_MAX:
                known.clear()
            known.update(uncached)  # each has a history now (or this transaction fails: then it is read)
        db.write_facts(conn, facts, now)
        cached = {key: self.cache.peek(key) for key in facts.touched}
        entries = {key: e for key, e in cached.items() if e is not None}
        if len(entries) < len(cached):
            facts = facts.only(entries.keys())
        record.apply(facts, {key: e.history for key, e in entries.items()}, self.cfg.history_limit)
        for entry in entries.values():
            self.cache.resize(entry)

    def _mark_dirty(self, conn: Connection, keys: Sequence[str], now: float, *, facts: bool) -> None:
        """Remember `keys` as awaiting evaluation, durably (a crash before evaluating loses nothing); `facts`:
        because facts about them were recorded (their stored results no longer hold, `load_reusable`)."""
        dirty = self._dirty
        fresh = [k for k in keys if k not in dirty or (facts and not dirty[k])]
        if fresh:
            db.mark_dirty(conn, fresh, now, facts=facts)
        for k in keys if facts else fresh:
            dirty[k] = self._facts_serial if facts else dirty.get(k, 0)
        if fresh and self._dirty_since is None:
            self._dirty_since = time.monotonic()

    def _due(self) -> bool:
        """Deferred evaluations are due: waiting `max_defer_s`, or nine times what the last one took, so
        that under a backlog evaluation takes at most about a tenth of the worker's time."""
        if self._dirty_since is None:
            return False
        wait = max(self.cfg.max_defer_s, 9 * self._last_evaluation_s)
        return time.monotonic() - self._dirty_since >= wait

    def _evaluate_dirty(self, conn: Connection, now: float, replay: bool) -> list[Decision]:
        """Every asset awaiting evaluation, in the caller's transaction (a batch's few)."""
        started = time.monotonic()
        keys = list(self._dirty)
        decisions = self._evaluate(conn, keys, now, Trigger.EVENTS, replay)
        db.clear_dirty(conn)
        self._dirty.clear()
        self._dirty_since = None
        self._last_evaluation_s = time.monotonic() - started
        return decisions

    def _evaluate_some(
        self, conn: Connection, keys: Sequence[str], now: float, replay: bool
    ) -> list[Decision]:
        """`keys` among the assets awaiting evaluation, in the caller's transaction."""
        keys = [k for k in keys if k in self._dirty]
        decisions = self._evaluate(conn, keys, now, Trigger.EVENTS, replay)
        done = {*keys, *(d.key for d in decisions)} & self._dirty.keys()
        db.clear_dirty(conn, done)
        for key in done:
            self._dirty.pop(key, None)
        return decisions

    def _evaluate_pending_now(self) -> int:
        """Every asset awaiting evaluation for new facts, in chunks, on the consume loop (caller, `handle`
        under a backlog, holds the lock). Those awaiting only their confirmation after a catch-up (tens of
        thousands at once) are left to the `evaluate_pending` job, whose chunks let batches through:
        judged here, a probe failing meanwhile waited 64 s behind 50,000 of them."""
        started = time.monotonic()
        evaluated = self._in_chunks([k for k, facts in self._dirty.items() if facts], Trigger.EVENTS)
        self._last_evaluation_s = time.monotonic() - started
        return evaluated[0]

    def evaluate_pending(self) -> int:
        """Evaluate assets whose evaluation was deferred (periodic, every `max_defer_s`), once the worker
        has caught up or the deferral is due; returns how many. Skipped while the periodic pass runs: it
        evaluates the waiting assets too."""
        with self.lock:
            self._end_quiet_catch_up()
        if not self._pass_lock.acquire(blocking=False):
            return 0
        try:
            with self.lock:
                # Caught up (the last batch was not full): what still waits is evaluated now. Under a
                # backlog only the deferral rule (`_due`) starts an evaluation: a batch can take longer
                # than `max_defer_s` on a busy machine, which is not a quiet stream.
                if not self._dirty or not (not self._backlog or self._due()):
                    return 0
                keys = list(self._dirty)
                backlog = self._backlog
            # In chunks, the lock taken for each: batches are handled in between.
            started = time.monotonic()
            evaluated, _, longest = self._in_chunks(keys, Trigger.EVENTS)
        finally:
            self._pass_lock.release()
        # Under a backlog the whole evaluation counts (`_due`: evaluation at most a tenth of the worker's
        # time). Caught up (the thousands judged again after a catch-up), only a chunk: a worker that
        # falls behind meanwhile must not defer a new failure by nine times the whole of it.
        self._last_evaluation_s = time.monotonic() - started if backlog else longest
        self._release_memory()
        return evaluated

    def _in_chunks(
        self, keys: Sequence[str], trigger: Trigger, keep: Callable[[str], bool] | None = None
    ) -> tuple[int, int, float]:
        """Evaluate `keys` in chunks of about `CHUNK_TARGET_S` each (`chunk_size`), one transaction each;
        the lock is taken for each chunk (it is reentrant: a caller holding it keeps it); of a clock pass,
        only those `keep` still wants then. Returns
        (evaluations, transitions, the longest chunk's seconds)."""
        evaluated = changed = 0
        longest = 0.0
        start = 0
        judged: dict[str, int] = {}
        while start < len(keys):
            chunk = keys[start : start + min(self._chunk, EVALUATE_ALL_CHUNK)]
            start += len(chunk)
            with self.lock:
                began = time.perf_counter()
                if trigger is Trigger.EVENTS:  # those a batch evaluated meanwhile are done
                    chunk = [k for k in chunk if k in self._dirty]
                elif keep is not None:
                    chunk = [k for k in chunk if keep(k)]
                if not chunk:
                    continue
                replay = self._replay_as_of is not None
                now = self._replay_as_of if self._replay_as_of is not None else self.clock()
                try:
                    with self.store.write() as conn:
                        self._begin()
                        decisions = self._evaluate(conn, chunk, now, trigger, replay, judged)
                        done = {*chunk, *(d.key for d in decisions)} & self._dirty.keys()
                        db.clear_dirty(conn, done)
                    for key in done:
                        self._dirty.pop(key, None)
                    if not self._dirty:
                        self._dirty_since = None
                except BaseException:
                    self._forget()
                    raise
                took = time.perf_counter() - began
                longest = max(longest, took)
                self._chunk = chunk_size(len(chunk), took)
            self._after_commit(decisions)
            metrics.AWAITING_EVALUATION.set(len(self._dirty))
            evaluated += len(decisions)
            changed += sum(d.changed for d in decisions)
            if start < len(keys):
                # Python's locks are not fair: re-taken at once, this one would starve the consume loop
                # waiting for it (measured: a probe 87 s behind a catch-up of 50,000 assets).
                time.sleep(_YIELD_S)
        return evaluated, changed, longest

    # -- evaluation --------------------------------------------------------------------------------------

    def _upstreams(self, conn: Connection, history: AssetHistory) -> dict[str, UpstreamState]:
        states: dict[str, UpstreamState] = {}
        if history.spec is None:
            return states
        for key in history.spec.upstream:
            entry = self.cache.peek(key)
            if entry is None:  # not its history, only what the dependency check reads of it
                states[key] = db.load_upstream(conn, key)
                continue
            up = entry.history
            st = self._state(conn, entry)
            last = up.last_materialization
            states[key] = UpstreamState(
                key=key,
                registered=up.spec is not None,
                retired=up.retired,
                status=st.status,
                execution_failed=st.outcomes.get(CheckName.EXECUTION) == "error",
                stale=st.outcomes.get(CheckName.FRESHNESS, "passed") != "passed",
                last_materialized_at=last.at if last else None,
                last_run_id=last.run_id if last else None,
            )
        return states

    def _evaluate(
        self,
        conn: Connection,
        keys: Iterable[str],
        now: float,
        trigger: Trigger,
        replay: bool = False,
        judged: dict[str, int] | None = None,
    ) -> list[Decision]:
        """Evaluate `keys` and stage their transitions. The downstream assets of those with new facts
        (`Trigger.EVENTS`, or awaiting evaluation) are evaluated too (they judge their upstreams); then,
        once, the downstream of those whose health changed.

        `judged`, shared by the chunks of one pass: the assets it evaluated, with the facts serial then; a
        downstream asset evaluated after its upstream's facts were recorded already judged them.

        Each decision is written at once, so that an asset the cache drops meanwhile is read back as
        decided."""
        decisions: list[Decision] = []
        done: set[str] = set()
        queue = list(dict.fromkeys(keys))
        for key in list(queue):
            # New facts: their downstream judge them (not an asset judged again only to confirm it after a
            # catch-up: its history is unchanged, and a change of its health queues them below).
            serial = self._dirty.get(key, _UNKNOWN_FACTS if trigger is Trigger.EVENTS else 0)
            if serial:
                spec = self._entry(conn, key).history.spec
                if spec is not None:
                    queue.extend(d for d in spec.downstream if judged is None or judged.get(d, 0) < serial)
        second_pass: list[str] = []
        for pass_keys in (queue, second_pass):
            for key in pass_keys:
                if key in done:
                    continue
                done.add(key)
                entry = self._entry_to_evaluate(conn, key)
                history = entry.history
                if history.spec is None and not history.has_data and not self._state(conn, entry).stored:
                    continue  # named as someone's downstream, but nothing known about it yet
                decision = self._evaluate_one(conn, entry, now, trigger, replay)
                last = history.last_materialization
                db.write_decision(
                    conn,
                    decision,
                    now,
                    next_change(history, self._resolve(entry), now),
                    last.at if last else None,
                    self.epoch,
                )
                decisions.append(decision)
                if judged is not None:
                    judged[key] = self._facts_serial
                if decision.changed and pass_keys is queue and history.spec is not None:
                    second_pass.extend(d for d in history.spec.downstream if d not in done)
        staged = [d.event for d in decisions if d.event is not None]
        if staged:
            outbox.stage(conn, HEALTH, staged)
        return decisions

    def _lineage(self, conn: Connection, history: AssetHistory) -> frozenset[str] | None:
        """Of an asset its last run blocked, the failed assets of that run that are upstream of it, as far
        as the spec copies tell; None for every other asset, and when its own spec is unknown."""
        blocked = blocking_run(history)
        if blocked is None or history.spec is None:
            return None

        def upstream_of(key: str) -> list[str] | None:
            spec = history.spec if key == history.key else self._entry(conn, key).history.spec
            return spec.upstream if spec is not None else None

        return upstream_among(history.key, blocked.failed, upstream_of)

    def _results(self, conn: Connection, entry: Entry, now: float) -> list[CheckResult]:
        """Every check of the asset; those depending only on an unchanged history are reused."""
        history = entry.history
        resolved = self._resolve(entry)
        memo = entry.memo
        reuse: dict[str, CheckResult] = {}
        if memo is not None and memo.version == history.version and memo.resolved is resolved:
            busy = running(history)
            reuse = {c: r for c, r in memo.results.items() if not (c == CheckName.DURATION and busy)}
        lineage = self._lineage(conn, history)
        if lineage is not None:  # its execution status also depends on other assets' specs
            reuse.pop(CheckName.EXECUTION, None)
        results = evaluate(history, resolved, now, self._upstreams(conn, history), reuse, lineage)
        entry.memo = Memo(history.version, resolved, {r.check: r for r in results if r.check in HISTORY_ONLY})
        return results

    def _evaluate_one(
        self, conn: Connection, entry: Entry, now: float, trigger: Trigger, replay: bool
    ) -> Decision:
        started = time.perf_counter()
        history = entry.history
        results = self._results(conn, entry, now)
        spec = history.spec
        subject = Subject(
            key=history.key,
            has_data=history.has_data,
            retired=history.retired,
            owners=tuple(spec.owners) if spec else (),
            downstream=tuple(spec.downstream) if spec else (),
            group=spec.group if spec else None,
            code_location=spec.code_location if spec else None,
            declared=frozenset(spec.checks) if spec else None,
        )
        decision = decide(self._state(conn, entry), results, now, subject, trigger, replay=replay)
        entry.state = decision.state
        self.cache.resize(entry)
        metrics.EVALUATION_SECONDS.observe(time.perf_counter() - started)
        return decision

    def _after_commit(self, decisions: Sequence[Decision]) -> None:
        changed = False
        for d in decisions:
            for r in d.results:
                metrics.CHECK_RESULTS.labels(check=r.check, outcome=r.outcome).inc()
            if d.event is not None:
                changed = True
                metrics.TRANSITIONS.labels(status=d.status).inc()
        if self.report is not None:
            for d in decisions:
                if d.report:
                    self.report(d.key, d.report)
        if changed:  # the gauges only move with a transition
            self._gauges_stale = True
            self.refresh_status_gauges()

    # -- periodic jobs -----------------------------------------------------------------------------------

    def evaluate_all(self) -> int:
        """The periodic pass: re-evaluate every asset whose checks the clock may have changed (freshness
        and running-time limits, `evaluators.next_change`), every asset on the first pass after a start
        (thresholds may have changed); returns how many transitions were staged.

        Assets are evaluated in chunks (`chunk_size`), one transaction each, releasing the lock in
        between: with thousands of assets a single pass takes seconds, and the consume loop must not wait
        that long for the lock (a failing materialization would wait with it). It waits for an
        `evaluate_pending` in progress (after a catch-up, the judging of every replayed asset), which
        leaves it little to do: two passes at once would only share the same work and the lock's turns."""
        with self._pass_lock:
            started = time.monotonic()
            with self.lock:
                if self._replay_as_of is not None:
                    return 0  # history is being replayed: the wall clock would judge a past not yet read
                keys, keep = self._pass_keys()
                self._passes += 1
            _, changed, _ = self._in_chunks(keys, Trigger.CLOCK, keep)
        self._release_memory()
        metrics.FULL_EVALUATION_SECONDS.observe(time.monotonic() - started)
        metrics.CACHE_BYTES.set(self.cache.used)
        return changed

    def _pass_keys(self) -> tuple[list[str], Callable[[str], bool] | None]:
        """The assets of a periodic pass (every one on the first), and which of them to evaluate still when
        their chunk comes: one that was only awaiting evaluation and has been evaluated meanwhile (by a
        batch, or evaluate_pending after a catch-up) is not evaluated twice. Caller holds the lock."""
        conn = self.store.connection()
        if self._passes == 0:
            return db.all_asset_keys(conn), None
        now = self.clock()
        clock = db.due_by_clock(conn, now)
        return db.due_asset_keys(conn, now), lambda key: key in clock or key in self._dirty

    # -- automation objects (automation.py): sensors, schedules, daemons, publishers, op jobs ---------------
    # Kept apart from the asset path: no cache (a few hundred objects, read per batch), no lineage, nothing
    # reported to Dagster; judged at the same `now` as the batch (the history's time during a replay).

    def _automation_now(self, events: Sequence[Event]) -> tuple[float, bool]:
        """The time a batch's automation events are judged at, and whether that is a replay: as for assets
        (`_catch_up`), the newest tick (or caught-up publisher heartbeat) older than `catch_up_lag_s` is
        history being replayed (a first install paging through tick history, a backlog), judged as of its
        time; a recent one ends the replay."""
        times = [t for e in events if (t := automation.catch_up_time(e)) is not None]
        wall = self.clock()
        if times:
            newest = max(times)
            if wall - newest > self.cfg.catch_up_lag_s:
                self._automation_as_of = max(self._automation_as_of or newest, newest)
                self._automation_confirm = True
            else:
                self._automation_as_of = None
        if self._automation_as_of is not None:
            return self._automation_as_of, True
        return wall, False

    def _record_automation(self, conn: Connection, events: Sequence[Event]) -> list[Decision]:
        """Fold a batch's automation events (`automation.AUTOMATION_EVENTS`: the caller picks them) into
        their objects and evaluate those (and, once caught up, the objects last judged during a replay, on
        the wall clock)."""
        by_key: dict[str, list[Event]] = {}
        for event in events:
            key = automation.object_key(event)
            if key is not None:
                by_key.setdefault(key, []).append(event)
        if not by_key:
            return []
        self._automation_handled = time.monotonic()
        now, replay = self._automation_now(events)
        confirming = self._automation_confirm and not replay
        loaded = self._fold_objects(conn, by_key, now)
        keys = list(loaded)
        if confirming:  # caught up: what was replayed is judged again on the wall clock
            keys = list(dict.fromkeys([*keys, *db.replayed_automation_keys(conn)]))
            self._automation_confirm = False
        return self._evaluate_automation(conn, keys, now, Trigger.EVENTS, replay, loaded)

    def _record_jobs(
        self, conn: Connection, events: Sequence[Event], now: float, replay: bool, confirming: bool
    ) -> list[Decision]:
        """Fold the batch's runs of op jobs (no asset keys) into their `job:` objects and evaluate those. They
        come on the runs stream, behind the same backlog as the assets' runs: judged at the assets' `now` and
        replay (`_catch_up`), and once that replay ends (`confirming`) the replayed jobs again."""
        by_key: dict[str, list[Event]] = {}
        for event in [e for e in events if isinstance(e, RunEvent) and not e.data.asset_keys]:
            key = automation.job_key(event)
            if key is not None:
                by_key.setdefault(key, []).append(event)
        loaded = self._fold_objects(conn, by_key, now) if by_key else {}
        keys = list(loaded)
        if confirming:
            keys = list(dict.fromkeys([*keys, *db.replayed_automation_keys(conn, jobs=True)]))
        return self._evaluate_automation(conn, keys, now, Trigger.EVENTS, replay, loaded)

    @staticmethod
    def _fold_objects(
        conn: Connection, by_key: dict[str, list[Event]], now: float
    ) -> dict[str, tuple[automation.AutomationObject, HealthState]]:
        """Each object's stored record (a new one for an unknown key) with its events folded in, written."""
        loaded = db.load_automation(conn, by_key)
        for key, mine in by_key.items():
            known = loaded.get(key)
            if known is None:  # the first event that makes one (a removal of an unknown key does not)
                fresh = next((o for o in map(automation.new_object, mine) if o is not None), None)
                known = (fresh, HealthState()) if fresh is not None else None
            if known is not None:
                obj, state = known
                loaded[key] = (automation.apply(obj, *mine), state)
        if loaded:
            db.write_automation_objects(conn, [obj for obj, _ in loaded.values()], now)
        return loaded

    def _evaluate_automation(
        self,
        conn: Connection,
        keys: Sequence[str],
        now: float,
        trigger: Trigger,
        replay: bool,
        loaded: dict[str, tuple[automation.AutomationObject, HealthState]] | None = None,
    ) -> list[Decision]:
        """Evaluate automation objects `keys` (those in `loaded` as given, the others as stored) at `now`,
        write each decision, stage their health.changed."""
        if not keys:
            return []
        cfg = self.cfg.automation
        daemons = {key: obj for key, (obj, _) in db.load_automation(conn, kind="daemon").items()}
        objects = dict(loaded or {})
        missing = [k for k in keys if k not in objects]
        if missing:
            objects.update(db.load_automation(conn, missing))
        decisions: list[Decision] = []
        for key in keys:
            if key not in objects:
                continue
            obj, state = objects[key]
            results = automation.evaluate(obj, cfg, now, daemons, canceled_run=self.cfg.defaults.canceled_run)
            downstream = automation.daemon_chain(key, daemons) if obj.kind == "daemon" else ()
            subject = automation.subject_of(obj, downstream)
            decision = decide(state, results, now, subject, trigger, replay=replay)
            due = automation.next_change(obj, cfg, now, daemons=daemons)
            db.write_automation_decision(conn, decision, now, due)
            decisions.append(decision)
        staged = [d.event for d in decisions if d.event is not None]
        if staged:
            outbox.stage(conn, HEALTH, staged)
        return decisions

    def evaluate_automation(self) -> int:
        """The periodic pass over automation objects (every `evaluation_interval_s`): those whose `due_at` has
        come (a heartbeat or tick limit passing) and those judged during a replay; every one on the first pass
        after a start. Waits while automation history is replayed, until `catch_up_quiet_s` without any
        automation event. Returns the transitions staged."""
        with self.lock:
            if self._automation_as_of is not None:
                if time.monotonic() - self._automation_handled < self.cfg.catch_up_quiet_s:
                    return 0
                log.info("automation_caught_up", quiet_s=self.cfg.catch_up_quiet_s)
                self._automation_as_of = None
            every = self._automation_passes == 0
            self._automation_passes += 1
            now = self.clock()
            # Op jobs wait while the runs are replayed (they are judged in step with them, `_record_jobs`).
            jobs = self._replay_as_of is None
            # Read first: most passes find nothing due and take no write lock.
            if not db.due_automation_keys(self.store.connection(), None if every else now, jobs=jobs):
                return 0
            try:
                with self.store.write() as conn:
                    self._begin()
                    keys = db.due_automation_keys(conn, None if every else now, jobs=jobs)
                    decisions = self._evaluate_automation(conn, keys, now, Trigger.CLOCK, False)
            except BaseException:
                self._forget()
                raise
        self._after_commit(decisions)
        return sum(d.changed for d in decisions)

    def update_publisher_gauge(self) -> None:
        """Set each code location's publisher heartbeat time from health.db, and the rule's threshold."""
        metrics.PUBLISHER_RULE_AFTER.set(self.cfg.automation.publisher_rule_after_s)
        for location, at in db.publisher_heartbeats(self.store.connection()):
            metrics.PUBLISHER_LAST_HEARTBEAT.labels(code_location=location).set(at)

    def retention(self) -> dict[str, int]:
        """Delete history older than `health.retention_days`; the cache is rebuilt from what is left."""
        with self.lock:
            deleted = db.prune(self.store, self.cfg.retention_days, now=self.clock())
            self._forget()
            self._release_memory()
        if any(deleted.values()):
            log.info("health_retention", deleted=deleted)
        return deleted

    def refresh_status_gauges(self) -> None:
        """Rebuild the status gauges if a transition happened since the last rebuild, at most once a
        second, and at most a twentieth of the time: a rebuild reads every asset's health (a few hundred
        ms at 50,000 assets), and a worker keeping up with a busy stream sees a transition in most batches
        (the `status_gauges` job brings in the last ones)."""
        with self._gauge_lock:
            wait = max(_GAUGE_INTERVAL_S, 20 * self._gauges_took)
            if not self._gauges_stale or time.monotonic() - self._gauges_refreshed < wait:
                return
            self._gauges_stale = False
            started = self._gauges_refreshed = time.monotonic()
            self.update_status_gauge()
            self._gauges_took = time.monotonic() - started

    def status_gauges(self) -> None:
        """The periodic job of the status gauges (`refresh_status_gauges` on a job thread)."""
        with self._gauge_lock:
            stale = self._gauges_stale
        self.refresh_status_gauges()
        if stale:
            self._release_memory()

    def update_status_gauge(self) -> None:
        """Set the assets-by-group-and-status and the per-unhealthy-asset gauges from health.db."""
        conn = self.store.connection()
        counts: dict[tuple[str, str], int] = {(g, s): n for g, s, n in db.status_counts(conn)}
        unhealthy = db.unhealthy_assets(conn)
        # Groups and broken assets come and go: rebuild the series rather than leave stale ones behind.
        metrics.ASSETS_BY_STATUS.clear()
        for each in HealthStatus:
            metrics.ASSETS_BY_STATUS.labels(group="", status=each).set(counts.pop(("", each), 0))
        for (group, status), n in counts.items():
            metrics.ASSETS_BY_STATUS.labels(group=group, status=status).set(n)
        metrics.ASSET_STATUS.clear()
        for key, group, status in unhealthy:
            metrics.ASSET_STATUS.labels(asset_key=key, group=group, status=status).set(1)

    def stats(self) -> dict[str, Any]:
        """What the cache holds (for benchmarks and debugging)."""
        return {
            "cached_assets": len(self.cache),
            "cache_bytes_estimated": self.cache.used,
            "dirty_assets": len(self._dirty),
        }
