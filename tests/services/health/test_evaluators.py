"""Each evaluator as a pure function of a hand-made history."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from libs.common.events import CHECK_NAMES, AssetSpecData, CheckResult
from services.health.decide import health_status, signature
from services.health.evaluators import (
    dependencies,
    duration_anomaly,
    evaluate,
    execution_status,
    freshness,
    next_change,
    normalize_type,
    schema_drift,
    volume_anomaly,
)
from services.health.model import AssetHistory, Execution, Failure, Materialization, UpstreamState
from services.health.settings import HealthSettings, HealthThresholds
from services.health.thresholds import Resolved, dagster_policy, resolve

DAY = 86400.0
T0 = 1_780_000_000.0
TH = HealthThresholds()


def daily(n: int, rows: int = 1000, **kw: object) -> list[Materialization]:
    return [Materialization(T0 + i * DAY, f"r{i}", rows + (i % 3), **kw) for i in range(n)]  # type: ignore[arg-type]


def test_execution_status_failure_streak_and_recovery() -> None:
    h = AssetHistory(
        "a",
        executions=[
            Execution("r1", "SUCCESS", T0, T0 + 10),
            Execution("r2", "FAILURE", T0 + 100, T0 + 110, error="ValueError: bad\ntrace"),
            Execution("r3", "FAILURE", T0 + 200, T0 + 210, error="ValueError: bad"),
        ],
    )
    r = execution_status(h, TH)
    assert r.outcome == "error" and "2 consecutive failures" in r.reason and "ValueError: bad" in r.reason
    assert r.values["consecutive"] == 2
    h.executions.append(Execution("r4", "SUCCESS", T0 + 300, T0 + 310))
    assert execution_status(h, TH).outcome == "passed"


def test_failed_materialization_of_planned_asset_is_a_failure() -> None:
    h = AssetHistory("a", materializations=daily(1), failures=[Failure(T0 + DAY, "rx", "disk full")])
    r = execution_status(h, TH)
    assert r.outcome == "error" and "disk full" in r.reason


def test_run_failing_elsewhere_after_materializing_this_asset_counts_as_success() -> None:
    h = AssetHistory(
        "a",
        materializations=[Materialization(T0 + 5, "r1", 10)],
        executions=[Execution("r1", "FAILURE", T0, T0 + 10, error="other step")],
    )
    assert execution_status(h, TH).outcome == "passed"


def test_canceled_run_warns_by_default() -> None:
    h = AssetHistory("a", executions=[Execution("r1", "CANCELED", T0, T0 + 1)])
    assert execution_status(h, TH).outcome == "warn"
    assert execution_status(h, TH.model_copy(update={"canceled_run": "ignore"})).outcome == "passed"


def test_volume_zero_rows_is_its_own_finding() -> None:
    h = AssetHistory("a", materializations=[*daily(3), Materialization(T0 + 3 * DAY, "z", 0)])
    r = volume_anomaly(h, TH)
    assert r.outcome == "error" and "zero rows" in r.reason and r.values["zero_rows"] is True
    assert (
        volume_anomaly(h, TH.model_copy(update={"zero_rows": "ignore"})).outcome == "passed"
    )  # too little history


def test_volume_anomaly_and_normal_point() -> None:
    mats = daily(20)
    h = AssetHistory("a", materializations=[*mats, Materialization(T0 + 20 * DAY, "x", 5000)])
    r = volume_anomaly(h, TH)
    assert r.outcome == "error" and "spike" in r.reason and r.values["z_score"] > 3  # type: ignore[operator]
    h = AssetHistory("a", materializations=[*mats, Materialization(T0 + 20 * DAY, "x", 1001)])
    assert volume_anomaly(h, TH).outcome == "passed"
    assert volume_anomaly(AssetHistory("a", materializations=daily(3)), TH).reason.startswith(
        "not enough history"
    )


def test_duration_absolute_max_and_running_too_long() -> None:
    mats = [Materialization(T0 + i * DAY, f"r{i}", 1, duration_s=60.0 + i % 2) for i in range(10)]
    th = TH.model_copy(update={"duration_max_s": 120.0})
    h = AssetHistory("a", materializations=[*mats, Materialization(T0 + 10 * DAY, "x", 1, duration_s=150.0)])
    assert duration_anomaly(h, th, T0 + 11 * DAY).outcome == "error"
    assert duration_anomaly(h, TH, T0 + 11 * DAY).outcome == "warn"  # a spike, duration severity warn
    h = AssetHistory("a", materializations=mats, executions=[Execution("live", "STARTED", T0 + 10 * DAY)])
    r = duration_anomaly(h, th, T0 + 10 * DAY + 600)
    assert r.outcome == "error" and "has been running" in r.reason


def test_duration_from_run_when_materialization_has_none() -> None:
    mats = [Materialization(T0 + i * DAY, f"r{i}", 1) for i in range(10)]
    runs = [Execution(f"r{i}", "SUCCESS", T0 + i * DAY - 30, T0 + i * DAY, 30.0) for i in range(9)]
    runs.append(Execution("r9", "SUCCESS", T0 + 9 * DAY - 3000, T0 + 9 * DAY, 3000.0))
    r = duration_anomaly(AssetHistory("a", materializations=mats, executions=runs), TH, T0 + 10 * DAY)
    assert r.outcome == "warn" and r.values["value"] == 3000.0


def resolved(**kw: object) -> Resolved:
    return Resolved(TH.model_copy(update=kw), {k: "tag ams/" + k for k in kw})


def test_freshness_explicit_policy() -> None:
    h = AssetHistory("a", materializations=daily(2))
    last = T0 + DAY
    assert freshness(h, resolved(freshness_max_lag=3600.0), last + 1800).outcome == "passed"
    r = freshness(h, resolved(freshness_max_lag=3600.0), last + 7200)
    assert r.outcome == "error" and "max lag 1h00m" in r.reason and "tag ams/freshness_max_lag" in r.reason
    assert (
        freshness(h, resolved(freshness_max_lag=7200.0, freshness_warn_lag=3600.0), last + 5000).outcome
        == "warn"
    )


def test_freshness_learned_cadence_and_never_materialized() -> None:
    h = AssetHistory("a", materializations=daily(8))
    last = T0 + 7 * DAY
    assert freshness(h, resolved(), last + 1.2 * DAY).outcome == "passed"
    assert freshness(h, resolved(), last + 2 * DAY).outcome == "warn"
    assert freshness(h, resolved(), last + 4 * DAY).outcome == "error"
    few = AssetHistory("a", materializations=daily(3))
    assert "too few runs" in freshness(few, resolved(), T0 + 30 * DAY).reason
    never = AssetHistory("a", registered_at=T0)
    assert freshness(never, resolved(freshness_max_lag=3600.0), T0 + 7200).outcome == "warn"
    assert freshness(never, resolved(), T0 + 7200).outcome == "passed"


def test_dependencies() -> None:
    spec = AssetSpecData(key="c", upstream=["a", "b", "ghost", "old"])
    h = AssetHistory("c", spec=spec)
    ups = {
        "a": UpstreamState("a", registered=True, execution_failed=True),
        "b": UpstreamState("b", registered=True, stale=True),
        "old": UpstreamState("old", registered=True, retired=True),
    }
    r = dependencies(h, ups)
    assert r.outcome == "error"
    for text in (
        "ghost is not a registered asset",
        "old is retired",
        "upstream a failed",
        "upstream b is stale",
    ):
        assert text in r.reason
    ok = {k: UpstreamState(k, registered=True) for k in ("a", "b")}
    assert (
        dependencies(AssetHistory("c", spec=AssetSpecData(key="c", upstream=["a", "b"])), ok).outcome
        == "passed"
    )


def test_materialized_while_upstream_changed_during_run() -> None:
    spec = AssetSpecData(key="c", upstream=["a"])
    h = AssetHistory(
        "c",
        spec=spec,
        materializations=[Materialization(T0 + 100, "run-c", 1)],
        executions=[Execution("run-c", "SUCCESS", T0, T0 + 100)],
    )
    during = {"a": UpstreamState("a", registered=True, last_materialized_at=T0 + 50, last_run_id="run-a")}
    r = dependencies(h, during)
    assert r.outcome == "warn" and "older input" in r.reason
    same_run = {"a": UpstreamState("a", registered=True, last_materialized_at=T0 + 50, last_run_id="run-c")}
    assert dependencies(h, same_run).outcome == "passed"


def test_schema_drift_added_removed_retyped_and_synonyms() -> None:
    cols = [("id", "int64"), ("name", "string"), ("amount", "float")]
    spec = AssetSpecData(key="a", downstream=["b", "c"])

    def hist(new: list[tuple[str, str]]) -> AssetHistory:
        return AssetHistory(
            "a",
            spec=spec,
            materializations=[
                Materialization(T0, "r1", columns=tuple(cols)),
                Materialization(T0 + 1, "r2", columns=tuple(new)),
            ],
        )

    assert (
        schema_drift(hist([("id", "BIGINT"), ("name", "varchar(20)"), ("amount", "double")])).outcome
        == "passed"
    )
    added = schema_drift(hist([*cols, ("extra", "int")]))
    assert added.outcome == "warn" and "added extra" in added.reason and "at risk" not in added.reason
    removed = schema_drift(hist([("id", "int64"), ("amount", "string")]))
    assert removed.outcome == "error"
    assert "removed name" in removed.reason and "retyped amount (float → string)" in removed.reason
    assert "downstream at risk: b, c" in removed.reason


def test_schema_drift_against_declared_schema() -> None:
    spec = AssetSpecData(
        key="a", metadata={"dagster/column_schema": {"columns": [{"name": "id", "type": "int"}]}}
    )
    h = AssetHistory(
        "a", spec=spec, materializations=[Materialization(T0, "r", columns=(("id", "int"), ("x", "str")))]
    )
    assert schema_drift(h).outcome == "warn"


@given(
    st.sampled_from(["int", "INT64", "bigint", "Integer", "int32"]),
    st.sampled_from(["integer", "long", "smallint"]),
)
def test_integer_synonyms_are_equal(a: str, b: str) -> None:
    assert normalize_type(a) == normalize_type(b) == "integer"


def _r(check: str, outcome: str) -> CheckResult:
    return CheckResult(check=check, outcome=outcome, reason="x")  # type: ignore[arg-type]


def test_health_status_mapping() -> None:
    passed = [_r(c, "passed") for c in CHECK_NAMES]
    assert health_status(passed, has_data=True, retired=False) == "HEALTHY"
    assert health_status(passed, has_data=False, retired=False) == "UNKNOWN"
    assert health_status([_r("volume_anomaly", "warn")], has_data=True, retired=False) == "WARNING"
    assert (
        health_status([_r("volume_anomaly", "error"), _r("freshness", "warn")], has_data=True, retired=False)
        == "DEGRADED"
    )
    assert health_status([_r("execution_status", "error")], has_data=True, retired=False) == "FAILED"
    assert health_status([_r("execution_status", "error")], has_data=True, retired=True) == "UNKNOWN"
    assert signature("FAILED", [_r("a", "error"), _r("b", "passed")]) == "FAILED|a=error"


def test_evaluate_returns_every_check_and_honours_disabled() -> None:
    h = AssetHistory("a", materializations=daily(3))
    results = evaluate(
        h, Resolved(TH.model_copy(update={"disabled_checks": ["freshness"]})), T0 + 100 * DAY, {}
    )
    assert [r.check for r in results] == list(CHECK_NAMES)
    assert results[3].reason.startswith("disabled")


def test_thresholds_resolution_order() -> None:
    cfg = HealthSettings(
        defaults=HealthThresholds(volume_sensitivity=4),
        groups={"g": {"volume_sensitivity": 5, "freshness_max_lag": "2h"}},
    )
    spec = AssetSpecData(
        key="a",
        group="g",
        tags={"ams/volume_sensitivity": "6", "ams/bogus": "1", "ams/zero_rows": "nope"},
        freshness={"maximum_lag_minutes": 30},
    )
    r = resolve(cfg, spec)
    assert (
        r.thresholds.volume_sensitivity == 6
        and r.source("volume_sensitivity") == "tag ams/volume_sensitivity"
    )
    assert (
        r.thresholds.freshness_max_lag == 1800 and r.source("freshness_max_lag") == "Dagster freshness policy"
    )
    assert r.thresholds.zero_rows == "error" and any("ams/zero_rows" in p for p in r.problems)
    assert resolve(cfg, AssetSpecData(key="b", group="g")).thresholds.volume_sensitivity == 5
    assert resolve(cfg, AssetSpecData(key="b")).thresholds.volume_sensitivity == 4
    assert (
        resolve(
            cfg, AssetSpecData(key="b", metadata={"ams/freshness_max_lag": "1d"})
        ).thresholds.freshness_max_lag
        == 86400
    )


def test_dagster_policy_shapes() -> None:
    assert dagster_policy({"fail_window": {"seconds": 600}, "warn_window_s": 300}) == {
        "freshness_max_lag": 600,
        "freshness_warn_lag": 300,
    }
    assert dagster_policy({"fail_window": "2h"}) == {"freshness_max_lag": 7200}
    assert dagster_policy(None) == {}


def test_cron_freshness_policy() -> None:
    # daily deadline 09:00 UTC, materialization required within the 3 h before it
    spec = AssetSpecData(
        key="a",
        freshness={
            "kind": "cron",
            "deadline_cron": "0 9 * * *",
            "lower_bound_delta_s": 10800,
            "timezone": "UTC",
        },
    )
    day = T0 - T0 % DAY
    on_time = AssetHistory("a", spec=spec, materializations=[Materialization(day + 7 * 3600, "r", 1)])
    assert freshness(on_time, resolved(), day + 10 * 3600).outcome == "passed"
    late = AssetHistory("a", spec=spec, materializations=[Materialization(day + 5 * 3600, "r", 1)])
    r = freshness(late, resolved(), day + 10 * 3600)
    assert r.outcome == "error" and "before the deadline" in r.reason
    # an explicit tag on the asset overrides the Dagster policy
    assert freshness(late, resolved(freshness_max_lag=DAY), day + 10 * 3600).outcome == "passed"


@given(
    intervals=st.lists(st.floats(600, 3 * DAY), min_size=1, max_size=40),
    max_lag=st.one_of(st.none(), st.floats(60, 5 * DAY)),
    running_for=st.one_of(st.none(), st.floats(0, DAY)),
    offsets=st.lists(st.floats(0, 1), min_size=1, max_size=5),
)
def test_outcomes_do_not_change_with_the_clock_before_next_change(
    intervals: list[float], max_lag: float | None, running_for: float | None, offsets: list[float]
) -> None:
    """The periodic pass skips an asset until `next_change`: before it, the clock alone changes no outcome."""
    times = [T0]
    for gap in intervals:
        times.append(times[-1] + gap)
    now = times[-1] + intervals[0] / 2
    executions = [Execution("run", "STARTED", now - running_for)] if running_for is not None else []
    h = AssetHistory(
        "a",
        spec=AssetSpecData(key="a"),
        registered_at=T0,
        executions=executions,
        materializations=[Materialization(t, f"r{i}", 100) for i, t in enumerate(times)],
    )
    res = resolved(freshness_max_lag=max_lag, duration_max_s=DAY / 2)
    before = {r.check: r.outcome for r in evaluate(h, res, now, {})}
    due = next_change(h, res, now)
    horizon = due if due is not None else now + 30 * DAY
    for offset in offsets:
        later = now + (horizon - now) * offset * 0.999
        assert {r.check: r.outcome for r in evaluate(h, res, later, {})} == before
