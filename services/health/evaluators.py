"""The health evaluators: pure functions of an asset's history and its thresholds, each returning one
`CheckResult` (passed / warn / error, a human reason, the numbers behind it), and the asset's health as
the worst of them."""

from __future__ import annotations

import itertools
import json
import re
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pydantic import JsonValue

from libs.common.events import CHECK_NAMES, CheckName, CheckOutcome, CheckResult
from libs.common.text import clip, duration
from services.health.anomaly import DetectorConfig, Score, score
from services.health.model import AssetHistory, Execution, UpstreamState
from services.health.settings import HealthThresholds
from services.health.thresholds import Resolved

EXECUTION = CheckName.EXECUTION
VOLUME = CheckName.VOLUME
DURATION = CheckName.DURATION
FRESHNESS = CheckName.FRESHNESS
DEPENDENCIES = CheckName.DEPENDENCIES
SCHEMA = CheckName.SCHEMA
_DAY = 86400.0
_RECENT = 100  # runs that decide the execution status and streak
# Training points per detector: plenty for robust statistics, and bounded cost per evaluation.
MAX_TRAINING_POINTS = 120
MAX_TRAINING_POINTS_HOURLY = 24 * 7


def _result(check: CheckName, outcome: CheckOutcome, reason: str, **values: Any) -> CheckResult:
    clean: dict[str, JsonValue] = {}
    for name, value in values.items():
        if value is None:
            continue
        clean[name] = round(value, 6) if isinstance(value, float) else value
    return CheckResult(check=check, outcome=outcome, reason=reason, values=clean)


def when(t: float | None) -> str:
    """An epoch time as `2026-11-27 21:05Z`."""
    if t is None:
        return "never"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%MZ")


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


# -- execution status -------------------------------------------------------------------------------


BLOCKED = "BLOCKED"


class Outcome(NamedTuple):
    """How one finished run went for the asset."""

    at: float
    run_id: str
    status: str  # SUCCESS | FAILURE | CANCELED | BLOCKED
    error: str | None = None
    # BLOCKED: the run's assets that failed on their own (the asset was not run because of them).
    failed: tuple[str, ...] = ()


def run_outcomes(history: AssetHistory) -> list[Outcome]:
    """The outcome of each finished run of the asset, oldest first.

    A run counts as a success for this asset when the asset materialized in it and no failed
    materialization of the asset is on record for it, even if the run failed elsewhere. A failed run that
    did not materialize the asset and says which of its assets failed on their own (`failed_assets`), the
    asset not among them and no failed materialization of it on record, BLOCKED it: Dagster skipped it
    because an upstream failed. Without that list (an older producer) the run is the asset's failure.
    """
    by_run: dict[str, Outcome] = {}
    key = history.key
    # The recent past decides the last outcome and the streak.
    materialized = {m.run_id: m.at for m in history.materializations[-_RECENT:]}
    for e in history.executions[-_RECENT:]:
        if e.status == "STARTED":
            continue
        if e.status != "FAILURE":
            by_run[e.run_id] = Outcome(e.at, e.run_id, e.status, e.error)
        elif e.run_id in materialized:
            by_run[e.run_id] = Outcome(e.at, e.run_id, "SUCCESS", e.error)
        elif e.failed_assets is not None and key not in e.failed_assets:
            by_run[e.run_id] = Outcome(e.at, e.run_id, BLOCKED, e.error, e.failed_assets)
        else:
            by_run[e.run_id] = Outcome(e.at, e.run_id, "FAILURE", e.error)
    for run_id, at in materialized.items():
        if run_id not in by_run:
            by_run[run_id] = Outcome(at, run_id, "SUCCESS")
    for f in history.failures[-_RECENT:]:
        prior = by_run.get(f.run_id)
        by_run[f.run_id] = Outcome(
            max(f.at, prior.at) if prior else f.at,
            f.run_id,
            "FAILURE",
            f.error or (prior.error if prior else None),
        )
    return sorted(by_run.values(), key=lambda o: o.at)


