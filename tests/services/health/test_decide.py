"""The health transition, pure: previous state + new results → decision; no Redis, no SQLite."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from libs.common.events import CHECK_NAMES, CheckName, CheckResult, HealthStatus
from services.health.decide import (
    HealthState,
    Subject,
    Trigger,
    decide,
    health_status,
    reasons_of,
    signature,
)

T0 = 1_780_000_000.0
SUBJECT = Subject(key="a", has_data=True, owners=("team:data",), downstream=("b",), group="sales")


def results(**outcomes: str) -> list[CheckResult]:
    """Every check, passed unless named: `results(execution_status="error")`."""
    return [
        CheckResult(
            check=name,
            outcome=outcomes.get(name, "passed"),  # type: ignore[arg-type]
            reason=f"{name} says so",
        )
        for name in CHECK_NAMES
    ]


outcome = st.sampled_from(["passed", "warn", "error"])
result_sets = st.fixed_dictionaries({name.value: outcome for name in CheckName}).map(lambda o: results(**o))


def test_first_failure_publishes_with_everything_a_consumer_needs() -> None:
    d = decide(HealthState(), results(execution_status="error"), T0, SUBJECT, Trigger.EVENTS)
    assert d.changed and d.status is HealthStatus.FAILED
    assert d.event is not None
    data = d.event.data
    assert (data.previous_status, data.status, data.transition) == ("UNKNOWN", "FAILED", 1)
    assert data.changed_checks == ["execution_status"]
    assert data.owners == ["team:data"] and data.downstream == ["b"] and data.group == "sales"
    assert [c.check for c in data.checks] == list(CHECK_NAMES)
    assert data.reasons == ["execution_status (error): execution_status says so"]
    assert d.event.occurred_at.timestamp() == T0 == data.evaluated_at.timestamp()
    assert d.state == HealthState(
        HealthStatus.FAILED,
        "FAILED|execution_status=error",
        1,
        {c: r.outcome for c, r in zip(CHECK_NAMES, d.results, strict=True)},
        stored=True,
    )


def test_same_signature_publishes_nothing_new_reason_text_included() -> None:
    first = decide(HealthState(), results(freshness="warn"), T0, SUBJECT, Trigger.EVENTS)
    reworded = [r.model_copy(update={"reason": "another text"}) for r in first.results]
    again = decide(first.state, reworded, T0 + 60, SUBJECT, Trigger.EVENTS)
    assert not again.changed and again.state.transitions == 1
    assert again.report == tuple(reworded)  # new facts: every check reported to Dagster
    by_clock = decide(first.state, reworded, T0 + 60, SUBJECT, Trigger.CLOCK)
    assert by_clock.report == ()  # the periodic pass reports only what changed


def test_a_second_failing_check_while_failed_publishes() -> None:
    first = decide(HealthState(), results(execution_status="error"), T0, SUBJECT, Trigger.EVENTS)
    second = decide(
        first.state, results(execution_status="error", freshness="error"), T0 + 1, SUBJECT, Trigger.CLOCK
    )
    assert second.event is not None
    assert (second.event.data.previous_status, second.event.data.status) == ("FAILED", "FAILED")
    assert second.event.data.changed_checks == ["freshness"] and second.event.data.transition == 2
    assert second.report == tuple(second.results)  # a change is reported whatever the trigger


def test_event_ids_differ_by_time_for_a_rebuilt_store() -> None:
    a = decide(HealthState(), results(execution_status="error"), T0, SUBJECT, Trigger.EVENTS)
    b = decide(HealthState(), results(execution_status="error"), T0 + 1, SUBJECT, Trigger.EVENTS)
    again = decide(HealthState(), results(execution_status="error"), T0, SUBJECT, Trigger.EVENTS)
    assert a.event is not None and b.event is not None and again.event is not None
    assert a.event.id != b.event.id and a.event.id == again.event.id


def test_retired_and_empty_assets() -> None:
    retired = Subject(key="a", has_data=True, retired=True)
    d = decide(
        HealthState(HealthStatus.FAILED, "FAILED|execution_status=error", 3),
        results(),
        T0,
        retired,
        Trigger.EVENTS,
    )
    assert d.status is HealthStatus.UNKNOWN and d.reasons == ["asset retired"] and d.event is not None
    empty = decide(HealthState(), results(), T0, Subject(key="a", has_data=False), Trigger.EVENTS)
    assert empty.status is HealthStatus.UNKNOWN and not empty.changed
    assert empty.reasons == ["no run or materialization on record yet"]


def test_health_status_mapping() -> None:
    assert health_status(results(), has_data=True, retired=False) == "HEALTHY"
    assert health_status(results(volume_anomaly="warn"), has_data=True, retired=False) == "WARNING"
    assert (
        health_status(results(volume_anomaly="error", freshness="warn"), has_data=False, retired=False)
        == "DEGRADED"
    )
    assert health_status(results(execution_status="error"), has_data=True, retired=False) == "FAILED"
    assert reasons_of(results(freshness="warn", schema_drift="error"), HealthStatus.DEGRADED, retired=False)[
        0
    ].startswith("schema_drift (error)")


@given(
    st.lists(result_sets, min_size=1, max_size=30),
    st.lists(st.sampled_from(list(Trigger)), min_size=30, max_size=30),
)
def test_events_exactly_on_signature_changes(
    sequence: list[list[CheckResult]], triggers: list[Trigger]
) -> None:
    state = HealthState()
    events = []
    for i, (rs, trigger) in enumerate(zip(sequence, triggers, strict=False)):
        d = decide(state, rs, T0 + i, SUBJECT, trigger)
        assert d.changed == (signature(d.status, rs) != state.signature)
        assert d.status == health_status(rs, has_data=True, retired=False)
        assert d.state.signature == d.signature == signature(d.status, rs)
        assert list(d.report) == (rs if d.changed or trigger is Trigger.EVENTS else [])
        if d.event is not None:
            data = d.event.data
            assert data.previous_status == state.status
            assert data.changed_checks == [
                r.check for r in rs if state.outcomes.get(r.check, "passed") != r.outcome
            ]
            assert data.changed_checks or data.status != data.previous_status
            events.append(d.event)
        # deciding again on the same results is a fixed point: nothing new to publish
        assert not decide(d.state, rs, T0 + i + 0.5, SUBJECT, Trigger.CLOCK).changed
        state = d.state
    assert [e.data.transition for e in events] == list(range(1, len(events) + 1))
    assert len({e.id for e in events}) == len(events)
    for before, after in itertools.pairwise(events):
        assert after.data.previous_status == before.data.status
        assert signature(after.data.status, after.data.checks) != signature(
            before.data.status, before.data.checks
        )


@given(result_sets, st.booleans(), st.booleans())
def test_decide_is_pure(rs: list[CheckResult], has_data: bool, retired: bool) -> None:
    subject = Subject(key="k", has_data=has_data, retired=retired)
    previous = HealthState(
        HealthStatus.WARNING, "WARNING|freshness=warn", 4, {"freshness": "warn"}, stored=True
    )
    one = decide(previous, rs, T0, subject, Trigger.EVENTS)
    two = decide(previous, rs, T0, subject, Trigger.EVENTS)
    assert one == two
    assert previous == HealthState(
        HealthStatus.WARNING, "WARNING|freshness=warn", 4, {"freshness": "warn"}, stored=True
    )


def test_a_replayed_evaluation_is_marked_and_the_first_live_one_confirms_what_fails() -> None:
    failing = results(execution_status="error")
    replayed = decide(HealthState(), failing, T0, SUBJECT, Trigger.EVENTS, replay=True)
    assert replayed.event is not None and replayed.event.data.replay and replayed.state.replayed
    again = decide(replayed.state, failing, T0 + 60, SUBJECT, Trigger.EVENTS, replay=True)
    assert again.event is None and again.state.replayed  # unchanged while replaying: nothing new
    live = decide(again.state, failing, T0 + 120, SUBJECT, Trigger.EVENTS)
    assert live.event is not None and not live.event.data.replay  # the confirmation the alerts announce
    assert live.event.data.previous_status == live.event.data.status == "FAILED"
    assert not live.state.replayed
    assert decide(live.state, failing, T0 + 180, SUBJECT, Trigger.EVENTS).event is None


def test_a_healthy_replayed_asset_needs_no_confirmation() -> None:
    replayed = decide(HealthState(), results(), T0, SUBJECT, Trigger.EVENTS, replay=True)
    live = decide(replayed.state, results(), T0 + 60, SUBJECT, Trigger.CLOCK)
    assert live.event is None and not live.state.replayed


@given(st.lists(st.tuples(result_sets, st.booleans()), min_size=1, max_size=12))
def test_every_live_evaluation_after_a_replay_leaves_failing_checks_announced_live(
    steps: list[tuple[list[CheckResult], bool]],
) -> None:
    """Whatever mix of replayed and live evaluations: after a live one, the last published event is live
    whenever something fails (so the alerts can announce the caught-up state)."""
    state = HealthState()
    last_replay: bool | None = None
    for n, (res, replay) in enumerate(steps):
        d = decide(state, res, T0 + n, SUBJECT, Trigger.EVENTS, replay=replay)
        if d.event is not None:
            last_replay = d.event.data.replay
        state = d.state
        if not replay and "=" in d.signature:
            assert last_replay is False
