"""The pure automation evaluators: ticks and heartbeats folded into objects, and the checks judged on them."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.events import (
    AutomationRemoved,
    AutomationRemovedData,
    AutomationTickData,
    AutomationTicked,
    DaemonHeartbeat,
    DaemonHeartbeatData,
    Event,
    PublisherHeartbeat,
    PublisherHeartbeatData,
    RunData,
    RunEvent,
    new_event,
    object_kind_of,
)
from services.health import automation
from services.health.automation import AutomationObject, apply, evaluate, new_object, next_change
from services.health.decide import HealthState, Subject, Trigger, decide
from services.health.settings import AutomationHealthSettings

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z
CFG = AutomationHealthSettings()
_ids = itertools.count(1)


def dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def tick(
    status: str,
    at: float,
    *,
    name: str = "orders_sensor",
    kind: str = "sensor",
    tick_id: int | None = None,
    error: str | None = None,
    **fields: Any,
) -> AutomationTicked:
    tick_id = next(_ids) if tick_id is None else tick_id
    data = AutomationTickData(
        kind=kind,
        name=name,
        code_location="loc",
        status=status,  # type: ignore[arg-type]
        tick_at=dt(at),
        tick_id=tick_id,
        error=error,
        **fields,
    )
    return new_event(
        AutomationTicked,
        "automation.tick",
        identity=f"{tick_id}:{status}",
        data=data,
        source="t",
        occurred_at=dt(at),
    )


def daemon(at: float, daemon_type: str = "SENSOR", errors: list[str] | None = None) -> DaemonHeartbeat:
    data = DaemonHeartbeatData(daemon_type=daemon_type, last_heartbeat_at=dt(at), errors=errors or [])
    return new_event(
        DaemonHeartbeat,
        "automation.daemon_heartbeat",
        identity=f"{daemon_type}:{at}",
        data=data,
        source="t",
        occurred_at=dt(at),
    )


def beat(at: float, interval_s: float = 30.0) -> PublisherHeartbeat:
    data = PublisherHeartbeatData(code_location="loc", tick_at=dt(at), interval_s=interval_s)
    return new_event(
        PublisherHeartbeat,
        "automation.publisher_heartbeat",
        identity=f"loc:{at}",
        data=data,
        source="t",
        occurred_at=dt(at),
    )


def removed(key: str, at: float, reason: str = "gone from its code location") -> AutomationRemoved:
    return new_event(
        AutomationRemoved,
        "automation.removed",
        identity=f"{key}:{at}",
        data=AutomationRemovedData(object_key=key, reason=reason),
        source="t",
        occurred_at=dt(at),
    )


def fold(*events: Event) -> AutomationObject:
    obj = new_object(events[0])
    assert obj is not None
    for e in events:
        obj = apply(obj, e)
    return obj


def outcomes(
    obj: AutomationObject, now: float, daemons: dict[str, AutomationObject] | None = None
) -> dict[str, str]:
    return {r.check: r.outcome for r in evaluate(obj, CFG, now, daemons or {})}


def test_keys_name_kind_location_and_name() -> None:
    assert automation.object_key(tick("SUCCESS", T0)) == "sensor:loc/orders_sensor"
    assert automation.object_key(tick("SUCCESS", T0, kind="schedule", name="daily")) == "schedule:loc/daily"
    assert automation.object_key(daemon(T0)) == "daemon:SENSOR"
    assert automation.object_key(beat(T0)) == "publisher:loc"


def test_a_failing_sensor_is_an_error_naming_streak_and_error_until_a_tick_succeeds() -> None:
    obj = fold(
        tick("SUCCESS", T0),
        tick("FAILURE", T0 + 30, error="KeyError: 'x'"),
        tick("FAILURE", T0 + 60, error="ValueError: bad cursor"),
    )
    (failures,) = [r for r in evaluate(obj, CFG, T0 + 61, {}) if r.check == "tick_failures"]
    assert failures.outcome == "error"
    assert "2 ticks in a row" in failures.reason and "ValueError: bad cursor" in failures.reason
    assert "loc" in failures.reason and failures.values["failed_ticks"] == 2
    assert outcomes(apply(obj, tick("SUCCESS", T0 + 90)), T0 + 91)["tick_failures"] == "passed"
    assert outcomes(apply(obj, tick("SKIPPED", T0 + 90)), T0 + 91)["tick_failures"] == "passed"


def test_a_late_or_repeated_tick_changes_no_streak() -> None:
    failed = fold(tick("FAILURE", T0 + 60, tick_id=7))
    assert apply(failed, tick("SUCCESS", T0)).failed_ticks == 1  # older than the newest tick: history
    assert apply(failed, tick("STARTED", T0 + 60, tick_id=7)).failed_ticks == 1  # its own start, late
    assert apply(failed, tick("FAILURE", T0 + 60, tick_id=7)).failed_ticks == 1  # the same tick again
    started = fold(tick("STARTED", T0 + 90, tick_id=8))
    assert apply(started, tick("FAILURE", T0 + 90, tick_id=8)).failed_ticks == 1  # STARTED, then its end


def test_a_sensor_turned_off_is_not_expected_to_tick() -> None:
    """The publisher sends a sensor's latest tick again, same id and status, when it is turned off or on."""
    obj = fold(tick("FAILURE", T0, tick_id=5, error="boom"))
    off = apply(obj, tick("FAILURE", T0, tick_id=5, error="boom", running=False))
    assert not off.running and off.failed_ticks == 1  # no second failure counted
    assert outcomes(off, T0 + 86400)["stopped"] == "passed"
    on = apply(off, tick("FAILURE", T0, tick_id=5, error="boom", running=True))
    assert on.running and outcomes(on, T0 + 86400)["stopped"] == "error"