def may_be_blocked(history: AssetHistory) -> bool:
    """Whether the asset's last finished run failed, named its failed assets, and not this one: the only
    case in which `blocking_run` reads further (the outcomes of the recent runs)."""
    last = next((e for e in reversed(history.executions) if e.status != "STARTED"), None)
    if last is None or last.status != "FAILURE" or last.failed_assets is None:
        return False
    return history.key not in last.failed_assets


def blocking_run(history: AssetHistory) -> Outcome | None:
    """The asset's last finished run when it BLOCKED the asset (its `failed`: the run's own failures), else
    None. Cheap for every other asset: only a failed last run that names its failed assets is looked at."""
    if not may_be_blocked(history):
        return None
    outcome = run_outcomes(history)[-1]
    return outcome if outcome.status == BLOCKED else None


def running(history: AssetHistory) -> bool:
    """A run of the asset is in progress among its last 20 (its duration is judged again at every
    evaluation: the results of `HISTORY_ONLY` checks are reused but that of `duration_anomaly`)."""
    return any(e.status == "STARTED" for e in history.executions[-20:])


# Materializations read by the checks that are not `HISTORY_ONLY` and by `next_change`: the newest, and the
# last 31 for the learned cadence (`learned_cadence`'s window + 1). An evaluation that reuses every
# history-only result, with no run in progress and no run that may have blocked the asset, reads no more.
TAIL_MATERIALIZATIONS = 32


def tail_suffices(history: AssetHistory) -> bool:
    """Whether an evaluation reusing the results of every `HISTORY_ONLY` check gives the same results from
    the newest `TAIL_MATERIALIZATIONS` materializations of `history` (its runs and failures whole) as
    from all of them: no run in progress (duration judged again), no last run that may have blocked it
    (its execution status and dependencies read the recent runs' outcomes)."""
    return not running(history) and not may_be_blocked(history)


def upstream_among(
    key: str, wanted: Collection[str], upstream_of: Callable[[str], Sequence[str] | None], limit: int = 10_000
) -> frozenset[str]:
    """Those of `wanted` that are upstream of `key`, at any depth, following `upstream_of` (a key's declared
    upstream assets, None when unknown); cycle-safe, at most `limit` assets visited."""
    wanted = frozenset(wanted)
    found: set[str] = set()
    seen = {key}
    queue = deque(upstream_of(key) or ())
    while queue and len(seen) < limit:
        k = queue.popleft()
        if k in seen:
            continue
        seen.add(k)
        if k in wanted:
            found.add(k)
            if len(found) == len(wanted):
                break
        queue.extend(upstream_of(k) or ())
    return frozenset(found)


def blocked_by(failed: Sequence[str], lineage: Collection[str] | None) -> list[str]:
    """The assets that blocked this one: the run's own failures upstream of it (`lineage`: those known to be
    upstream, see `upstream_among`); all of the run's own failures when none is known to be."""
    upstream = [k for k in failed if k in lineage] if lineage else []
    return sorted(upstream or failed)


def _blocked_text(keys: Sequence[str]) -> str:
    if not keys:
        return "an upstream failure"
    names = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    return f"the failure of upstream {names}"


