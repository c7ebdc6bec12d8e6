"""The alert state machine: examples, then hypothesis over arbitrary sequences of inputs and clock ticks."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from services.alerts.lifecycle import (
    Ack,
    AlertState,
    Input,
    LifecycleConfig,
    Notice,
    Observe,
    Silence,
    Step,
    Tick,
    Unsilence,
    next_due,
    step,
)

CFG = LifecycleConfig(group_wait_s=0.0, flap_window_s=300.0, repeat_interval_s=3600.0)


def run(inputs: list[tuple[float, Input]], config: LifecycleConfig = CFG) -> tuple[AlertState, list[Step]]:
    state = AlertState(fingerprint="fp")
    steps = []
    for now, inp in inputs:
        result = step(state, inp, now, config)
        steps.append(result)
        state = result.state
    return state, steps


def kinds(steps: list[Step]) -> list[str]:
    return [n.kind for s in steps for n in s.notices]


def fail(at: float, severity: str = "error") -> Observe:
    return Observe(firing=True, at=at, severity=severity, summary="row count 0 < 100", values={"rows": 0})  # type: ignore[arg-type]


def ok(at: float) -> Observe:
    return Observe(firing=False, at=at, summary="passed")


def test_fires_at_once_and_resolves() -> None:
    state, steps = run([(0, fail(0)), (10, fail(10)), (20, ok(20))])
    assert kinds(steps) == ["firing", "resolved"]
    assert steps[0].notices[0].values == {"rows": 0}
    assert not state.firing and state.incident == 1
    assert [h.event for s in steps for h in s.history] == ["firing", "announced", "resolved", "announced"]


def test_group_wait_swallows_a_blip() -> None:
    cfg = LifecycleConfig(group_wait_s=30, flap_window_s=0, repeat_interval_s=3600)
    _, steps = run([(0, fail(0)), (10, Tick()), (20, ok(20)), (100, Tick())], cfg)
    assert kinds(steps) == []
    _, steps = run([(0, fail(0)), (10, Tick()), (31, Tick()), (40, ok(40))], cfg)
    assert kinds(steps) == ["firing", "resolved"]


def test_flapping_check_notifies_once_per_window() -> None:
    inputs: list[tuple[float, Input]] = []
    for i in range(10):  # flips every 10 s for 200 s
        inputs += [(i * 20, fail(i * 20)), (i * 20 + 10, ok(i * 20 + 10))]
    inputs += [(400, fail(400)), (601, Tick())]
    _, steps = run(inputs)
    # first pair at once, then nothing until the flap window since the resolved notice has passed
    assert kinds(steps) == ["firing", "resolved", "firing"]
    assert [n.at for s in steps for n in s.notices] == [0, 10, 400]


def test_repeat_until_acknowledged() -> None:
    _, steps = run(
        [(0, fail(0)), (3599, Tick()), (3600, Tick()), (7300, Ack("ann", "on it")), (20000, Tick())]
    )
    assert kinds(steps) == ["firing", "repeat"]


def test_escalation_and_silence() -> None:
    _, steps = run(
        [(0, fail(0, "warning")), (5, fail(5, "critical")), (6, fail(6, "warning")), (7, fail(7, "critical"))]
    )
    assert kinds(steps) == ["firing", "escalated"]
    _, steps = run(
        [(0, Silence("s1", 100, "bob")), (1, fail(1)), (50, Tick()), (100, Tick()), (200, ok(200))]
    )
    assert kinds(steps) == ["firing", "resolved"]
    assert [n.at for s in steps for n in s.notices] == [100, 200]


def test_silenced_incident_that_resolves_sends_nothing_but_an_announced_one_resolves() -> None:
    _, steps = run([(0, Silence("s1", 100, "bob")), (1, fail(1)), (2, ok(2)), (150, Tick())])
    assert kinds(steps) == []
    _, steps = run([(0, fail(0)), (1, Silence("s1", 100, "bob")), (2, ok(2))])
    assert kinds(steps) == ["firing", "resolved"]


def test_unsilence_announces_and_stale_observations_are_ignored() -> None:
    _, steps = run([(0, Silence("s1", 1000, "bob")), (1, fail(1)), (5, Unsilence("s1", "bob"))])
    assert kinds(steps) == ["firing"]
    state, steps = run([(0, fail(10)), (1, ok(5))])
    assert state.firing and kinds(steps) == ["firing"]


def test_state_round_trips_through_dict() -> None:
    state, _ = run([(0, fail(0)), (1, Ack("ann"))])
    assert AlertState.from_dict(state.to_dict()) == state


# -- properties --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    dt: float
    inp: Input


severities = st.sampled_from(["warning", "error", "critical"])
ops = st.one_of(
    st.builds(
        lambda dt, f, sev: Op(dt, Observe(firing=f, at=0, severity=sev)),
        st.floats(0, 400),
        st.booleans(),
        severities,
    ),
    st.builds(lambda dt: Op(dt, Tick()), st.floats(0, 5000)),
    st.builds(lambda dt: Op(dt, Ack("ann", "looking")), st.floats(0, 100)),
    st.builds(
        lambda dt, sid, length: Op(dt, Silence(sid, length, "bob")),
        st.floats(0, 100),
        st.sampled_from(["s1", "s2"]),
        st.floats(1, 2000),
    ),
    st.builds(
        lambda dt, sid: Op(dt, Unsilence(sid, "bob")), st.floats(0, 100), st.sampled_from(["s1", "s2"])
    ),
)
configs = st.builds(
    LifecycleConfig,
    group_wait_s=st.sampled_from([0.0, 30.0]),
    flap_window_s=st.sampled_from([0.0, 300.0]),
    repeat_interval_s=st.sampled_from([600.0, 3600.0]),
)


def play(
    sequence: list[Op], config: LifecycleConfig
) -> list[tuple[AlertState, AlertState, Input, float, Step]]:
    state = AlertState(fingerprint="fp")
    now = 1_000_000.0
    trace = []
    for op in sequence:
        now += op.dt
        inp = op.inp
        if isinstance(inp, Observe):
            inp = Observe(firing=inp.firing, at=now, severity=inp.severity, summary="s")
        elif isinstance(inp, Silence):
            inp = Silence(inp.silence_id, now + inp.until, inp.by)
        result = step(state, inp, now, config)
        trace.append((state, result.state, inp, now, result))
        state = result.state
    return trace


@settings(max_examples=400, deadline=None)
@given(st.lists(ops, max_size=60), configs)
def test_at_most_one_notice_per_transition_and_well_formed_incidents(
    sequence: list[Op], config: LifecycleConfig
) -> None:
    announced: dict[int, list[Notice]] = {}
    for before, after, _inp, now, result in play(sequence, config):
        assert len(result.notices) <= 1
        for notice in result.notices:
            assert notice.seq == before.notices + 1
            seen = announced.setdefault(notice.incident, [])
            if notice.kind == "firing":
                assert not seen, "an incident is announced as firing once"
                # never while silenced, never before the waits
                assert after.silenced_until is None
                assert now >= (after.active_since or 0) + config.group_wait_s
                if before.last_resolved_notice_at is not None:
                    assert now >= before.last_resolved_notice_at + config.flap_window_s
            elif notice.kind in ("repeat", "escalated"):
                assert seen and seen[-1].kind != "resolved"
                assert after.silenced_until is None
                if notice.kind == "repeat":
                    assert before.acked_by is None
                    assert now - seen[-1].at >= config.repeat_interval_s
            else:
                assert seen and seen[-1].kind != "resolved", "resolved only follows a firing notice"
            seen.append(notice)
        # a resolved notice for every announced incident that resolves, in the same step
        if before.firing and not after.firing:
            was_announced = before.notified == "firing"
            assert [n.kind for n in result.notices] == (["resolved"] if was_announced else [])


@settings(max_examples=200, deadline=None)
@given(st.lists(ops, max_size=40), configs)
def test_a_firing_alert_is_announced_once_nothing_holds_it(
    sequence: list[Op], config: LifecycleConfig
) -> None:
    trace = play(sequence, config)
    state = trace[-1][1] if trace else AlertState(fingerprint="fp")
    now = trace[-1][3] if trace else 0.0
    # lift any silence, then let the clock pass every wait
    for sid in ("s1", "s2"):
        state = step(state, Unsilence(sid, "bob"), now, config).state
    due = next_due(state, config)
    later = max(now, due or now) + 1
    result = step(state, Tick(), later, config)
    final = result.state
    if final.firing:
        assert final.notified == "firing"
    else:
        assert final.notified in (None, "resolved")


def test_replayed_history_announces_nothing_until_a_live_observation_confirms_it() -> None:
    state, steps = run(
        [
            (
                1000.0,
                Observe(firing=True, at=10.0, replay=True),
            ),  # a failure of the past, read during a catch-up
            (1001.0, Observe(firing=False, at=20.0, replay=True)),  # the backlog shows it recovered
            (1002.0, Observe(firing=True, at=30.0, replay=True)),  # ... and failing again
            (1003.0, Tick()),
        ]
    )
    assert kinds(steps) == [] and state.firing and state.held and state.active_since == 30.0
    assert next_due(state, CFG) is None
    # The health service's confirmation once caught up: announced at once (no flap window from the past).
    state, steps = run(
        [
            (1000.0, Observe(firing=True, at=10.0, replay=True)),
            (1001.0, Observe(firing=False, at=20.0, replay=True)),
            (1002.0, Observe(firing=True, at=30.0, replay=True)),
            (1010.0, Observe(firing=True, at=1009.0)),
        ]
    )
    assert kinds(steps) == ["firing"] and not state.held


def test_an_announced_alert_that_the_backlog_resolves_is_resolved_without_starting_a_flap_window() -> None:
    state, steps = run(
        [
            (0.0, fail(0.0)),  # announced live
            (
                5000.0,
                Observe(firing=False, at=100.0, replay=True),
            ),  # the backlog after an outage: it recovered
            (5001.0, Observe(firing=True, at=200.0, replay=True)),  # and failed again
            (5002.0, Observe(firing=True, at=5001.0)),  # confirmed once caught up
        ]
    )
    assert kinds(steps) == ["firing", "resolved", "firing"]
    assert state.active_since == 200.0


def test_a_state_read_while_behind_is_held_until_the_worker_catches_up() -> None:
    from services.alerts.lifecycle import Release

    state, steps = run(
        [
            (1000.0, Observe(firing=True, at=10.0, behind=True)),
            (
                1001.0,
                Observe(firing=False, at=20.0, behind=True),
            ),  # superseded within the backlog: nothing sent
            (1002.0, Observe(firing=True, at=30.0, behind=True)),
            (1003.0, Tick()),
        ]
    )
    assert kinds(steps) == [] and state.held == "backlog" and state.active_since == 30.0
    state, steps = run([(1000.0, Observe(firing=True, at=10.0, behind=True)), (1004.0, Release())])
    assert kinds(steps) == ["firing"] and state.held is None
    # A replayed state is not released by this worker catching up: it waits for health's confirmation.
    state, steps = run([(1000.0, Observe(firing=True, at=10.0, replay=True)), (1004.0, Release())])
    assert kinds(steps) == [] and state.held == "replay"