def test_a_sensor_stops_after_n_intervals_and_never_before_its_daemon_could_be_judged() -> None:
    obj = fold(tick("SUCCESS", T0, interval_s=60))
    limit = max(3 * 60, CFG.daemon_heartbeat_max_s + 2 * 60 + automation.TICK_SLACK_S)
    assert outcomes(obj, T0 + limit)["stopped"] == "passed"
    assert outcomes(obj, T0 + limit + 1)["stopped"] == "error"
    assert next_change(obj, CFG, T0 + 5) == T0 + limit + 0.001
    assert next_change(obj, CFG, T0 + limit + 1) is None  # late: only a tick changes it now
    assert outcomes(fold(tick("SUCCESS", T0, running=False)), T0 + 10 * limit)["stopped"] == "passed"


def test_a_stopped_sensor_names_its_silent_daemon_as_the_cause() -> None:
    obj = fold(tick("SUCCESS", T0))
    sensor_daemon = fold(daemon(T0 - 10))
    now = T0 + 1000
    results = {r.check: r for r in evaluate(obj, CFG, now, {"daemon:SENSOR": sensor_daemon})}
    assert results["stopped"].values["blocked_by"] == "daemon:SENSOR"
    assert "SENSOR daemon" in results["stopped"].reason
    assert outcomes(sensor_daemon, now) == {"daemon_heartbeat": "error"}


def test_a_sensor_is_not_late_between_its_daemons_return_and_its_first_tick() -> None:
    """Seen with a real daemon restarted (tests/e2e/test_automation_daemon.py): the publisher ticks first and
    publishes the daemon's fresh heartbeat; the sensor's limit passing before its own first tick made it late
    with no silent daemon to name, one more incident, resolved seconds later."""
    obj = fold(tick("SUCCESS", T0))
    limit = automation.stopped_limit(obj, CFG)
    back = T0 + limit - 5  # the daemon returns just before the sensor's limit passes
    sensor_daemon = apply(fold(daemon(T0 - 10)), daemon(back))
    assert sensor_daemon.resumed_at == back
    daemons = {"daemon:SENSOR": sensor_daemon}

    def stopped(at: float) -> str:
        return next(r.outcome for r in evaluate(obj, CFG, at, daemons) if r.check == "stopped")

    assert stopped(T0 + limit + 10) == "passed"
    assert next_change(obj, CFG, T0 + limit + 10, daemons=daemons) == back + limit + 0.001
    assert stopped(back + limit + 1) == "error"  # it never ticks in the daemon that came back: late again
    # Heartbeats in step (Dagster's every 30 s, a little late under load) are no return; a short outage is.
    assert apply(sensor_daemon, daemon(back + 40)).resumed_at == back
    assert apply(sensor_daemon, daemon(back + 52)).resumed_at == back + 52