def execution_status(
    history: AssetHistory, th: HealthThresholds, lineage: Collection[str] | None = None
) -> CheckResult:
    """Error when the asset's last run failed (naming the streak); a canceled last run per `canceled_run`;
    a warning when the last run(s) blocked it (an upstream failed in the same run) and its own last run did
    not fail. Blocked runs count in no streak and hide no success. `lineage`: see `blocked_by`."""
    outcomes = run_outcomes(history)
    running = [e.run_id for e in history.executions if e.status == "STARTED"]
    if not outcomes:
        return _result(EXECUTION, "passed", "no finished run on record", running=running or None)
    own = [o for o in outcomes if o.status != BLOCKED]
    blocked = outcomes[-1] if outcomes[-1].status == BLOCKED else None
    last_success = next((o.at for o in reversed(own) if o.status == "SUCCESS"), None)
    since = f"; last success {when(last_success)}" if last_success else "; no success on record"
    if blocked is not None and (not own or own[-1].status != "FAILURE"):
        keys = blocked_by(blocked.failed, lineage)
        times = 0  # blocked runs in a row, the last one included
        for o in reversed(outcomes):
            if o.status != BLOCKED:
                break
            times += 1
        reason = (
            f"not materialized in run {blocked.run_id[:8]} at {when(blocked.at)}: blocked by "
            f"{_blocked_text(keys)}" + (f" ({times} runs in a row)" if times > 1 else "") + since
        )
        return _result(
            EXECUTION,
            "warn",
            reason,
            last_run_id=blocked.run_id,
            last_status=BLOCKED,
            last_run_at=when(blocked.at),
            consecutive=times,
            last_success_at=when(last_success) if last_success else None,
            runs=len(outcomes),
            blocked_by=keys,
            blocked_run_id=blocked.run_id,
        )
    at, run_id, status, error, _ = own[-1]
    streak = 0
    for o in reversed(own):
        if o.status != status:
            break
        streak += 1
    values: dict[str, Any] = {
        "last_run_id": run_id,
        "last_status": status,
        "last_run_at": when(at),
        "consecutive": streak,
        "last_success_at": when(last_success) if last_success else None,
        "runs": len(outcomes),
    }
    if status == "FAILURE":
        times_text = f"{streak} consecutive failures" if streak > 1 else "first failure"
        detail = f": {clip(error.strip().splitlines()[0], 300)}" if error and error.strip() else ""
        # Its own failure stands until it runs again: a later run that only skipped it changes nothing.
        later = (
            f"; not run since: blocked in run {blocked.run_id[:8]} by "
            f"{_blocked_text(blocked_by(blocked.failed, lineage))}"
            if blocked is not None
            else ""
        )
        return _result(
            EXECUTION,
            "error",
            f"run {run_id[:8]} failed at {when(at)} ({times_text}{since}){detail}{later}",
            **values,
        )
    if status == "CANCELED" and th.canceled_run != "ignore":
        return _result(EXECUTION, th.canceled_run, f"run {run_id[:8]} was canceled at {when(at)}", **values)
    return _result(EXECUTION, "passed", f"last run {run_id[:8]} succeeded at {when(at)}", **values)


# -- volume and duration anomalies --------------------------------------------------------------------


def _anomaly_result(
    check: CheckName, s: Score, severity: CheckOutcome, what: str, unit: str, sensitivity: float
) -> CheckResult:
    values: dict[str, Any] = {
        "value": s.value,
        "expected": s.expected,
        "lower": s.lower,
        "upper": s.upper,
        "z_score": s.z,
        "sensitivity": sensitivity,
        "change_pct": s.change_pct,
        "training_size": s.training_size,
        "trend_per_day": s.trend_per_day,
        "seasonal": s.seasonal or None,
    }
    if not s.enough_data:
        return _result(check, "passed", f"not enough history to judge {what} yet ({s.note})", **values)
    assert s.expected is not None and s.lower is not None and s.upper is not None
    band = (
        f"expected {_num(s.expected)}{unit} "
        f"(normal {_num(max(s.lower, 0))} to {_num(s.upper)}{unit}, {s.training_size} runs)"
    )
    if s.anomaly is None:
        return _result(check, "passed", f"{what} {_num(s.value)}{unit} is normal: {band}", **values)
    z = f"z={s.z:+.1f}" if s.z is not None else "constant history"
    change = f", {s.change_pct:+.0f}%" if s.change_pct is not None else ""
    word = "spike" if s.anomaly == "spike" else "drop"
    reason = (
        f"{what} {word}: {_num(s.value)}{unit} vs {band}; {z}{change}, beyond sensitivity {sensitivity:g}"
    )
    return _result(check, severity, reason, direction=s.anomaly, **values)


def _max_points(seasonality: str) -> int:
    return MAX_TRAINING_POINTS_HOURLY if seasonality == "hour_of_day" else MAX_TRAINING_POINTS


