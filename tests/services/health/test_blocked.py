"""Skipped is not failed: an asset a failed run did not materialize because an upstream failed in that run
is BLOCKED (execution_status warn, dependencies naming the cause), never FAILED; pure, no store."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from libs.common.events import AssetSpecData, HealthStatus
from services.health.decide import health_status
from services.health.evaluators import (
    BLOCKED,
    blocked_by,
    blocking_run,
    dependencies,
    evaluate,
    execution_status,
    run_outcomes,
    upstream_among,
)
from services.health.model import AssetHistory, Execution, Failure, Materialization, UpstreamState
from services.health.record import apply, facts_of, merge
from services.health.settings import HealthSettings, HealthThresholds
from services.health.thresholds import resolve

T0 = 1_780_000_000.0
TH = HealthThresholds()


def failed_run(
    run_id: str, at: float, failed: tuple[str, ...] | None, error: str = "root raised"
) -> Execution:
    return Execution(run_id, "FAILURE", at, at + 10, 10.0, error, failed_assets=failed)


def ok_run(run_id: str, at: float) -> tuple[Execution, Materialization]:
    return Execution(run_id, "SUCCESS", at, at + 10, 10.0), Materialization(at + 5, run_id, 10)


def status_of(history: AssetHistory, lineage: frozenset[str] | None = None) -> HealthStatus:
    results = evaluate(history, resolve(HealthSettings(), history.spec), T0 + 1000, {}, lineage=lineage)
    return health_status(results, has_data=history.has_data, retired=False)


def test_an_asset_the_run_skipped_is_blocked_not_failed() -> None:
    h = AssetHistory("child", executions=[failed_run("abc12345-run", T0, ("root",))])
    r = execution_status(h, TH)
    assert r.outcome == "warn"
    assert r.reason.startswith("not materialized in run abc12345 at ")
    assert "blocked by the failure of upstream root" in r.reason and "no success on record" in r.reason
    assert r.values["blocked_by"] == ["root"] and r.values["blocked_run_id"] == "abc12345-run"
    assert r.values["last_status"] == BLOCKED and r.values["consecutive"] == 1
    assert status_of(h) == HealthStatus.WARNING


def test_an_asset_that_failed_on_its_own_is_failed_as_before() -> None:
    own = AssetHistory("root", executions=[failed_run("r1", T0, ("root",))])
    assert execution_status(own, TH).outcome == "error" and status_of(own) == HealthStatus.FAILED
    # An older producer does not say which assets failed: every unmaterialized asset of the run failed.
    unsaid = AssetHistory("child", executions=[failed_run("r1", T0, None)])
    assert execution_status(unsaid, TH).outcome == "error"
    # A failed materialization received for (run, asset) is an own failure whatever the run event says.
    recorded = AssetHistory(
        "child", executions=[failed_run("r1", T0, ("root",))], failures=[Failure(T0 + 5, "r1", "disk full")]
    )
    r = execution_status(recorded, TH)
    assert r.outcome == "error" and "disk full" in r.reason and "blocked_by" not in r.values
    # Materialized before the run failed elsewhere: a success.
    _, mat = ok_run("r1", T0)
    done = AssetHistory("child", executions=[failed_run("r1", T0, ("root",))], materializations=[mat])
    assert execution_status(done, TH).outcome == "passed" and blocking_run(done) is None


def test_blocked_by_names_the_failed_assets_upstream_of_it_else_all_of_the_runs() -> None:
    h = AssetHistory("grandchild", executions=[failed_run("r1", T0, ("other", "root"))])
    assert execution_status(h, TH, frozenset({"root"})).values["blocked_by"] == ["root"]
    assert execution_status(h, TH, None).values["blocked_by"] == ["other", "root"]  # lineage unknown
    # None of them is known to be upstream: all of them.
    assert execution_status(h, TH, frozenset()).values["blocked_by"] == ["other", "root"]
    assert blocked_by(("b", "a"), {"a"}) == ["a"] and blocked_by(("b", "a"), None) == ["a", "b"]
    # A failing step that is no asset's (the run names no failed asset) still blocks, and says so.
    empty = AssetHistory("x", executions=[failed_run("r1", T0, ())])
    r = execution_status(empty, TH)
    assert r.outcome == "warn" and r.values["blocked_by"] == [] and "an upstream failure" in r.reason


def test_blocked_runs_count_in_no_streak_and_keep_the_last_success() -> None:
    run0, mat0 = ok_run("r0", T0)
    h = AssetHistory(
        "child",
        executions=[run0, failed_run("r1", T0 + 100, ("root",)), failed_run("r2", T0 + 200, ("root",))],
        materializations=[mat0],
    )
    r = execution_status(h, TH)
    assert r.outcome == "warn" and r.values["consecutive"] == 2 and "(2 runs in a row)" in r.reason
    assert r.values["last_success_at"] is not None and "last success" in r.reason
    # Own failures around a blocked run make a streak of two, not three, and not broken by the block.
    h = AssetHistory(
        "child",
        executions=[
            failed_run("f1", T0, ("child",)),
            failed_run("b1", T0 + 100, ("root",)),
            failed_run("f2", T0 + 200, ("child",)),
        ],
    )
    r = execution_status(h, TH)
    assert r.outcome == "error" and r.values["consecutive"] == 2 and r.values["last_run_id"] == "f2"


def test_an_own_failure_stands_while_later_runs_only_skip_the_asset() -> None:
    h = AssetHistory(
        "child",
        executions=[
            failed_run("f1aaaaaa", T0, ("child",), "KeyError: x"),
            failed_run("b1bbbbbb", T0 + 100, ("root",)),
        ],
    )
    r = execution_status(h, TH, frozenset({"root"}))
    assert r.outcome == "error" and "KeyError: x" in r.reason
    assert "not run since: blocked in run b1bbbbbb by the failure of upstream root" in r.reason
    assert status_of(h) == HealthStatus.FAILED


def test_a_blocked_asset_recovers_when_it_materializes_again() -> None:
    run, mat = ok_run("r2", T0 + 100)
    h = AssetHistory("child", executions=[failed_run("r1", T0, ("root",)), run], materializations=[mat])
    assert execution_status(h, TH).outcome == "passed" and blocking_run(h) is None
    assert [o.status for o in run_outcomes(h)] == [BLOCKED, "SUCCESS"]


def spec(key: str, upstream: list[str]) -> AssetSpecData:
    return AssetSpecData(key=key, upstream=upstream)


def test_dependencies_carry_the_cause_of_the_block() -> None:
    h = AssetHistory(
        "grandchild",
        spec=spec("grandchild", ["child_a", "child_b"]),
        executions=[failed_run("abc12345", T0, ("root",))],
    )
    ups = {k: UpstreamState(k, registered=True, status=HealthStatus.WARNING) for k in ("child_a", "child_b")}
    r = dependencies(h, ups, frozenset({"root"}))
    assert r.outcome == "warn" and r.values["failed_upstream"] == ["root"]
    assert "blocked in run abc12345 by the failure of upstream root" in r.reason
    # The direct child of the failed root names it once, though the root's own execution failed too.
    child = AssetHistory(
        "child_a", spec=spec("child_a", ["root"]), executions=[failed_run("abc12345", T0, ("root",))]
    )
    failed_root = {"root": UpstreamState("root", registered=True, execution_failed=True)}
    r = dependencies(child, failed_root, frozenset({"root"}))
    assert r.values["failed_upstream"] == ["root"] and r.reason.count("root") == 1
    # No definition on record: the cause is still carried.
    bare = AssetHistory("x", executions=[failed_run("abc12345", T0, ("root",))])
    r = dependencies(bare, {})
    assert r.outcome == "warn" and r.values["failed_upstream"] == ["root"]
    # A failed direct upstream outside any blocked run is a failed upstream too; a healthy one is not.
    later = AssetHistory("child_a", spec=spec("child_a", ["root"]))
    r = dependencies(later, failed_root)
    assert r.outcome == "warn" and r.values["failed_upstream"] == ["root"]
    healthy_root = {"root": UpstreamState("root", registered=True)}
    assert "failed_upstream" not in dependencies(later, healthy_root).values


def test_upstream_among_follows_the_lineage_at_any_depth_and_survives_cycles() -> None:
    lineage = {
        "grandchild": ["child_a", "child_b"],
        "child_a": ["root"],
        "child_b": ["root", "child_b"],
        "root": ["grandchild"],
    }  # a cycle back to the start
    assert upstream_among("grandchild", ("root", "elsewhere"), lineage.get) == {"root"}
    assert upstream_among("child_a", ("child_b",), lineage.get) == {"child_b"}  # through the cycle
    assert upstream_among("unknown", ("root",), lineage.get) == frozenset()
    assert upstream_among("grandchild", ("root",), lineage.get, limit=2) == frozenset()  # bounded


def test_the_run_event_says_which_assets_failed_and_merging_keeps_it(ev: Any) -> None:
    event = ev.run("r1", "FAILURE", ["root", "child"], start=T0, end=T0 + 10)
    event = event.model_copy(update={"data": event.data.model_copy(update={"failed_asset_keys": ["root"]})})
    facts = facts_of([ev.run("r1", "STARTED", ["root", "child"], start=T0), event])
    assert {r.key: r.execution.failed_assets for r in facts.runs} == {"root": ("root",), "child": ("root",)}
    histories = {k: AssetHistory(k) for k in ("root", "child")}
    apply(facts, histories, limit=10)
    apply(facts_of([ev.run("r1", "STARTED", ["root", "child"], start=T0)]), histories, limit=10)  # late start
    assert histories["child"].executions[0].failed_assets == ("root",)
    assert execution_status(histories["child"], TH).outcome == "warn"
    assert execution_status(histories["root"], TH).outcome == "error"
    said, unsaid = failed_run("r", T0, ("a",)), failed_run("r", T0, None)
    assert merge(said, unsaid).failed_assets == ("a",) and merge(unsaid, said).failed_assets == ("a",)


# Any mix of runs, each blocked by another asset, failed on its own, succeeded or canceled.
KINDS = st.sampled_from(["blocked", "own", "success", "canceled", "unsaid"])


def history_of(kinds: list[str]) -> AssetHistory:
    h = AssetHistory("child")
    for i, kind in enumerate(kinds):
        at = T0 + i * 100
        if kind == "success":
            run, mat = ok_run(f"r{i}", at)
            h.executions.append(run)
            h.materializations.append(mat)
        elif kind == "canceled":
            h.executions.append(Execution(f"r{i}", "CANCELED", at, at + 10))
        else:
            failed = {"blocked": ("root",), "own": ("child", "root"), "unsaid": None}[kind]
            h.executions.append(failed_run(f"r{i}", at, failed))
    return h


@given(st.lists(st.sampled_from(["blocked"]), min_size=1, max_size=20))
def test_a_blocked_only_history_is_never_failed(kinds: list[str]) -> None:
    h = history_of(kinds)
    assert status_of(h) == HealthStatus.WARNING
    assert status_of(h, frozenset({"root"})) == HealthStatus.WARNING


@given(st.lists(KINDS, min_size=1, max_size=20))
def test_failed_exactly_when_the_last_run_that_ran_the_asset_failed(kinds: list[str]) -> None:
    h = history_of(kinds)
    ran = [k for k in kinds if k != "blocked"]
    own_failure = bool(ran) and ran[-1] in ("own", "unsaid")
    result = execution_status(h, TH)
    assert (status_of(h) == HealthStatus.FAILED) == own_failure
    assert (result.outcome == "error") == own_failure
    if kinds[-1] == "blocked" and not own_failure:
        assert result.outcome == "warn" and result.values["blocked_by"] == ["root"]
        assert dependencies(h, {}).values["failed_upstream"] == ["root"]
    if own_failure:  # the streak counts the asset's own failures only
        streak = 0
        for k in reversed(ran):
            if k not in ("own", "unsaid"):
                break
            streak += 1
        assert result.values["consecutive"] == streak