def test_the_publishing_sensor_is_never_late_before_its_daemon() -> None:
    """Seen with a real daemon stopped (tests/e2e/test_automation_daemon.py): the publisher publishes its own
    tick on its next one, so its last tick on record is a tick older than the stop, while the daemon's last
    heartbeat may be the stop's moment; the sensor's limit passed half a second before the daemon's, and it
    opened an incident of its own naming no cause."""
    interval = 1.0
    stop = T0 + 100
    last_tick = stop - 2 * interval - 0.5  # its tick before the one it was publishing when the daemon stopped
    obj = fold(tick("SUCCESS", last_tick, name="ams_event_publisher", interval_s=interval))
    sensor_daemon = fold(daemon(stop - 0.1))  # a heartbeat written just before the stop
    daemons = {"daemon:SENSOR": sensor_daemon}
    late_at = next_change(obj, CFG, stop, daemons=daemons)
    assert late_at is not None and late_at > sensor_daemon.last_at + CFG.daemon_heartbeat_max_s  # type: ignore[operator]
    results = {r.check: r for r in evaluate(obj, CFG, late_at, daemons)}
    assert results["stopped"].outcome == "error"
    assert results["stopped"].values["blocked_by"] == "daemon:SENSOR"


def test_a_schedule_is_stopped_past_its_next_cron_tick_plus_the_grace() -> None:
    hourly = "0 * * * *"
    top = 1_780_002_000.0  # 2026-05-28T21:00:00Z
    obj = fold(tick("SUCCESS", top + 2, kind="schedule", name="hourly", cron_schedule=hourly))
    grace = max(CFG.schedule_grace_s, CFG.daemon_heartbeat_max_s)
    assert outcomes(obj, top + 3600 + grace - 1)["stopped"] == "passed"
    late = next(r for r in evaluate(obj, CFG, top + 3600 + grace + 1, {}) if r.check == "stopped")
    assert late.outcome == "error" and "missed its tick of 2026-05-28 22:00:00Z" in late.reason
    assert next_change(obj, CFG, top + 10) == top + 3600 + grace + 0.001
    assert (
        outcomes(
            apply(obj, tick("SUCCESS", top + 3601, kind="schedule", name="hourly", cron_schedule=hourly)),
            top + 3600 + grace + 1,
        )["stopped"]
        == "passed"
    )


def test_daemon_heartbeat_limit_and_reported_errors() -> None:
    obj = fold(daemon(T0))
    assert outcomes(obj, T0 + CFG.daemon_heartbeat_max_s) == {"daemon_heartbeat": "passed"}
    assert outcomes(obj, T0 + CFG.daemon_heartbeat_max_s + 1) == {"daemon_heartbeat": "error"}
    assert outcomes(fold(daemon(T0, errors=["boom"])), T0 + 1) == {"daemon_heartbeat": "warn"}
    assert apply(obj, daemon(T0 - 50)).last_at == T0  # an older heartbeat never moves it back


def test_publisher_heartbeat_lateness() -> None:
    obj = fold(beat(T0, interval_s=30))
    limit = automation.publisher_limit(obj, CFG)
    assert limit >= max(3 * 30, CFG.publisher_min_s)
    assert outcomes(obj, T0 + limit) == {"publisher_heartbeat": "passed"}
    (late,) = evaluate(obj, CFG, T0 + limit + 1, {})
    assert late.outcome == "error" and "not published" in late.reason
    assert next_change(obj, CFG, T0) == T0 + limit + 0.001


def test_failing_automation_checks_make_the_object_failed_and_publish_its_kind_and_tags() -> None:
    obj = fold(tick("FAILURE", T0, error="boom", owners=["team:data"], tags={"tier": "1"}))
    subject = automation.subject_of(obj)
    d = decide(HealthState(), evaluate(obj, CFG, T0 + 1, {}), T0 + 1, subject, Trigger.EVENTS)
    assert d.status == "FAILED" and d.event is not None and d.report == ()
    assert d.event.data.object_kind == "sensor" and d.event.data.tags == {"tier": "1"}
    assert d.event.data.owners == ["team:data"] and d.event.data.code_location == "loc"