def volume_config(th: HealthThresholds) -> DetectorConfig:
    return DetectorConfig(
        sensitivity=th.volume_sensitivity,
        direction=th.volume_direction,
        training_s=th.volume_training_days * _DAY,
        min_training_size=th.volume_min_training_size,
        seasonality=th.volume_seasonality,
        ignore_spike_pct=th.volume_ignore_small_spike_pct,
        ignore_drop_pct=th.volume_ignore_small_drop_pct,
        max_points=_max_points(th.volume_seasonality),
    )


def duration_config(th: HealthThresholds) -> DetectorConfig:
    return DetectorConfig(
        sensitivity=th.duration_sensitivity,
        direction=th.duration_direction,
        training_s=th.duration_training_days * _DAY,
        min_training_size=th.duration_min_training_size,
        seasonality=th.duration_seasonality,
        ignore_spike_pct=th.duration_ignore_small_spike_pct,
        ignore_drop_pct=th.duration_ignore_small_drop_pct,
        min_delta=th.duration_min_delta_s,
        max_points=_max_points(th.duration_seasonality),
    )


def volume_anomaly(history: AssetHistory, th: HealthThresholds) -> CheckResult:
    """Row count of the latest materialization against its training window; zero rows is its own finding."""
    series = [
        (m.at, float(m.row_count))
        for m in history.materializations[-(MAX_TRAINING_POINTS_HOURLY + 1) :]
        if m.row_count is not None
    ]
    if not series:
        return _result(
            VOLUME, "passed", "no row count reported (add dagster/row_count metadata to judge volume)"
        )
    *past, (t_now, value) = series
    if value == 0 and th.zero_rows != "ignore":
        recent = [v for t, v in past if t >= t_now - th.volume_training_days * _DAY]
        nonzero = [v for v in recent if v > 0]
        # Zero is a finding where the asset usually has rows (not if most past runs were empty too).
        if nonzero and len(nonzero) * 2 > len(recent):
            return _result(
                VOLUME,
                th.zero_rows,
                f"zero rows materialized at {when(t_now)}; the last {len(recent)} runs had a median of "
                f"{_num(sorted(nonzero)[len(nonzero) // 2])} rows",
                value=0,
                zero_rows=True,
                training_size=len(recent),
            )
    s = score(past, (t_now, value), volume_config(th))
    return _anomaly_result(VOLUME, s, th.volume_severity, "row count", "", th.volume_sensitivity)


def duration_series(history: AssetHistory) -> list[tuple[float, float]]:
    """(time, seconds) of each successful materialization: its own duration, else its run's."""
    tail = history.materializations[-(MAX_TRAINING_POINTS_HOURLY + 1) :]
    runs: dict[str, Execution] = {e.run_id: e for e in history.executions[-2 * len(tail) - 10 :]}
    series: list[tuple[float, float]] = []
    for m in tail:
        d = m.duration_s
        if d is None:
            run = runs.get(m.run_id)
            d = run.duration_s if run is not None and run.status == "SUCCESS" else None
        if d is not None:
            series.append((m.at, d))
    return series


def duration_anomaly(history: AssetHistory, th: HealthThresholds, now: float) -> CheckResult:
    """Duration of the latest run against its training window, plus the absolute `duration_max_s`."""
    if th.duration_max_s is not None:
        for e in history.executions:
            if e.status == "STARTED" and e.started_at is not None and now - e.started_at > th.duration_max_s:
                return _result(
                    DURATION,
                    "error",
                    f"run {e.run_id[:8]} has been running {duration(now - e.started_at)}, over the maximum "
                    f"{duration(th.duration_max_s)}",
                    running_s=now - e.started_at,
                    max_s=th.duration_max_s,
                )
    series = duration_series(history)
    if not series:
        return _result(DURATION, "passed", "no run duration on record")
    *past, (t_now, value) = series
    if th.duration_max_s is not None and value > th.duration_max_s:
        return _result(
            DURATION,
            "error",
            f"last run took {duration(value)}, over the maximum {duration(th.duration_max_s)}",
            value=value,
            max_s=th.duration_max_s,
        )
    s = score(past, (t_now, value), duration_config(th))
    return _anomaly_result(DURATION, s, th.duration_severity, "duration", "s", th.duration_sensitivity)


