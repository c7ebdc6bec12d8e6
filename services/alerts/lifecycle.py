"""The alert state machine: a pure function of (state, input, now, config) → (state, notices, history).

One state per fingerprint (asset, check). A fingerprint lives through incidents: each time its check starts
failing a new incident opens (firing) and it closes when the check passes again (resolved).

Notification rules (Alertmanager-like, tuned for low latency):

* firing: once the incident has been firing for `group_wait_s` (0 = at once) and is not silenced; after a
  resolved notice of the same fingerprint, not before `flap_window_s` has passed, so a flapping check
  sends at most one firing/resolved pair per window;
* escalated: the severity rose above the one last announced (not while silenced);
* repeat: still firing, not acknowledged, not silenced, `repeat_interval_s` after the last notice;
* resolved: at once when an incident that was announced as firing resolves, whatever its ack or silence;
* observations read from a backlog move the state, timed by the evaluation, but announce nothing while
  they are the latest (`held`): a later one of the backlog may supersede them. Held `replay`: health was
  replaying history (`Observe.replay`); its confirmation once caught up, an observation that is not
  replayed, releases it. Held `backlog`: this worker read it while behind (`Observe.behind`); `Release`
  frees it once the worker has caught up. Released, a firing alert is announced at once (a held resolution
  never starts a flap window). The end of an alert that was announced is still announced from a backlog.

Each call yields at most one notice. Nothing here reads the clock, the store or the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Severity = Literal["critical", "error", "warning", "info"]
NoticeKind = Literal["firing", "escalated", "repeat", "resolved"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "error": 2, "critical": 3}


@dataclass(frozen=True)
class LifecycleConfig:
    """The timing knobs of the state machine (from `settings.alerts`)."""

    group_wait_s: float = 0.0
    flap_window_s: float = 300.0
    repeat_interval_s: float = 4 * 3600.0


@dataclass(frozen=True)
class AlertState:
    """Everything the machine remembers about one fingerprint."""

    fingerprint: str
    incident: int = 0  # 0: never fired
    firing: bool = False
    severity: Severity | None = None
    summary: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)
    active_since: float | None = None
    resolved_at: float | None = None
    observed_at: float | None = None  # evaluation time of the newest observation applied
    notified: Literal["firing", "resolved"] | None = None  # last notice of the current incident
    notified_severity: Severity | None = None
    last_notified_at: float | None = None
    last_resolved_notice_at: float | None = None  # across incidents: the flap window starts here
    notices: int = 0  # notices emitted for this fingerprint so far (makes notice ids unique)
    acked_by: str | None = None
    acked_at: float | None = None
    ack_reason: str | None = None
    silence_id: str | None = None
    silenced_until: float | None = None
    held: Literal["replay", "backlog"] | None = None  # the latest observation came from a backlog

    @property
    def silenced(self) -> bool:
        return self.silenced_until is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (for the store)."""
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["values"] = dict(self.values)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertState:
        """The inverse of :meth:`to_dict` (unknown keys ignored, so old rows stay readable)."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


# -- inputs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observe:
    """A check result: `firing` when the check did not pass. `at` is when it was evaluated."""

    firing: bool
    at: float
    severity: Severity = "error"
    summary: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)
    replay: bool = False  # evaluated while health replayed history: a state the backlog may supersede
    behind: bool = False  # read while this worker was behind: a later event of its backlog may supersede it


@dataclass(frozen=True)
class Ack:
    by: str
    reason: str | None = None


@dataclass(frozen=True)
class Silence:
    silence_id: str
    until: float
    by: str
    reason: str | None = None


@dataclass(frozen=True)
class Unsilence:
    silence_id: str
    by: str
    reason: str | None = None


@dataclass(frozen=True)
class Tick:
    """The clock moved; only time-driven transitions can happen."""


@dataclass(frozen=True)
class Release:
    """This worker caught up with its backlog: what it held for that reason is current."""


Input = Observe | Ack | Silence | Unsilence | Tick | Release


# -- outputs -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """A notification the machine decided to send (routed and delivered elsewhere)."""

    kind: NoticeKind
    fingerprint: str
    incident: int
    seq: int  # unique per fingerprint
    severity: Severity | None
    summary: str
    values: Mapping[str, Any]
    at: float
    started_at: float | None
    resolved_at: float | None

    @property
    def key(self) -> str:
        """A stable identity of this notice (notification ids derive from it)."""
        return f"{self.fingerprint}:{self.incident}:{self.seq}:{self.kind}"


@dataclass(frozen=True)
class HistoryEntry:
    """One state change, with who did it and why."""

    event: str
    incident: int
    at: float
    actor: str
    reason: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    state: AlertState
    notices: tuple[Notice, ...] = ()
    history: tuple[HistoryEntry, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.notices or self.history)


# -- the machine -------------------------------------------------------------------------------------------


def step(state: AlertState, inp: Input, now: float, config: LifecycleConfig) -> Step:
    """Apply one input at time `now`; returns the new state, at most one notice, and the history."""
    s = state
    history: list[HistoryEntry] = []

    def record(event: str, actor: str, reason: str | None = None, **detail: Any) -> None:
        history.append(
            HistoryEntry(event=event, incident=s.incident, at=now, actor=actor, reason=reason, detail=detail)
        )

    if isinstance(inp, Observe):
        if s.observed_at is not None and inp.at < s.observed_at:
            return Step(state)  # stale: a newer evaluation was already applied
        # An observation from a backlog is timed by its evaluation, not by when it was read.
        held: Literal["replay", "backlog"] | None = (
            "replay" if inp.replay else "backlog" if inp.behind else None
        )
        at = inp.at if held else now
        s = replace(s, observed_at=inp.at, held=held)
        if inp.firing and not s.firing:
            s = replace(
                s,
                incident=s.incident + 1,
                firing=True,
                severity=inp.severity,
                summary=inp.summary,
                values=dict(inp.values),
                active_since=at,
                resolved_at=None,
                notified=None,
                notified_severity=None,
                acked_by=None,
                acked_at=None,
                ack_reason=None,
            )
            record("firing", "check", inp.summary, severity=inp.severity)
        elif inp.firing:
            if inp.severity != s.severity:
                record("severity_changed", "check", inp.summary, previous=s.severity, severity=inp.severity)
            s = replace(s, severity=inp.severity, summary=inp.summary, values=dict(inp.values))
        elif s.firing:
            s = replace(s, firing=False, resolved_at=at)
            record("resolved", "check", inp.summary or "check passed")
    elif isinstance(inp, Ack):
        if s.firing and s.acked_by is None:
            s = replace(s, acked_by=inp.by, acked_at=now, ack_reason=inp.reason)
            record("acknowledged", inp.by, inp.reason)
    elif isinstance(inp, Silence):
        if inp.until > now and (
            s.silenced_until is None or s.silence_id == inp.silence_id or inp.until > s.silenced_until
        ):
            s = replace(s, silence_id=inp.silence_id, silenced_until=inp.until)
            record("silenced", inp.by, inp.reason, silence_id=inp.silence_id, until=inp.until)
    elif isinstance(inp, Release) and s.held == "backlog":
        s = replace(s, held=None)
    elif isinstance(inp, Unsilence) and s.silence_id == inp.silence_id:
        s = replace(s, silence_id=None, silenced_until=None)
        record("unsilenced", inp.by, inp.reason, silence_id=inp.silence_id)

    if s.silenced_until is not None and now >= s.silenced_until:
        record("silence_expired", "system", None, silence_id=s.silence_id)
        s = replace(s, silence_id=None, silenced_until=None)

    kind = _due(s, now, config)
    if kind is None:
        return Step(s, (), tuple(history))
    notice = Notice(
        kind=kind,
        fingerprint=s.fingerprint,
        incident=s.incident,
        seq=s.notices + 1,
        severity=s.severity,
        summary=s.summary,
        values=s.values,
        at=now,
        started_at=s.active_since,
        resolved_at=s.resolved_at,
    )
    if kind == "resolved":
        flap_from = s.last_resolved_notice_at if s.held else now
        s = replace(
            s,
            notified="resolved",
            last_notified_at=now,
            last_resolved_notice_at=flap_from,
            notices=notice.seq,
        )
    else:
        s = replace(
            s, notified="firing", notified_severity=s.severity, last_notified_at=now, notices=notice.seq
        )
    record("announced", "system", None, kind=kind)
    return Step(s, (notice,), tuple(history))


def _due(s: AlertState, now: float, config: LifecycleConfig) -> NoticeKind | None:
    if not s.firing:
        return "resolved" if s.notified == "firing" else None
    if s.silenced or s.held:
        return None
    if s.notified != "firing":
        due_at = (now if s.active_since is None else s.active_since) + config.group_wait_s
        if s.last_resolved_notice_at is not None:
            due_at = max(due_at, s.last_resolved_notice_at + config.flap_window_s)
        return "firing" if now >= due_at else None
    if SEVERITY_RANK.get(s.severity or "", 0) > SEVERITY_RANK.get(s.notified_severity or "", 0):
        return "escalated"
    if (
        s.acked_by is None
        and s.last_notified_at is not None
        and now >= s.last_notified_at + config.repeat_interval_s
    ):
        return "repeat"
    return None


def next_due(s: AlertState, config: LifecycleConfig) -> float | None:
    """The earliest time a Tick could change this state (a wait ending, a repeat, a silence expiring)."""
    times: list[float] = []
    if s.silenced_until is not None:
        times.append(s.silenced_until)
    if s.firing and not s.silenced and not s.held:
        if s.notified != "firing":
            due_at = (0.0 if s.active_since is None else s.active_since) + config.group_wait_s
            if s.last_resolved_notice_at is not None:
                due_at = max(due_at, s.last_resolved_notice_at + config.flap_window_s)
            times.append(due_at)
        elif s.acked_by is None and s.last_notified_at is not None:
            times.append(s.last_notified_at + config.repeat_interval_s)
    return min(times) if times else None
