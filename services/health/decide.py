"""The health transition: a pure function of (previous state, new check results, now) → decision.

`decide` says what one evaluation of one asset means: the asset's new status and signature, the
health.changed event to publish (when the signature changed), and the check results to report to Dagster.
It reads no clock, store or network; the service applies the decision (rows, outbox, reports, metrics).

Rules:

* The *signature* is the status plus the outcome of every check that is not `passed`. A health.changed
  event is published exactly when it changes, numbered 1, 2, 3... per asset (`transition`); an evaluation
  that only changes a reason's text or numbers publishes nothing.
* Checks are reported to Dagster after every evaluation triggered by new facts (`Trigger.EVENTS`), and
  after a time-driven one (`Trigger.CLOCK`) only when the signature changed, so that a full pass over every
  asset each minute does not post every check of every asset.
* Catch-up (`replay=True`: history being replayed, judged as of its own time): the events published are
  marked `replay`, a state the rest of the backlog may supersede, for which no one is paged. The first
  evaluation on the wall clock after a replayed one publishes the asset again when something fails, even
  with an unchanged signature: that confirmation is what the alerts announce.

This is where rules about *when* a finding counts belong (a catch-up that must not judge old history
against the wall clock): they are decisions over the previous state, the results and the trigger, testable
with two lists. What a run means for an asset is the evaluators' (a run that only skipped the asset because
an upstream failed is a `warn` of `execution_status`, never an `error`: `evaluators.run_outcomes`), so the
status here stays "the worst check", and a blocked asset is at most WARNING.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from libs.common.events import (
    CheckName,
    CheckOutcome,
    CheckResult,
    HealthChanged,
    HealthChangedData,
    HealthStatus,
    dagster_check_name,
    new_event,
)

SOURCE = "health"
_RANK: dict[str, int] = {"passed": 0, "warn": 1, "error": 2}
# An error of these checks makes the subject FAILED (an asset's own execution); of any other, DEGRADED.
_FAILING: frozenset[str] = frozenset({CheckName.EXECUTION})


class Trigger(StrEnum):
    """Why an asset is evaluated."""

    EVENTS = "events"  # new facts about the asset (or its upstreams) were recorded
    CLOCK = "clock"  # the periodic pass: freshness and running-time limits move with time


@dataclass(frozen=True, slots=True)
class HealthState:
    """What the transition remembers of an asset: its last published status and signature."""

    status: HealthStatus = HealthStatus.UNKNOWN
    signature: str = "UNKNOWN|"
    transitions: int = 0
    outcomes: Mapping[str, CheckOutcome] = field(default_factory=dict)
    stored: bool = False  # evaluated before (a row exists in asset_health)
    replayed: bool = False  # the last evaluation was made while history was replayed (catch-up)


@dataclass(frozen=True, slots=True)
class Subject:
    """What the decision needs to know about the asset besides its results."""

    key: str
    has_data: bool
    retired: bool = False
    owners: tuple[str, ...] = ()
    downstream: tuple[str, ...] = ()
    group: str | None = None
    code_location: str | None = None
    # The checks the asset's definitions declare (spec.checks, Dagster's names), None while its spec is
    # unknown: only our declared checks (`dagster_check_name`) are reported to Dagster, so a team that did
    # not add `with_health_checks` gets no undeclared check results in its instance, and a check of its own
    # that shares one of our names (`freshness`) is never reported to.
    declared: frozenset[str] | None = None
    # An automation object (`automation.py`) instead of an asset: its kind, tags, and the checks whose error
    # means FAILED.
    kind: str = "asset"
    tags: Mapping[str, str] = field(default_factory=dict)
    failing: frozenset[str] = _FAILING


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one evaluation: the next state, the event to publish (if any), what to report."""

    key: str
    status: HealthStatus
    signature: str
    reasons: list[str]
    results: list[CheckResult]
    state: HealthState
    event: HealthChanged | None
    report: tuple[CheckResult, ...]

    @property
    def changed(self) -> bool:
        return self.event is not None