# -- freshness ------------------------------------------------------------------------------------------


def learned_cadence(times: Sequence[float], window: int = 30) -> tuple[float | None, int]:
    """Median interval between the last `window` materializations (bursts under a minute count as one)."""
    recent = list(times[-(window + 1) :])
    intervals = [b - a for a, b in itertools.pairwise(recent) if b - a >= 60]
    if not intervals:
        return None, 0
    ordered = sorted(intervals)
    return ordered[len(ordered) // 2], len(intervals)


def latest_cron_tick(cron: str, now: float, timezone: str | None) -> float:
    """The latest tick of `cron` at or before `now` (Dagster's own cron arithmetic, imported on first use)."""
    # Dagster exports no cron arithmetic; the policy's deadline must follow Dagster's reading of the cron
    # string (its aliases and DST rules), so this private name (read in dagster 1.13.28) is used on purpose.
    # tests/services/health/test_evaluators.py exercises it.
    from dagster._utils.schedules import get_latest_completed_cron_tick

    return get_latest_completed_cron_tick(cron, datetime.fromtimestamp(now, UTC), timezone).timestamp()


def _cron_freshness(history: AssetHistory, policy: Mapping[str, Any], now: float) -> CheckResult | None:
    """Dagster's cron freshness policy: a materialization within `lower_bound_delta` before each deadline."""
    cron = policy.get("deadline_cron")
    if not isinstance(cron, str):
        return None
    try:
        deadline = latest_cron_tick(cron, now, policy.get("timezone") or "UTC")
    except Exception as exc:  # a policy Dagster accepted but we cannot read: say so, do not guess
        return _result(FRESHNESS, "warn", f"cannot evaluate the cron freshness policy {cron!r}: {exc}")
    window = float(policy.get("lower_bound_delta_s") or 0.0)
    last = history.last_materialization
    values = {
        "deadline": when(deadline),
        "window_s": window,
        "policy": f"Dagster cron freshness policy {cron}",
    }
    if last is not None and last.at >= deadline - window:
        return _result(
            FRESHNESS,
            "passed",
            f"fresh: materialized {when(last.at)}, before the deadline {when(deadline)}",
            **values,
        )
    seen = f"last materialized {when(last.at)}" if last else "never materialized"
    return _result(
        FRESHNESS,
        "error",
        f"stale: no materialization in the {duration(window)} before the deadline {when(deadline)} "
        f"({cron}); {seen}",
        **values,
    )


def freshness(history: AssetHistory, resolved: Resolved, now: float) -> CheckResult:
    """Age of the latest materialization against the explicit max lag (or Dagster cron policy), else the
    learned cadence."""
    th = resolved.thresholds
    last = history.last_materialization
    explicit = th.freshness_max_lag
    policy = history.spec.freshness if history.spec else None
    asset_level = resolved.source("freshness_max_lag").startswith(("tag", "metadata"))
    if policy and policy.get("kind") == "cron" and not asset_level:
        cron_result = _cron_freshness(history, policy, now)
        if cron_result is not None:
            return cron_result
    if last is None:
        if (
            explicit is not None
            and history.registered_at is not None
            and now - history.registered_at > explicit
        ):
            return _result(
                FRESHNESS,
                "warn",
                f"never materialized, registered {duration(now - history.registered_at)} ago "
                f"(max lag {duration(explicit)} from {resolved.source('freshness_max_lag')})",
                max_lag_s=explicit,
            )
        return _result(FRESHNESS, "passed", "no materialization yet")
    age = max(0.0, now - last.at)
    if explicit is not None:
        origin = resolved.source("freshness_max_lag")
        values = {"age_s": age, "max_lag_s": explicit, "warn_lag_s": th.freshness_warn_lag, "policy": origin}
        if age > explicit:
            return _result(
                FRESHNESS,
                "error",
                f"stale: last materialized {duration(age)} ago at {when(last.at)}, "
                f"max lag {duration(explicit)} ({origin})",
                **values,
            )
        if th.freshness_warn_lag is not None and age > th.freshness_warn_lag:
            return _result(
                FRESHNESS,
                "warn",
                f"getting stale: last materialized {duration(age)} ago, "
                f"warn after {duration(th.freshness_warn_lag)}",
                **values,
            )
        return _result(
            FRESHNESS,
            "passed",
            f"fresh: materialized {duration(age)} ago (max lag {duration(explicit)})",
            **values,
        )
    cadence, intervals = learned_cadence([m.at for m in history.materializations])
    if cadence is None or intervals < th.freshness_min_history:
        return _result(
            FRESHNESS,
            "passed",
            f"materialized {duration(age)} ago; no freshness policy and too few runs to learn a cadence "
            f"({intervals} of {th.freshness_min_history} intervals)",
            age_s=age,
        )
    warn_after, error_after = (
        cadence * th.freshness_cadence_warn_factor,
        cadence * th.freshness_cadence_error_factor,
    )
    values = {
        "age_s": age,
        "cadence_s": cadence,
        "warn_after_s": warn_after,
        "error_after_s": error_after,
        "policy": "learned cadence",
    }
    usual = f"usually every {duration(cadence)}"
    if age > error_after:
        return _result(
            FRESHNESS, "error", f"stale: last materialized {duration(age)} ago, {usual} (learned)", **values
        )
    if age > warn_after:
        return _result(
            FRESHNESS, "warn", f"late: last materialized {duration(age)} ago, {usual} (learned)", **values
        )
    return _result(
        FRESHNESS, "passed", f"fresh: materialized {duration(age)} ago, {usual} (learned)", **values
    )


# -- dependencies ---------------------------------------------------------------------------------------


def dependencies(
    history: AssetHistory, upstreams: Mapping[str, UpstreamState], lineage: Collection[str] | None = None
) -> CheckResult:
    """Upstreams that are unregistered, retired, failed or stale, or that changed during this asset's run;
    and the failed upstreams that blocked its last run (`failed_upstream` names every failed upstream).
    `lineage`: see `blocked_by`."""
    spec = history.spec
    errors: list[str] = []
    warns: list[str] = []
    failed_upstream: list[str] = []
    blocked = blocking_run(history)
    if blocked is not None:
        failed_upstream = blocked_by(blocked.failed, lineage)
        warns.append(f"blocked in run {blocked.run_id[:8]} by {_blocked_text(failed_upstream)}")
    if spec is None or not spec.upstream:
        if warns:
            return _result(DEPENDENCIES, "warn", warns[0], problems=warns, failed_upstream=failed_upstream)
        return _result(
            DEPENDENCIES, "passed", "no declared upstream assets" if spec else "no definition on record"
        )
    last = history.last_materialization
    run = next((e for e in reversed(history.executions) if last and e.run_id == last.run_id), None)
    for key in spec.upstream:
        up = upstreams.get(key)
        if up is None or not up.registered:
            errors.append(f"declared dependency {key} is not a registered asset")
            continue
        if up.retired:
            errors.append(f"upstream {key} is retired")
            continue
        if up.execution_failed:
            if key not in failed_upstream:  # a blocking failure is named once
                warns.append(f"upstream {key} failed")
                failed_upstream.append(key)
        elif up.stale:
            warns.append(f"upstream {key} is stale")
        if (
            last is not None
            and run is not None
            and run.started_at is not None
            and up.last_materialized_at is not None
            and up.last_run_id != last.run_id
            and run.started_at < up.last_materialized_at < last.at
        ):
            warns.append(
                f"materialized at {when(last.at)} from older input: upstream {key} changed at "
                f"{when(up.last_materialized_at)}, during this run"
            )
    values = {
        "upstream": list(spec.upstream),
        "problems": [*errors, *warns] or None,
        "failed_upstream": failed_upstream or None,
    }
    if errors:
        return _result(DEPENDENCIES, "error", "; ".join(errors + warns), **values)
    if warns:
        return _result(DEPENDENCIES, "warn", "; ".join(warns), **values)
    return _result(DEPENDENCIES, "passed", f"{len(spec.upstream)} upstream assets healthy", **values)


# -- schema drift ---------------------------------------------------------------------------------------

_SYNONYMS: dict[str, str] = {}
for _canonical, _names in {
    "integer": "int int8 int16 int32 int64 integer bigint smallint tinyint long short "
    "uint8 uint16 uint32 uint64 int64dtype number(38,0)",
    "float": "float float16 float32 float64 double real numeric decimal number double precision "
    "float8 float4",
    "string": "str string text varchar nvarchar char nchar object character varying utf8 large_string",
    "boolean": "bool boolean bit",
    "timestamp": "datetime timestamp datetime64 datetime64[ns] datetime64[us] timestamp_ntz timestamptz "
    "timestamp with time zone timestamp without time zone datetime2 datetimeoffset",
    "date": "date date32 date64",
    "bytes": "bytes binary varbinary blob bytea",
}.items():
    for _name in re.split(r" (?=[a-z])", _names):
        _SYNONYMS[_name] = _canonical


def normalize_type(type_name: str) -> str:
    """A column type in canonical form, so synonyms (`int64`, `bigint`, `integer`) compare equal."""
    t = type_name.strip().lower()
    if t in _SYNONYMS:
        return _SYNONYMS[t]
    base = re.sub(r"\(.*\)$", "", t).strip()  # varchar(20) → varchar; decimal(10,2) → decimal
    base = re.sub(r"\[.*\]$", "", base).strip()  # datetime64[ns, UTC] → datetime64
    return _SYNONYMS.get(base, base)


def declared_columns(metadata: Mapping[str, Any]) -> tuple[tuple[str, str], ...] | None:
    """The column schema declared in the definition's `dagster/column_schema` metadata, if readable."""
    raw = metadata.get("dagster/column_schema")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    if isinstance(raw, dict):
        raw = raw.get("columns", raw.get("value", raw.get("schema")))
        if isinstance(raw, dict):
            raw = raw.get("columns")
    if not isinstance(raw, list):
        return None
    cols = [(str(c["name"]), str(c.get("type", ""))) for c in raw if isinstance(c, dict) and "name" in c]
    return tuple(cols) or None


def schema_drift(history: AssetHistory) -> CheckResult:
    """Latest column schema against the declared one (else the previous materialization's)."""
    with_schema = [m for m in history.materializations if m.columns]
    if not with_schema:
        return _result(SCHEMA, "passed", "no column schema reported (add dagster/column_schema metadata)")
    current = with_schema[-1]
    assert current.columns is not None
    declared = declared_columns(history.spec.metadata) if history.spec else None
    if declared is not None:
        baseline, basis = declared, "the declared schema"
    elif len(with_schema) >= 2:
        baseline, basis = with_schema[-2].columns or (), f"the materialization of {when(with_schema[-2].at)}"
    else:
        return _result(SCHEMA, "passed", f"first column schema on record ({len(current.columns)} columns)")
    before = {n: normalize_type(t) for n, t in baseline}
    after = {n: normalize_type(t) for n, t in current.columns}
    raw_before = dict(baseline)
    raw_after = dict(current.columns)
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    retyped = sorted(n for n in set(before) & set(after) if before[n] and after[n] and before[n] != after[n])
    downstream = list(history.spec.downstream) if history.spec else []
    values: dict[str, Any] = {
        "added": added or None,
        "removed": removed or None,
        "retyped": [f"{n}: {raw_before[n]} → {raw_after[n]}" for n in retyped] or None,
        "downstream_at_risk": downstream or None,
        "columns": len(after),
    }
    parts = []
    if removed:
        parts.append("removed " + ", ".join(removed))
    if retyped:
        parts.append("retyped " + ", ".join(f"{n} ({raw_before[n]} → {raw_after[n]})" for n in retyped))
    if added:
        parts.append("added " + ", ".join(added))
    if not parts:
        return _result(SCHEMA, "passed", f"{len(after)} columns, unchanged from {basis}", **values)
    risk = f"; downstream at risk: {', '.join(downstream)}" if downstream and (removed or retyped) else ""
    outcome: CheckOutcome = "error" if removed or retyped else "warn"
    return _result(SCHEMA, outcome, f"schema drift against {basis}: {'; '.join(parts)}{risk}", **values)


# -- the asset's health ----------------------------------------------------------------------------------

# Checks that depend only on the asset's history and thresholds (not on the clock or other assets).
HISTORY_ONLY = frozenset({EXECUTION, VOLUME, DURATION, SCHEMA})


def evaluate(
    history: AssetHistory,
    resolved: Resolved,
    now: float,
    upstreams: Mapping[str, UpstreamState],
    reuse: Mapping[str, CheckResult] | None = None,
    lineage: Collection[str] | None = None,
) -> list[CheckResult]:
    """Every check of `CHECK_NAMES` for one asset, in that order.

    `reuse` holds results the caller knows are unchanged (same history, same thresholds, and for
    `duration_anomaly` no run in progress): they are returned as they are instead of recomputed.
    `lineage`: of an asset its last run blocked, which of that run's failed assets are upstream of it
    (`upstream_among`; None when unknown).
    """
    th = resolved.thresholds
    if history.retired:
        return [_result(name, "passed", "asset retired") for name in CHECK_NAMES]
    reuse = reuse or {}
    run: dict[CheckName, Callable[[], CheckResult]] = {
        EXECUTION: lambda: execution_status(history, th, lineage),
        VOLUME: lambda: volume_anomaly(history, th),
        DURATION: lambda: duration_anomaly(history, th, now),
        FRESHNESS: lambda: freshness(history, resolved, now),
        DEPENDENCIES: lambda: dependencies(history, upstreams, lineage),
        SCHEMA: lambda: schema_drift(history),
    }
    disabled = set(th.disabled_checks)
    return [
        _result(name, "passed", f"disabled ({resolved.source('disabled_checks')})")
        if name in disabled
        else reuse[name]
        if name in reuse
        else run[name]()
        for name in CHECK_NAMES
    ]


def next_change(history: AssetHistory, resolved: Resolved, now: float) -> float | None:
    """The earliest time after `now` at which the checks of this asset can change with the clock alone
    (a freshness limit crossed, a running run passing `duration_max_s`); None when only new events can
    change them. Evaluating the asset again before that time gives the same outcomes (reasons quoting an
    age aside), so the periodic pass skips it until then."""
    th = resolved.thresholds
    if history.retired:
        return None
    limits: list[float] = []
    if th.duration_max_s is not None and DURATION not in th.disabled_checks:
        limits += [
            e.started_at + th.duration_max_s
            for e in history.executions
            if e.status == "STARTED" and e.started_at is not None
        ]
    if FRESHNESS not in th.disabled_checks:
        policy = history.spec.freshness if history.spec else None
        asset_level = resolved.source("freshness_max_lag").startswith(("tag", "metadata"))
        if policy and policy.get("kind") == "cron" and not asset_level:
            return now  # deadlines move with every cron tick: always evaluated
        last = history.last_materialization
        explicit = th.freshness_max_lag
        if last is None:
            if explicit is not None and history.registered_at is not None:
                limits.append(history.registered_at + explicit)
        elif explicit is not None:
            limits.append(last.at + explicit)
            if th.freshness_warn_lag is not None:
                limits.append(last.at + th.freshness_warn_lag)
        else:
            cadence, intervals = learned_cadence([m.at for m in history.materializations[-31:]])
            if cadence is not None and intervals >= th.freshness_min_history:
                limits += [
                    last.at + cadence * th.freshness_cadence_warn_factor,
                    last.at + cadence * th.freshness_cadence_error_factor,
                ]
    ahead = [t for t in limits if t >= now]
    return min(ahead) if ahead else None
