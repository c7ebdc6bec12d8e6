"""Automation health, pure: the automation stream's events folded into one record per object (a sensor, a
schedule, a daemon, the publisher), and that record judged at a time into check results with reasons. Runs of
jobs that materialize no asset (op jobs: `run.*` with no asset keys) are folded into one object per job too.

    event ─ apply(previous, event) ─► AutomationObject ─ evaluate(obj, cfg, now, daemons) ─► [CheckResult]
    next_change(obj, cfg, now) ─► when the clock alone can next change an outcome (the periodic pass)

Objects are keyed `sensor:<location>/<name>`, `schedule:<location>/<name>`, `daemon:<type>`,
`publisher:<location>` and `job:<location>/<job>`. The status and the published event come from
`decide.decide`, as for assets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from libs.common.events import (
    AutomationRemoved,
    AutomationTicked,
    CheckName,
    CheckOutcome,
    CheckResult,
    DaemonHeartbeat,
    Event,
    PublisherHeartbeat,
    RunEvent,
)
from libs.common.text import clip, duration
from services.health.decide import Subject
from services.health.settings import AutomationHealthSettings

# The daemon that evaluates each kind of instigator (Dagster's daemon types): when it is silent, a stopped
# sensor or schedule (and the publisher, a sensor) names it as the cause, so alerts make one incident of it.
# Dagster writes a daemon's heartbeat every 30 s: a gap of more than half an interval longer between two
# published ones is the daemon (or the publisher) having been down; its sensors' limits count from its return.
DAEMON_SILENCE_S = 45.0
DAEMON_OF = {"sensor": "SENSOR", "publisher": "SENSOR", "schedule": "SCHEDULER"}
# How long a tick may take from its start (its time on record) to its events being published.
TICK_SLACK_S = 5.0
_ERROR_CHARS = 300


class AutomationCheck(StrEnum):
    TICK_FAILURES = "tick_failures"
    STOPPED = "stopped"
    DAEMON_HEARTBEAT = "daemon_heartbeat"
    PUBLISHER_HEARTBEAT = "publisher_heartbeat"


# An error of these makes the object FAILED (it does not work); of the others DEGRADED (it may not run).
# A job's check is the assets' `execution_status` (same meaning: the latest finished run failed), so routes,
# silences and listings that name it cover op jobs too.
FAILING_CHECKS: frozenset[str] = frozenset(
    {
        AutomationCheck.TICK_FAILURES,
        AutomationCheck.DAEMON_HEARTBEAT,
        AutomationCheck.PUBLISHER_HEARTBEAT,
        CheckName.EXECUTION,
    }
)
# Run tags that are Dagster's own (run keys, partitions, backfills...), not a team's: not a job's tags.
_SYSTEM_TAG_PREFIXES = ("dagster/", ".dagster")
_OWNER_TAGS = ("owner", "owners")


@dataclass(slots=True)
class AutomationObject:
    """What is known of one automation object: its description from the newest event, and its ticks folded
    (times are epoch seconds)."""

    key: str
    kind: str
    name: str
    code_location: str | None = None
    repository: str | None = None
    running: bool = True
    interval_s: float | None = None
    cron_schedule: str | None = None
    timezone: str | None = None
    owners: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    last_at: float | None = None  # the newest tick or heartbeat
    last_tick_id: int | None = None
    last_status: str | None = None
    last_success_at: float | None = None
    failed_ticks: int = 0  # the latest ticks that failed, in a row
    first_failed_at: float | None = None
    last_error: str | None = None
    skipped_ticks: int = 0
    skip_reason: str | None = None
    errors: tuple[str, ...] = ()  # a daemon's reported errors
    resumed_at: float | None = None  # a daemon: its first heartbeat after a silence (DAEMON_SILENCE_S)
    published: int = 0  # the publisher's last tick: events published
    caught_up: bool = True
    last_run_id: str | None = None  # a job's newest finished run (its status `last_status`, end `last_at`)
    failed_runs: int = 0  # a job's newest finished runs that failed, in a row
    retired_at: float | None = None  # removed (`automation.removed`): judged no more until it ticks again
    retired_reason: str | None = None


# The events of the automation stream (`object_key` names their object); a batch is filtered by these first.
AUTOMATION_EVENTS = (AutomationTicked, DaemonHeartbeat, PublisherHeartbeat, AutomationRemoved)


def object_key(event: Event) -> str | None:
    """The key of the object an automation event is about (None for any other event)."""
    if isinstance(event, AutomationTicked):
        d = event.data
        return f"{d.kind}:{d.code_location or ''}/{d.name}"
    if isinstance(event, DaemonHeartbeat):
        return f"daemon:{event.data.daemon_type}"
    if isinstance(event, PublisherHeartbeat):
        return f"publisher:{event.data.code_location}"
    if isinstance(event, AutomationRemoved):
        return event.data.object_key
    return None


def job_key(event: Event) -> str | None:
    """The key of the job a run event is about when the run materializes no asset (an op job), else None."""
    if isinstance(event, RunEvent) and not event.data.asset_keys:
        return f"job:{event.data.code_location or ''}/{event.data.job_name}"
    return None


def run_time(event: RunEvent) -> float:
    """When a run event happened: a finished run's end, a started one's start (the event's time if unsaid)."""
    d = event.data
    at = d.ended_at if d.status != "STARTED" else d.started_at
    return (at or event.occurred_at).timestamp()


def run_owners(tags: Mapping[str, str]) -> tuple[str, ...]:
    """A job's owners from its run's `owner` / `owners` tags (comma-separated)."""
    found = (o.strip() for name in _OWNER_TAGS for o in tags.get(name, "").split(","))
    return tuple(dict.fromkeys(o for o in found if o))


def run_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """A run's tags without Dagster's own (a `team` tag routes alerts as for assets)."""
    return {k: v for k, v in tags.items() if not k.startswith(_SYSTEM_TAG_PREFIXES)}


def event_time(event: Event) -> float | None:
    """The time an automation event tells about (a tick's, a heartbeat's, an op job run's), None for other
    events."""
    if isinstance(event, RunEvent):
        return run_time(event) if not event.data.asset_keys else None
    if isinstance(event, AutomationTicked | PublisherHeartbeat):
        return event.data.tick_at.timestamp()
    if isinstance(event, DaemonHeartbeat):
        return event.data.last_heartbeat_at.timestamp()
    if isinstance(event, AutomationRemoved):
        return event.occurred_at.timestamp()
    return None


def catch_up_time(event: Event) -> float | None:
    """The time that tells whether automation history is being replayed: a tick's, and a caught-up
    publisher heartbeat's (one the publisher sent while paging through history says nothing about now); None
    for a daemon heartbeat (an old one is the finding itself) and any other event."""
    if isinstance(event, AutomationTicked):
        return event.data.tick_at.timestamp()
    if isinstance(event, PublisherHeartbeat) and event.data.caught_up:
        return event.data.tick_at.timestamp()
    return None


def new_object(event: Event) -> AutomationObject | None:
    """The empty record of the object `event` is about (None for a removal: an unknown object is not one)."""
    key = object_key(event) or job_key(event)
    if key is None or isinstance(event, AutomationRemoved):
        return None
    if isinstance(event, RunEvent):
        return AutomationObject(key, "job", event.data.job_name, code_location=event.data.code_location)
    if isinstance(event, AutomationTicked):
        return AutomationObject(key, event.data.kind, event.data.name, code_location=event.data.code_location)
    if isinstance(event, DaemonHeartbeat):
        return AutomationObject(key, "daemon", event.data.daemon_type)
    assert isinstance(event, PublisherHeartbeat)
    return AutomationObject(
        key, "publisher", event.data.code_location, code_location=event.data.code_location
    )


def apply(obj: AutomationObject, *events: Event) -> AutomationObject:
    """`obj` with `events` folded in, in order (a new record; `obj` is not changed). Events older than the
    newest one applied change no streak (a late tick is history already superseded); a tick's terminal
    status after its STARTED (same id, same time) replaces it."""
    new = dataclasses.replace(obj)  # one copy for the whole fold (a copy per event doubled a batch's cost)
    for event in events:
        _fold(new, event)
    return new


def _fold(new: AutomationObject, event: Event) -> None:
    """Fold one event into `new`, in place."""
    at = event_time(event)
    if at is None:
        return
    if isinstance(event, AutomationRemoved):
        if new.retired_at is None and (new.last_at is None or at >= new.last_at):
            new.retired_at, new.retired_reason = at, event.data.reason
        return
    if new.retired_at is not None and at > new.retired_at:
        new.retired_at, new.retired_reason = None, None  # it ticks (beats, runs) again: back
    if isinstance(event, RunEvent):
        _fold_run(new, event, at)
        return
    if isinstance(event, DaemonHeartbeat):
        if new.last_at is None or at >= new.last_at:
            if new.last_at is not None and at - new.last_at > DAEMON_SILENCE_S:
                new.resumed_at = at
            new.last_at, new.errors = at, tuple(event.data.errors)
        return
    if isinstance(event, PublisherHeartbeat):
        if new.last_at is None or at >= new.last_at:
            beat = event.data
            new.last_at, new.interval_s = at, beat.interval_s
            new.published, new.caught_up = beat.published, beat.caught_up
        return
    assert isinstance(event, AutomationTicked)
    d = event.data
    if d.status == "SUCCESS":
        new.last_success_at = max(at, new.last_success_at or at)
    if new.last_at is not None and at < new.last_at:
        return
    # The newest tick describes the instigator, a repeat of it too: the publisher sends the latest tick again
    # when a sensor or schedule is turned on or off without ticking (`running`).
    new.repository, new.running = d.repository, d.running
    new.interval_s, new.cron_schedule, new.timezone = d.interval_s, d.cron_schedule, d.timezone
    new.owners, new.tags = tuple(d.owners), dict(d.tags)
    if d.code_location is not None:
        new.code_location = d.code_location
    same_tick = d.tick_id is not None and d.tick_id == new.last_tick_id and at == new.last_at
    if same_tick and d.status in (new.last_status, "STARTED"):
        return  # a repeat, or a STARTED arriving after its tick's end: no streak moves
    new.last_at, new.last_tick_id, new.last_status = at, d.tick_id, d.status
    if d.status == "FAILURE":
        if new.failed_ticks == 0:
            new.first_failed_at = at
        new.failed_ticks += 1
        new.last_error = d.error
        new.skipped_ticks, new.skip_reason = 0, None
    elif d.status == "SKIPPED":
        new.failed_ticks, new.first_failed_at = 0, None
        new.skipped_ticks += 1
        new.skip_reason = d.skip_reason
    elif d.status == "SUCCESS":
        new.failed_ticks, new.first_failed_at = 0, None
        new.skipped_ticks, new.skip_reason = 0, None


def _fold_run(new: AutomationObject, event: RunEvent, at: float) -> None:
    """An op job's run: its end moves the streak unless a later run's end is already folded (a late event),
    or it is the same run's end again; its start only describes the job."""
    d = event.data
    if d.status == "SUCCESS":
        new.last_success_at = max(at, new.last_success_at or at)
    if new.last_at is not None and at < new.last_at:
        return
    new.owners, new.tags = run_owners(d.tags), run_tags(d.tags)
    if d.code_location is not None:
        new.code_location = d.code_location
    if d.status == "STARTED" or d.run_id == new.last_run_id:
        return
    new.last_at, new.last_run_id, new.last_status = at, d.run_id, d.status
    if d.status == "FAILURE":
        if new.failed_runs == 0:
            new.first_failed_at = at
        new.failed_runs += 1
        new.last_error = d.error
    else:
        new.failed_runs, new.first_failed_at, new.last_error = 0, None, None


# -- evaluation ------------------------------------------------------------------------------------------


def when(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if t is not None else "never"


def _result(check: str, outcome: CheckOutcome, reason: str, **values: Any) -> CheckResult:
    return CheckResult(
        check=check,
        outcome=outcome,
        reason=clip(reason, 500),
        values={k: v for k, v in values.items() if v is not None},
    )


def tick_failures(obj: AutomationObject, cfg: AutomationHealthSettings) -> CheckResult:
    """An error when the latest `cfg.failed_ticks` ticks (or more) failed; passes once a tick succeeds or
    skips."""
    check = AutomationCheck.TICK_FAILURES
    if obj.failed_ticks >= cfg.failed_ticks:
        error = clip(obj.last_error or "no error text", _ERROR_CHARS)
        ticks = "tick" if obj.failed_ticks == 1 else f"{obj.failed_ticks} ticks in a row"
        reason = (
            f"{obj.kind} {obj.name} ({obj.code_location or 'unknown location'}): {ticks} failed since "
            f"{when(obj.first_failed_at)}; last success {when(obj.last_success_at)}: {error}"
        )
        return _result(
            check,
            "error",
            reason,
            failed_ticks=obj.failed_ticks,
            error=error,
            first_failed_at=when(obj.first_failed_at),
            last_success_at=when(obj.last_success_at),
            code_location=obj.code_location,
        )
    if obj.failed_ticks:
        return _result(
            check,
            "passed",
            f"{obj.failed_ticks} failed tick(s), below {cfg.failed_ticks}",
            failed_ticks=obj.failed_ticks,
        )
    if obj.last_status == "SKIPPED":
        return _result(
            check,
            "passed",
            f"last tick skipped at {when(obj.last_at)}: {clip(obj.skip_reason or 'no reason given', 200)}",
            skipped_ticks=obj.skipped_ticks,
        )
    if obj.last_at is None:
        return _result(check, "passed", "no tick on record yet")
    return _result(check, "passed", f"last tick {str(obj.last_status).lower()} at {when(obj.last_at)}")


def job_execution(obj: AutomationObject, canceled_run: str = "warn") -> CheckResult:
    """An op job's `execution_status`: an error when its newest finished run failed (the streak, the error,
    the run, the last success); a canceled newest run per `canceled_run` (warn, error, ignore) as for assets;
    passed after a later success."""
    check = CheckName.EXECUTION
    run = (obj.last_run_id or "")[:8]
    values: dict[str, Any] = {
        "last_run_id": obj.last_run_id,
        "last_status": obj.last_status,
        "last_run_at": when(obj.last_at) if obj.last_at is not None else None,
        "last_success_at": when(obj.last_success_at) if obj.last_success_at is not None else None,
    }
    if obj.last_run_id is None:
        return _result(check, "passed", "no finished run on record yet")
    if obj.last_status == "FAILURE":
        error = clip((obj.last_error or "").strip() or "no error text", _ERROR_CHARS)
        runs = "run" if obj.failed_runs == 1 else f"{obj.failed_runs} runs in a row"
        reason = (
            f"job {obj.name} ({obj.code_location or 'unknown location'}): {runs} failed since "
            f"{when(obj.first_failed_at)}, last run {run}; last success {when(obj.last_success_at)}: {error}"
        )
        return _result(
            check,
            "error",
            reason,
            consecutive=obj.failed_runs,
            error=error,
            first_failed_at=when(obj.first_failed_at),
            code_location=obj.code_location,
            **values,
        )
    if obj.last_status == "CANCELED" and canceled_run in ("warn", "error"):
        outcome: CheckOutcome = "warn" if canceled_run == "warn" else "error"
        reason = (
            f"job {obj.name} ({obj.code_location or 'unknown location'}): run {run} was canceled at "
            f"{when(obj.last_at)}"
        )
        return _result(check, outcome, reason, **values)
    return _result(
        check, "passed", f"last run {run} {str(obj.last_status).lower()} at {when(obj.last_at)}", **values
    )


Cron = Callable[[str, float, str | None], float]


def _latest_cron_tick(cron: str, at: float, timezone: str | None) -> float:
    """The latest tick of `cron` at or before `at`, as Dagster computes it (private name, read in dagster
    1.13; `evaluators.latest_cron_tick` uses the same module)."""
    from dagster._utils.schedules import get_latest_completed_cron_tick

    return get_latest_completed_cron_tick(
        cron, datetime.fromtimestamp(at, UTC), timezone or "UTC"
    ).timestamp()


def _next_cron_tick(cron: str, at: float, timezone: str | None) -> float:
    """The first tick of `cron` after `at`."""
    from dagster._utils.schedules import get_next_cron_tick

    return get_next_cron_tick(cron, datetime.fromtimestamp(at, UTC), timezone or "UTC").timestamp()


def _after_daemon(obj: AutomationObject, cfg: AutomationHealthSettings) -> float:
    """The least lateness judged: the daemon running the object would be judged silent first, so its alert is
    the cause the others name, not one more incident of its own. The daemon's last heartbeat can come up to
    two intervals and a tick's evaluation after the object's last tick on record: the publisher publishes its
    own tick on its next tick, so its last one on record is one tick older than the stop (seen with a real
    daemon: the publishing sensor late, alone, half a second before its daemon)."""
    return cfg.daemon_heartbeat_max_s + 2 * (obj.interval_s or cfg.sensor_interval_s) + TICK_SLACK_S


def _late_since(obj: AutomationObject, daemons: Mapping[str, AutomationObject]) -> float:
    """Where a sensor's silence counts from: its last tick, or its daemon's return after a silence if later (a
    sensor cannot tick while its daemon is down; after the daemon's first heartbeat, before the sensor's first
    tick, it is not late yet)."""
    assert obj.last_at is not None
    daemon = daemons.get(f"daemon:{DAEMON_OF.get(obj.kind, '')}")
    return max(obj.last_at, (daemon.resumed_at or 0.0) if daemon is not None else 0.0)


def stopped_limit(obj: AutomationObject, cfg: AutomationHealthSettings) -> float:
    """How long a running sensor may go without a tick."""
    return max(cfg.stopped_intervals * (obj.interval_s or cfg.sensor_interval_s), _after_daemon(obj, cfg))


def schedule_grace(obj: AutomationObject, cfg: AutomationHealthSettings) -> float:
    """How late a schedule's cron tick may be (at least the scheduler daemon's own limit, see above)."""
    return max(cfg.schedule_grace_s, cfg.daemon_heartbeat_max_s)


# UTC offsets run from -12 h to +14 h: a cron read in UTC ticks at most this much before (after) the same
# cron in the schedule's own time zone.
_AHEAD_S, _BEHIND_S = 12 * 3600.0, 14 * 3600.0


def zone_slack(obj: AutomationObject) -> tuple[float, float]:
    """(lead, lag) of a schedule's cron reading when its time zone is unknown (the publisher knows it only for
    its own repository's schedules): read in UTC, a tick is missed for sure only when the UTC tick at least
    `lead` before the deadline is more than `lag` after the last tick, whatever the real zone. So detection
    waits up to a day longer, and never fires for a running schedule of another zone. A cron whose hours, days
    and months are all `*` ticks alike in every whole-hour zone: no slack."""
    fields = (obj.cron_schedule or "").split()
    if obj.timezone or (len(fields) == 5 and fields[1:] == ["*", "*", "*", "*"]):
        return 0.0, 0.0
    return _AHEAD_S, _BEHIND_S


def daemon_late(daemon: AutomationObject | None, cfg: AutomationHealthSettings, now: float) -> bool:
    return (
        daemon is not None
        and daemon.last_at is not None
        and now - daemon.last_at > cfg.daemon_heartbeat_max_s
    )


def _cause(
    obj: AutomationObject, cfg: AutomationHealthSettings, now: float, daemons: Mapping[str, AutomationObject]
) -> tuple[str, dict[str, Any]]:
    """The silent daemon behind a late object (text and values naming it as `blocked_by`), if any."""
    daemon = daemons.get(f"daemon:{DAEMON_OF.get(obj.kind, '')}")
    if daemon is None or not daemon_late(daemon, cfg, now):
        return "", {}
    assert daemon.last_at is not None
    return (
        f"; the {daemon.name} daemon's last heartbeat is {duration(now - daemon.last_at)} old",
        {"blocked_by": daemon.key},
    )


def stopped(
    obj: AutomationObject,
    cfg: AutomationHealthSettings,
    now: float,
    daemons: Mapping[str, AutomationObject],
    cron: Cron = _latest_cron_tick,
) -> CheckResult:
    """An error when a running sensor has not ticked for `stopped_intervals` times its interval, or a running
    schedule has missed a cron tick by more than `schedule_grace_s`."""
    check = AutomationCheck.STOPPED
    if not obj.running:
        return _result(check, "passed", f"{obj.kind} is stopped in Dagster (not expected to tick)")
    if obj.last_at is None:
        return _result(check, "passed", "no tick on record yet")
    age = now - obj.last_at
    if obj.kind == "schedule" and obj.cron_schedule:
        try:
            lead, lag = zone_slack(obj)
            expected = cron(obj.cron_schedule, now - schedule_grace(obj, cfg) - lead, obj.timezone)
        except Exception as exc:  # a cron Dagster accepted but we cannot read: say so, do not fail
            return _result(check, "warn", f"cannot read cron {obj.cron_schedule!r}: {clip(str(exc), 200)}")
        if expected - lag > obj.last_at:
            zone = "" if lead == 0 else " read in UTC, its time zone unknown"
            cause, values = _cause(obj, cfg, now, daemons)
            reason = (
                f"schedule {obj.name} ({obj.code_location or 'unknown location'}) missed its tick of "
                f"{when(expected)} ({obj.cron_schedule}{zone}); last tick {when(obj.last_at)}, "
                f"{duration(age)} ago{cause}"
            )
            return _result(
                check,
                "error",
                reason,
                expected_at=when(expected),
                last_tick_at=when(obj.last_at),
                age_s=round(age, 1),
                cron_schedule=obj.cron_schedule,
                **values,
            )
        return _result(
            check, "passed", f"last tick {when(obj.last_at)}; no cron tick missed ({obj.cron_schedule})"
        )
    limit = stopped_limit(obj, cfg)
    if now - _late_since(obj, daemons) > limit:
        cause, values = _cause(obj, cfg, now, daemons)
        reason = (
            f"{obj.kind} {obj.name} ({obj.code_location or 'unknown location'}): "
            f"no tick for {duration(age)}, "
            f"limit {duration(limit)} (its interval {duration(obj.interval_s or cfg.sensor_interval_s)}); "
            f"last tick {when(obj.last_at)}{cause}"
        )
        return _result(
            check,
            "error",
            reason,
            last_tick_at=when(obj.last_at),
            age_s=round(age, 1),
            limit_s=limit,
            **values,
        )
    return _result(check, "passed", f"last tick {duration(age)} ago (limit {duration(limit)})")


def daemon_heartbeat(obj: AutomationObject, cfg: AutomationHealthSettings, now: float) -> CheckResult:
    """An error when the daemon's last heartbeat is older than `daemon_heartbeat_max_s`; a warning when it
    reports errors."""
    check = AutomationCheck.DAEMON_HEARTBEAT
    if obj.last_at is None:
        return _result(check, "passed", "no heartbeat on record yet")
    age = now - obj.last_at
    if age > cfg.daemon_heartbeat_max_s:
        return _result(
            check,
            "error",
            f"the {obj.name} daemon's last heartbeat is {duration(age)} old "
            f"(at {when(obj.last_at)}; limit {duration(cfg.daemon_heartbeat_max_s)}): is dagster-daemon "
            f"running?",
            age_s=round(age, 1),
            last_heartbeat_at=when(obj.last_at),
        )
    if obj.errors:
        return _result(
            check,
            "warn",
            f"the {obj.name} daemon reports {len(obj.errors)} error(s): {clip(obj.errors[0], _ERROR_CHARS)}",
            errors=[clip(e, _ERROR_CHARS) for e in obj.errors[:5]],
        )
    return _result(check, "passed", f"last heartbeat {duration(age)} ago")


def publisher_limit(obj: AutomationObject, cfg: AutomationHealthSettings) -> float:
    interval = obj.interval_s or cfg.sensor_interval_s
    return max(cfg.publisher_intervals * interval, cfg.publisher_min_s, _after_daemon(obj, cfg))


def publisher_heartbeat(
    obj: AutomationObject, cfg: AutomationHealthSettings, now: float, daemons: Mapping[str, AutomationObject]
) -> CheckResult:
    """An error when the publisher's last heartbeat is older than `publisher_intervals` times its interval (at
    least `publisher_min_s`): no event of its code location reaches the workers."""
    check = AutomationCheck.PUBLISHER_HEARTBEAT
    if obj.last_at is None:
        return _result(check, "passed", "no heartbeat on record yet")
    age = now - obj.last_at
    limit = publisher_limit(obj, cfg)
    if age > limit:
        cause, values = _cause(obj, cfg, now, daemons)
        return _result(
            check,
            "error",
            f"the publisher of {obj.name} has not published for {duration(age)} (last "
            f"heartbeat {when(obj.last_at)}, limit {duration(limit)}): its events are not reaching the "
            f"workers{cause}",
            age_s=round(age, 1),
            limit_s=limit,
            last_heartbeat_at=when(obj.last_at),
            **values,
        )
    behind = "" if obj.caught_up else "; its last tick stopped at its time budget with more to read"
    return _result(
        check, "passed", f"last heartbeat {duration(age)} ago, {obj.published} event(s) published{behind}"
    )


def daemon_chain(key: str, daemon_keys: Iterable[str]) -> tuple[str, ...]:
    """A daemon's "downstream" in its health event: the next daemon of the instance in key order. All of an
    instance's daemons run in one dagster-daemon process; chained, they are one lineage to the alerts, so that
    the process stopping is one incident (the sensors and schedules join it by `blocked_by`), not one per
    daemon type, whatever order their limits pass in."""
    ordered = sorted(daemon_keys)
    if key not in ordered:
        return ()
    at = ordered.index(key)
    return (ordered[at + 1],) if at + 1 < len(ordered) else ()


_CHECKS_OF: dict[str, tuple[str, ...]] = {
    "job": (CheckName.EXECUTION,),
    "daemon": (AutomationCheck.DAEMON_HEARTBEAT,),
    "publisher": (AutomationCheck.PUBLISHER_HEARTBEAT,),
}


def evaluate(
    obj: AutomationObject,
    cfg: AutomationHealthSettings,
    now: float,
    daemons: Mapping[str, AutomationObject],
    cron: Cron = _latest_cron_tick,
    canceled_run: str = "warn",
) -> list[CheckResult]:
    """Every check of the object's kind, at `now` (`canceled_run`: the assets' threshold, for a job); all
    passed, saying so, for a retired object."""
    if obj.retired_at is not None:
        checks = _CHECKS_OF.get(obj.kind, (AutomationCheck.TICK_FAILURES, AutomationCheck.STOPPED))
        reason = f"retired at {when(obj.retired_at)}: {clip(obj.retired_reason or 'removed', 300)}"
        return [_result(check, "passed", reason) for check in checks]
    if obj.kind == "job":
        return [job_execution(obj, canceled_run)]
    if obj.kind == "daemon":
        return [daemon_heartbeat(obj, cfg, now)]
    if obj.kind == "publisher":
        return [publisher_heartbeat(obj, cfg, now, daemons)]
    return [tick_failures(obj, cfg), stopped(obj, cfg, now, daemons, cron)]


def next_change(
    obj: AutomationObject,
    cfg: AutomationHealthSettings,
    now: float,
    next_cron: Cron = _next_cron_tick,
    daemons: Mapping[str, AutomationObject] | None = None,
) -> float | None:
    """The earliest time after `now` the clock alone can change one of the object's outcomes (a limit
    passing), None when only an event can (already late, stopped in Dagster, nothing on record). A sensor or
    the publisher late because of a silent daemon is also due when that daemon's own limit passes."""
    if obj.last_at is None or obj.kind == "job" or obj.retired_at is not None:
        return None  # a job's outcome changes only with its runs, a retired object's with its return
    if obj.kind == "daemon":
        due = obj.last_at + cfg.daemon_heartbeat_max_s
    elif obj.kind == "publisher":
        due = obj.last_at + publisher_limit(obj, cfg)
    elif not obj.running:
        return None
    elif obj.kind == "schedule" and obj.cron_schedule:
        try:
            # The first cron tick after the last one: Dagster stamps a schedule's tick with its cron time, and
            # the next tick from a time on the boundary is that time itself.
            lead, lag = zone_slack(obj)
            after = obj.last_at + lag
            following = next_cron(obj.cron_schedule, after, obj.timezone)
            if following <= after:
                following = next_cron(obj.cron_schedule, after + 1, obj.timezone)
            due = following + schedule_grace(obj, cfg) + lead
        except Exception:
            return None
    else:
        due = _late_since(obj, daemons or {}) + stopped_limit(obj, cfg)
    # Strictly after the limit (the checks compare with `>`); None once passed: it stays late until an event.
    return due + 0.001 if due >= now else None


_FIELDS = tuple(f.name for f in dataclasses.fields(AutomationObject))


def to_row(obj: AutomationObject) -> dict[str, Any]:
    """The stored form (JSON-able) of an object; `from_row` reads it back. (Not `dataclasses.asdict`: its
    deep copy was a third of a batch's cost.)"""
    row = {name: getattr(obj, name) for name in _FIELDS}
    row["owners"], row["errors"], row["tags"] = list(obj.owners), list(obj.errors), dict(obj.tags)
    return row


def from_row(row: Mapping[str, Any]) -> AutomationObject:
    values = {k: v for k, v in row.items() if k in _FIELDS}  # a field added later reads as its default
    values["owners"] = tuple(values.get("owners") or ())
    values["errors"] = tuple(values.get("errors") or ())
    return AutomationObject(**values)


def subject_of(obj: AutomationObject, downstream: tuple[str, ...] = ()) -> Subject:
    """What the health decision needs to know of an automation object besides its results (it declares no
    Dagster checks; `downstream`: what a daemon's silence stops, see `daemon_chain`)."""
    return Subject(
        key=obj.key,
        has_data=obj.last_at is not None,
        retired=obj.retired_at is not None,
        owners=obj.owners,
        code_location=obj.code_location,
        declared=frozenset(),
        kind=obj.kind,
        tags=obj.tags,
        failing=FAILING_CHECKS,
        downstream=downstream,
    )
