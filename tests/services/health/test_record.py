"""The record step, pure: events → facts → histories; no Redis, no SQLite."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from services.health.model import AssetHistory, Execution
from services.health.record import apply, facts_of, merge

T0 = 1_780_000_000.0


def histories(*keys: str) -> dict[str, AssetHistory]:
    return {k: AssetHistory(key=k) for k in keys}


def test_only_keeps_the_facts_of_some_assets(ev: Any) -> None:
    facts = facts_of(
        [
            ev.mat("a", T0, rows=1),
            ev.run("r", "SUCCESS", ["a", "b"], start=T0, end=T0 + 1),
            ev.failed("b", "r", T0),
            ev.spec("b"),
        ]
    )
    only_b = facts.only({"b"})
    assert only_b.touched == ["b"] and not only_b.materializations
    assert [r.key for r in only_b.runs] == ["b"] and len(only_b.failures) == 1 and len(only_b.specs) == 1


def test_a_batch_merges_a_runs_start_and_end_per_asset(ev: Any) -> None:
    start = ev.run("r1", "STARTED", ["a", "b"], start=T0)
    end = ev.run("r1", "FAILURE", ["a", "b"], start=T0, end=T0 + 30, error="boom")
    facts = facts_of([start, end, ev.mat("a", T0 + 20, run_id="r1", rows=5)])
    assert facts.touched == ["a", "b"]
    assert [(r.key, r.execution.status, r.execution.duration_s) for r in facts.runs] == [
        ("a", "FAILURE", 30.0),
        ("b", "FAILURE", 30.0),
    ]
    h = histories("a", "b")
    apply(facts, h, limit=100)
    assert [e.status for e in h["a"].executions] == ["FAILURE"] and h["a"].version == 1
    assert [m.row_count for m in h["a"].materializations] == [5]


def test_a_late_start_never_undoes_a_finish_across_batches(ev: Any) -> None:
    h = histories("a")
    apply(facts_of([ev.run("r1", "SUCCESS", ["a"], start=T0, end=T0 + 10)]), h, limit=100)
    apply(facts_of([ev.run("r1", "STARTED", ["a"], start=T0)]), h, limit=100)
    assert [(e.status, e.ended_at) for e in h["a"].executions] == [("SUCCESS", T0 + 10)]
    assert h["a"].version == 2


def test_older_spec_versions_never_replace_newer_ones(ev: Any) -> None:
    h = histories("a")
    apply(facts_of([ev.spec("a", version=2, group="g2"), ev.spec("a", version=1, group="g1")]), h, limit=100)
    assert h["a"].spec is not None and h["a"].spec.group == "g2" and h["a"].spec_version == 2
    apply(facts_of([ev.spec("a", version=1, group="g1")]), h, limit=100)
    assert h["a"].spec.group == "g2"
    apply(facts_of([ev.spec("a", version=3, retired=True, downstream=["b"])]), h, limit=100)
    assert h["a"].retired and h["a"].spec.downstream == ["b"]


def test_histories_keep_the_newest_limit_in_time_order(ev: Any) -> None:
    h = histories("a")
    times = [T0 + i * 60 for i in (5, 1, 9, 3, 7, 0, 8, 2, 6, 4)]
    for t in times:
        apply(facts_of([ev.mat("a", t, rows=1), ev.failed("a", f"f{t}", t)]), h, limit=4)
    assert [m.at for m in h["a"].materializations] == [T0 + i * 60 for i in (6, 7, 8, 9)]
    assert [f.at for f in h["a"].failures] == [T0 + i * 60 for i in (6, 7, 8, 9)]


statuses = st.sampled_from(["STARTED", "SUCCESS", "FAILURE", "CANCELED"])
times = st.one_of(st.none(), st.floats(0, 1e6))
executions = st.builds(
    Execution,
    run_id=st.just("r"),
    status=statuses,
    started_at=times,
    ended_at=times,
    duration_s=times,
    error=st.one_of(st.none(), st.text(max_size=3)),
)


@given(executions, executions, executions)
def test_merge_is_associative(a: Execution, b: Execution, c: Execution) -> None:
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@given(executions, executions)
def test_a_start_after_a_finish_keeps_the_finish(a: Execution, b: Execution) -> None:
    started = Execution("r", "STARTED", b.started_at)
    merged = merge(a, started)
    assert merged.status == a.status and merged.ended_at == a.ended_at