def health_status(
    results: Sequence[CheckResult], *, has_data: bool, retired: bool, failing: frozenset[str] = _FAILING
) -> HealthStatus:
    """The worst of the checks: an error of a `failing` check (an asset's execution) → FAILED, any other
    error → DEGRADED, a warning → WARNING, else HEALTHY; UNKNOWN for a retired asset or one with nothing on
    record and nothing wrong."""
    if retired:
        return HealthStatus.UNKNOWN
    outcomes = {r.check: r.outcome for r in results}
    if any(outcomes.get(check) == "error" for check in failing):
        return HealthStatus.FAILED
    if "error" in outcomes.values():
        return HealthStatus.DEGRADED
    if "warn" in outcomes.values():
        return HealthStatus.WARNING
    return HealthStatus.HEALTHY if has_data else HealthStatus.UNKNOWN


def reasons_of(
    results: Sequence[CheckResult], status: HealthStatus, *, retired: bool, kind: str = "asset"
) -> list[str]:
    """The reasons behind `status`: every non-passed check, worst first."""
    if retired:  # a retired automation object's results say why and since when
        return [results[0].reason] if kind != "asset" and results else [f"{kind} retired"]
    bad = sorted((r for r in results if r.outcome != "passed"), key=lambda r: -_RANK[r.outcome])
    if bad:
        return [f"{r.check} ({r.outcome}): {r.reason}" for r in bad]
    return ["no run or materialization on record yet"] if status == HealthStatus.UNKNOWN else []


def signature(status: HealthStatus, results: Sequence[CheckResult]) -> str:
    """What must change for a health.changed event: the status and each non-passed check's outcome."""
    failing = sorted((r for r in results if r.outcome != "passed"), key=lambda r: r.check)
    return str(status) + "|" + ",".join(f"{r.check}={r.outcome}" for r in failing)


def decide(
    previous: HealthState,
    results: Sequence[CheckResult],
    now: float,
    subject: Subject,
    trigger: Trigger,
    *,
    replay: bool = False,
) -> Decision:
    """The transition of one asset from `previous` given its new `results`, evaluated at `now` (during a
    catch-up, `replay`: the time of the history being replayed)."""
    results = list(results)
    status = health_status(
        results, has_data=subject.has_data, retired=subject.retired, failing=subject.failing
    )
    sig = signature(status, results)
    reasons = reasons_of(results, status, retired=subject.retired, kind=subject.kind)
    outcomes = {r.check: r.outcome for r in results}
    event: HealthChanged | None = None
    transitions = previous.transitions
    confirm = previous.replayed and not replay and "=" in sig  # caught up, and something fails
    if sig != previous.signature or confirm:
        transitions += 1
        evaluated_at = datetime.fromtimestamp(now, UTC)
        data = HealthChangedData(
            asset_key=subject.key,
            status=status,
            previous_status=previous.status,
            checks=results,
            reasons=reasons,
            evaluated_at=evaluated_at,
            owners=list(subject.owners),
            downstream=list(subject.downstream),
            transition=transitions,
            group=subject.group,
            code_location=subject.code_location,
            changed_checks=[
                r.check for r in results if previous.outcomes.get(r.check, "passed") != r.outcome
            ],
            replay=replay,
            object_kind=subject.kind,
            tags=dict(subject.tags),
        )
        # The evaluation time is part of the identity: a health.db rebuilt from scratch numbers its
        # transitions from 1 again, and those must not collide with ids consumers already processed.
        event = new_event(
            HealthChanged,
            "health.changed",
            identity=f"{subject.key}:{transitions}:{now!r}",
            data=data,
            source=SOURCE,
            occurred_at=evaluated_at,
        )
        state = HealthState(status, sig, transitions, outcomes, stored=True, replayed=replay)
    else:
        state = HealthState(
            previous.status, previous.signature, transitions, outcomes, stored=True, replayed=replay
        )
    reportable = [
        r for r in results if subject.declared is None or dagster_check_name(r.check) in subject.declared
    ]
    report = tuple(reportable) if event is not None or trigger is Trigger.EVENTS else ()
    return Decision(subject.key, status, sig, reasons, results, state, event, report)