def test_stored_form_round_trips() -> None:
    obj = fold(tick("FAILURE", T0, error="e", owners=["a"], tags={"k": "v"}), daemon(T0))
    assert automation.from_row(automation.to_row(obj)) == obj


statuses = st.sampled_from(["STARTED", "SKIPPED", "SUCCESS", "FAILURE"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(statuses, st.integers(0, 10_000)), min_size=1, max_size=30))
def test_the_failure_streak_counts_the_newest_failed_ticks(ticks: list[tuple[str, int]]) -> None:
    """Whatever the arrival order, applied in time order the streak is the failed ticks since the last
    success or skip; an error is reported exactly when it is at least the threshold."""
    ordered = sorted(ticks, key=lambda t: t[1])
    events = [tick(status, T0 + at, tick_id=i) for i, (status, at) in enumerate(ordered)]
    obj = fold(*events)
    first = new_object(events[0])
    assert first is not None and apply(first, *events) == obj  # one fold of the batch = one event at a time
    streak = 0
    for status, _ in ordered:
        if status == "FAILURE":
            streak += 1
        elif status in ("SUCCESS", "SKIPPED"):
            streak = 0
    assert obj.failed_ticks == streak
    result = automation.tick_failures(obj, CFG)
    assert (result.outcome == "error") == (streak >= CFG.failed_ticks)


@settings(max_examples=200, deadline=None)
@given(st.floats(1, 3600), st.floats(0, 20_000))
def test_next_change_is_when_the_stopped_outcome_flips(interval: float, elapsed: float) -> None:
    obj = fold(tick("SUCCESS", T0, interval_s=interval))
    now = T0 + elapsed
    due = next_change(obj, CFG, now)
    if due is None:
        assert outcomes(obj, now)["stopped"] == "error"
    else:
        assert outcomes(obj, now)["stopped"] == "passed" and outcomes(obj, due)["stopped"] == "error"


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(["*/5 * * * *", "0 * * * *", "30 2 * * 1-5"]),
    st.integers(-1, 1),
    st.floats(0, 5 * 86400),
    st.sampled_from(["UTC", None]),
)
def test_next_change_is_when_a_schedule_is_first_late(
    cron: str, offset: int, elapsed: float, zone: str | None
) -> None:
    """From a tick on its cron time (as Dagster stamps them) or a second either side: the periodic pass is
    due exactly when the stopped outcome flips, and None only once it has."""
    on_time = automation._latest_cron_tick(cron, T0, "UTC") + offset
    obj = fold(tick("SUCCESS", on_time, kind="schedule", name="s", cron_schedule=cron, timezone=zone))
    now = on_time + elapsed
    due = next_change(obj, CFG, now)
    if due is None:
        assert outcomes(obj, now)["stopped"] == "error"
    else:
        assert outcomes(obj, now)["stopped"] == "passed" and outcomes(obj, due)["stopped"] == "error"


def test_a_schedule_of_an_unknown_time_zone_is_never_late_while_it_ticks() -> None:
    """A daily 09:00 schedule of another code location in Berlin or New York (the publisher cannot say which)
    ticks at 07:00 or 13:00 UTC: read in UTC it would look a few hours late every day."""
    day = 1_780_012_800.0  # 2026-05-29T00:00:00Z
    for real_hour in (7, 13):
        last = day + real_hour * 3600
        obj = fold(tick("SUCCESS", last, kind="schedule", name="daily", cron_schedule="0 9 * * *"))
        for hours in range(1, 24):  # the next day's tick is not due yet
            assert outcomes(obj, last + hours * 3600)["stopped"] == "passed"
        (stopped,) = [r for r in evaluate(obj, CFG, last + 3 * 86400, {}) if r.check == "stopped"]
        assert stopped.outcome == "error" and "time zone unknown" in stopped.reason
    utc = fold(
        tick(
            "SUCCESS",
            day + 9 * 3600,
            kind="schedule",
            name="daily",
            cron_schedule="0 9 * * *",
            timezone="UTC",
        )
    )
    assert outcomes(utc, day + 33 * 3600 + CFG.schedule_grace_s + 1)["stopped"] == "error"  # known: exact


# -- op jobs: runs of jobs that materialize no asset ------------------------------------------------------


def run(
    status: str,
    at: float,
    run_id: str,
    *,
    job: str = "report_job",
    error: str | None = None,
    tags: dict[str, str] | None = None,
    asset_keys: list[str] | None = None,
) -> RunEvent:
    """A `run.*` event as the publisher sends it for an op job (no asset keys)."""
    ended = dt(at) if status != "STARTED" else None
    data = RunData(
        run_id=run_id,
        job_name=job,
        status=status,  # type: ignore[arg-type]
        asset_keys=asset_keys or [],
        failed_asset_keys=[] if status == "FAILURE" else None,
        started_at=dt(at - 5),
        ended_at=ended,
        error=error,
        code_location="loc",
        tags=tags or {},
    )
    kind = {"STARTED": "started", "SUCCESS": "succeeded", "FAILURE": "failed", "CANCELED": "canceled"}[status]
    return new_event(
        RunEvent, f"run.{kind}", identity=f"{run_id}:{status}", data=data, source="t", occurred_at=dt(at)
    )


def test_a_run_without_assets_is_its_job_s_object_and_a_run_with_assets_is_not() -> None:
    assert automation.job_key(run("FAILURE", T0, "r1")) == "job:loc/report_job"
    assert automation.job_key(run("FAILURE", T0, "r1", asset_keys=["raw/orders"])) is None
    assert automation.object_key(run("FAILURE", T0, "r1")) is None  # not the automation stream's
    tags = {"owner": "ann@x.io, team:ops", "team": "ops", "dagster/run_key": "k"}
    obj = fold(run("STARTED", T0, "r1", tags=tags))
    assert (obj.kind, obj.name, obj.code_location) == ("job", "report_job", "loc")
    assert obj.owners == ("ann@x.io", "team:ops") and "dagster/run_key" not in obj.tags
    assert obj.tags["team"] == "ops"  # routes alerts by team, as for assets
    # Started only: nothing finished yet, nothing judged.
    assert [r.outcome for r in evaluate(obj, CFG, T0, {})] == ["passed"] and obj.last_at is None


def test_a_failed_op_job_is_an_error_naming_streak_error_run_and_last_success_until_a_success() -> None:
    obj = fold(
        run("SUCCESS", T0, "ok000001"),
        run("FAILURE", T0 + 60, "bad00001", error="SMTPError: relay refused"),
        run("FAILURE", T0 + 120, "bad00002", error="SMTPError: relay refused the report"),
    )
    (result,) = evaluate(obj, CFG, T0 + 121, {})
    assert result.check == "execution_status" and result.outcome == "error"
    assert "2 runs in a row" in result.reason and "relay refused the report" in result.reason
    assert "bad00002" in result.reason and automation.when(T0) in result.reason and "loc" in result.reason
    assert result.values["consecutive"] == 2 and result.values["last_run_id"] == "bad00002"
    assert result.values["first_failed_at"] == automation.when(T0 + 60)
    assert next_change(obj, CFG, T0 + 121) is None  # only a run changes it
    healed = apply(obj, run("SUCCESS", T0 + 180, "ok000002"))
    (passed,) = evaluate(healed, CFG, T0 + 181, {})
    assert passed.outcome == "passed" and healed.failed_runs == 0 and healed.last_success_at == T0 + 180


def test_a_late_or_repeated_run_end_changes_no_streak() -> None:
    failed = fold(run("FAILURE", T0 + 60, "r2", error="boom"))
    late = apply(failed, run("SUCCESS", T0, "r1"))  # ended before the failure: history
    assert late.failed_runs == 1 and late.last_success_at == T0
    assert apply(failed, run("FAILURE", T0 + 60, "r2")).failed_runs == 1  # the same run's end again
    assert apply(failed, run("STARTED", T0 + 90, "r3")).failed_runs == 1  # a new run, not finished


def test_a_canceled_op_job_follows_the_assets_canceled_run_threshold() -> None:
    obj = fold(run("FAILURE", T0, "r1"), run("CANCELED", T0 + 60, "r2"))
    assert obj.failed_runs == 0
    for threshold, outcome in (("warn", "warn"), ("error", "error"), ("ignore", "passed")):
        (result,) = evaluate(obj, CFG, T0 + 61, {}, canceled_run=threshold)
        assert result.outcome == outcome and ("canceled" in result.reason)


def test_a_failed_op_job_makes_its_object_failed_with_owners_tags_and_location() -> None:
    obj = fold(run("FAILURE", T0, "r1", error="boom", tags={"owner": "team:data", "tier": "1"}))
    subject = automation.subject_of(obj)
    d = decide(HealthState(), evaluate(obj, CFG, T0 + 1, {}), T0 + 1, subject, Trigger.EVENTS)
    assert d.status == "FAILED" and d.event is not None
    assert d.event.data.object_kind == "job" and object_kind_of(d.event.data.asset_key) == "job"
    assert d.event.data.owners == ["team:data"] and d.event.data.tags == {"owner": "team:data", "tier": "1"}
    assert d.event.data.code_location == "loc"
    assert automation.from_row(automation.to_row(obj)) == obj


run_statuses = st.sampled_from(["STARTED", "SUCCESS", "FAILURE", "CANCELED"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(run_statuses, st.integers(0, 10_000)), min_size=1, max_size=30), st.randoms())
def test_the_run_failure_streak_counts_the_newest_failed_runs(runs: list[tuple[str, int]], rnd: Any) -> None:
    """Runs ending in time order make the streak of failed runs since the last success or cancel; an error
    exactly when the newest finished run failed; the same run's end delivered again changes nothing."""
    ordered = sorted(runs, key=lambda r: r[1])
    events = [run(status, T0 + at, f"run{i}") for i, (status, at) in enumerate(ordered)]
    redelivered = [e for e in events for _ in range(rnd.choice((1, 2)))]
    obj = fold(*redelivered)
    first = new_object(events[0])
    assert first is not None and apply(first, *events) == obj  # one fold of the batch = one event at a time
    streak = 0
    for status, _ in ordered:
        if status == "FAILURE":
            streak += 1
        elif status != "STARTED":
            streak = 0
    assert obj.failed_runs == streak
    (result,) = evaluate(obj, CFG, T0 + 20_000, {})
    assert (result.outcome == "error") == (streak > 0)
    if streak:
        assert result.values["consecutive"] == streak


def test_a_removed_object_is_retired_until_it_ticks_again() -> None:
    key = "sensor:loc/orders_sensor"
    failing = fold(tick("FAILURE", T0, error="boom"))
    assert automation.object_key(removed(key, T0 + 5)) == key
    assert new_object(removed(key, T0 + 5)) is None  # an unknown object is not made by its removal

    gone = apply(failing, removed(key, T0 + 5, "no longer in loc"))
    results = evaluate(gone, CFG, T0 + 86400, {})
    assert {r.check: r.outcome for r in results} == {"tick_failures": "passed", "stopped": "passed"}
    assert all("retired at" in r.reason and "no longer in loc" in r.reason for r in results)
    assert next_change(gone, CFG, T0 + 10) is None  # the clock never brings it back
    subject = Subject(key=key, has_data=True, retired=True, kind="sensor", failing=automation.FAILING_CHECKS)
    decision = decide(HealthState(), results, T0 + 10, subject, Trigger.EVENTS)
    assert decision.status == "UNKNOWN" and "no longer in loc" in decision.reasons[0]

    # A removal older than the newest tick is stale: nothing retired.
    assert apply(failing, removed(key, T0 - 5)).retired_at is None
    # It ticks again (put back in its code location): judged again.
    back = apply(gone, tick("FAILURE", T0 + 60, error="boom"))
    assert back.retired_at is None
    assert {r.check: r.outcome for r in evaluate(back, CFG, T0 + 61, {})}["tick_failures"] == "error"
    # A daemon or publisher forgotten by hand, likewise: its next heartbeat brings it back.
    forgotten = apply(fold(daemon(T0)), removed("daemon:SENSOR", T0 + 500))
    assert [r.outcome for r in evaluate(forgotten, CFG, T0 + 1000, {})] == ["passed"]
    assert apply(forgotten, daemon(T0 + 600)).retired_at is None
