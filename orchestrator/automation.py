"""Tick history and daemon heartbeats of the instance as `automation` events (part of the publisher's tick).

Every publishing tick (orchestrator/sensors.py) also reads, with bounded cost,

- the tick history of every sensor and schedule of every code location (`all_instigator_state` is one query;
  only the instigators that may have a new or changed tick are read, at most `instigators_per_tick` of them,
  least recently read first, each with one indexed `get_ticks` query after the last tick it published), and
  publishes each finished tick (SUCCESS, SKIPPED with its reason, FAILURE with its error) once per status as
  `automation.tick`; a tick still STARTED is published when it finishes;
- the daemons' heartbeats (`get_daemon_heartbeats`, one query), published when a daemon's last heartbeat
  changed.

An instigator "may have a new tick" when it has none in the cursor yet, has a tick that was still STARTED,
was turned on or off since, or (sensors) its state's tick timestamps moved: the sensor daemon writes them at
the start and at the end of every tick. A schedule's state records no such thing on each tick (its
`last_iteration_timestamp` is a checkpoint written hourly), so a running schedule is read every tick.

Dagster's instance stores no definitions, so owners, tags and a schedule's timezone are known only for the
instigators of the publisher's own repository; the others carry their code location, which alerts route by.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dagster import DagsterInstance, RepositoryDefinition, ScheduleDefinition, SensorDefinition

# No public names (read in dagster 1.13.27): the instance's tick history APIs take and return these.
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorTick,
    ScheduleInstigatorData,
    SensorInstigatorData,
)

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
    new_event,
)
from libs.common.log import get_logger
from libs.common.text import clip
from orchestrator.errors import MAX_ERROR, cut_error, root_error

log = get_logger(__name__)

KINDS = {InstigatorType.SENSOR: "sensor", InstigatorType.SCHEDULE: "schedule"}
# An instigator seen for the first time publishes only its latest ticks, not its whole retained history.
FIRST_SIGHT_TICKS = 10
# Read even when the tick's time budget is spent, so tick history never starves behind an asset backlog.
MIN_INSTIGATORS_PER_TICK = 10
MAX_DAEMON_ERRORS = 10
# The cursor marker of an instigator published as removed while its state remains.
REMOVED = "removed"
# The sensor daemon and the scheduler also report a sensor's or schedule's own exception as an error of theirs
# (for five minutes). Each is already that instigator's failed tick, with its owners: published again as the
# daemon's error it would alert a second time, and go on alerting minutes after the sensor is fixed.
INSTIGATOR_ERRORS = frozenset({"SensorExecutionError", "ScheduleExecutionError"})


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass
class InstigatorCursor:
    """What was published of one sensor's or schedule's ticks."""

    last: int = -1  # highest tick id published in a finished status
    status: str = ""  # the status it was published with (a schedule retries a FAILURE tick in place)
    since: float = 0.0  # ticks from this time on (the last one and any still open) are read again
    open: list[int] = field(default_factory=list)  # tick ids seen STARTED: published when they finish
    marker: str = ""  # the instigator state's tick timestamps when last read (sensors)
    running: bool = True  # the running state last published
    read: int = 0  # the automation sequence number of the last read: least recently read go first
    key: str = ""  # health's key of it (`sensor:<location>/<name>`): what to retire when its state is deleted

    def to_json(self) -> list[Any]:
        return [self.last, self.status, self.since, self.open, self.marker, self.running, self.read, self.key]

    @classmethod
    def from_json(cls, raw: Any) -> InstigatorCursor:
        # 7 fields: a cursor from before `key` (learnt again on the instigator's next read)
        if not isinstance(raw, list) or len(raw) not in (7, 8):
            raise ValueError(f"unreadable instigator cursor {str(raw)[:100]!r}")
        last, status, since, open_ids, marker, running, read = raw[:7]
        return cls(
            last=int(last),
            status=str(status),
            since=float(since),
            open=sorted(int(i) for i in open_ids),
            marker=str(marker),
            running=bool(running),
            read=int(read),
            key=str(raw[7]) if len(raw) == 8 else "",
        )


@dataclass
class AutomationCursor:
    """The automation part of the publisher's cursor: per instigator (selector id), and per daemon type."""

    instigators: dict[str, InstigatorCursor] = field(default_factory=dict)
    daemons: dict[str, float] = field(default_factory=dict)  # daemon type -> last heartbeat published
    seq: int = 0

    def __bool__(self) -> bool:
        return bool(self.instigators or self.daemons or self.seq)

    def to_json(self) -> dict[str, Any]:
        return {
            "i": {sid: c.to_json() for sid, c in sorted(self.instigators.items())},
            "d": dict(sorted(self.daemons.items())),
            "n": self.seq,
        }

    @classmethod
    def from_json(cls, raw: Any) -> AutomationCursor:
        if not isinstance(raw, dict):
            raise ValueError(f"unreadable automation cursor {str(raw)[:100]!r}")
        return cls(
            instigators={str(k): InstigatorCursor.from_json(v) for k, v in dict(raw.get("i") or {}).items()},
            daemons={str(k): float(v) for k, v in dict(raw.get("d") or {}).items()},
            seq=int(raw.get("n") or 0),
        )

    def copy(self) -> AutomationCursor:
        return AutomationCursor.from_json(self.to_json())


@dataclass
class _Instigator:
    """What every tick event of one instigator repeats."""

    kind: str
    name: str
    code_location: str
    repository: str
    running: bool
    interval_s: float | None = None
    cron_schedule: str | None = None
    timezone: str | None = None
    owners: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


def _marker(state: InstigatorState) -> str:
    data = state.instigator_data
    if isinstance(data, SensorInstigatorData):
        return f"{data.last_tick_start_timestamp}|{data.last_tick_timestamp}"
    return ""


class AutomationReader:
    """Builds the automation events of one publishing tick; moves the AutomationCursor it is given."""

    def __init__(
        self,
        instance: DagsterInstance,
        *,
        code_location: str,
        source: str,
        instigators_per_tick: int = 200,
        ticks_per_instigator: int = 100,
    ) -> None:
        self.instance = instance
        self.code_location = code_location
        self.source = source
        self.instigators_per_tick = max(0, instigators_per_tick)
        self.ticks_per_instigator = max(1, ticks_per_instigator)

    # -- tick history

    def _due(self, state: InstigatorState, entry: InstigatorCursor | None) -> bool:
        if entry is None or entry.open or state.is_running != entry.running:
            return True
        if not state.is_running:
            return False  # a stopped instigator does not tick
        return state.instigator_type == InstigatorType.SCHEDULE or _marker(state) != entry.marker

    def tick_events(
        self, cursor: AutomationCursor, repository: RepositoryDefinition | None, deadline: float
    ) -> tuple[list[Event], int]:
        """The events of new or changed ticks, and how many instigators that may have some were not read."""
        if not self.instigators_per_tick or self.instance.schedule_storage is None:
            return [], 0  # off, or an instance without schedule storage (no sensors or schedules to read)
        states = [s for s in self.instance.all_instigator_state() if s.instigator_type in KINDS]
        present = {s.selector_id for s in states}
        removed: list[Event] = []
        for gone in [sid for sid in cursor.instigators if sid not in present]:
            # Its state was deleted: the scheduler deletes the state of a schedule that its code location,
            # loaded without error, no longer has (at once when it was declared in code, 12 hours later when
            # it was turned on or off by hand), never while the location fails to load.
            entry = cursor.instigators.pop(gone)
            if entry.key and entry.marker != REMOVED:  # (not twice: published when it left the code)
                removed.append(self._removed(entry.key))
        # The sensor daemon deletes no state: a sensor gone from the code keeps its state, without ticks.
        # The publisher's own code location is loaded (it runs in it): what its repository no longer defines
        # is gone, published once (the cursor keeps it, marked, until it is defined again).
        undefined = [s for s in states if self._undefined(s, repository)]
        for state in undefined:
            known = cursor.instigators.get(state.selector_id)
            if known is None or known.marker != REMOVED:
                info = self._describe(state, None)
                key = f"{info.kind}:{info.code_location}/{info.name}"
                removed.append(self._removed(key))
                cursor.instigators[state.selector_id] = dataclasses.replace(
                    known or InstigatorCursor(), marker=REMOVED, open=[], key=key
                )
        skip = {s.selector_id for s in undefined}
        states = [s for s in states if s.selector_id not in skip]
        due = [s for s in states if self._due(s, cursor.instigators.get(s.selector_id))]
        if not due:
            return removed, 0
        due.sort(
            key=lambda s: (
                cursor.instigators[s.selector_id].read if s.selector_id in cursor.instigators else -1,
                s.selector_id,
            )
        )
        cursor.seq += 1
        events: list[Event] = removed
        read = 0
        for state in due[: self.instigators_per_tick]:
            if read >= MIN_INSTIGATORS_PER_TICK and time.monotonic() >= deadline:
                break
            events.extend(self._read(state, cursor, repository))
            read += 1
        return events, len(due) - read

    def _undefined(self, state: InstigatorState, repository: RepositoryDefinition | None) -> bool:
        """The instigator belongs to the publisher's own repository, which does not define it (any more)."""
        origin = state.origin.repository_origin
        if repository is None or origin.code_location_origin.location_name != self.code_location:
            return False
        if origin.repository_name != repository.name:
            return False
        if state.instigator_type == InstigatorType.SENSOR:
            return not repository.has_sensor_def(state.name)
        return not repository.has_schedule_def(state.name)

    def _read(
        self, state: InstigatorState, cursor: AutomationCursor, repository: RepositoryDefinition | None
    ) -> list[Event]:
        previous = cursor.instigators.get(state.selector_id)
        entry = previous or InstigatorCursor()
        limit = self.ticks_per_instigator if previous else FIRST_SIGHT_TICKS
        # `after` is exclusive and times are stored to the microsecond: a second back re-reads the last tick.
        ticks = sorted(
            self.instance.get_ticks(
                state.instigator_origin_id,
                state.selector_id,
                after=entry.since - 1.0 if entry.since else None,
                limit=limit,
            ),
            key=lambda t: t.tick_id,
        )
        behind = entry.last >= 0 and all(t.tick_id > entry.last for t in ticks)
        if previous and len(ticks) == limit and behind:
            # More new ticks than one read takes: the older ones in between are not published.
            log.warning(
                "automation_ticks_skipped",
                instigator=state.name,
                after_tick=entry.last,
                first_read=ticks[0].tick_id,
                limit=limit,
            )
        info = self._describe(state, repository)
        open_before = set(entry.open)
        still_open: list[int] = []
        last, status = entry.last, entry.status
        events: list[Event] = []
        for tick in ticks:
            tick_id, tick_status = tick.tick_id, tick.status.value
            if tick_status == "STARTED":
                if tick_id > entry.last or tick_id in open_before:
                    still_open.append(tick_id)
                continue
            changed = tick_id == entry.last and tick_status != entry.status
            if tick_id > entry.last or tick_id in open_before or changed:
                events.append(self._tick_event(tick, info))
                if tick_id >= last:
                    last, status = tick_id, tick_status
        if previous and not events and info.running != entry.running:
            # Turned on or off without a new tick: its latest tick again, so consumers learn the state.
            latest = next((t for t in ticks if t.tick_id == last and t.status.value == status), None)
            if latest is not None:
                suffix = ":running" if info.running else ":stopped"
                events.append(self._tick_event(latest, info, suffix=suffix))
        times = [t.timestamp for t in ticks if t.tick_id == last or t.tick_id in still_open]
        cursor.instigators[state.selector_id] = InstigatorCursor(
            last=last,
            status=status,
            since=min(times) if times else entry.since,
            open=still_open,
            marker=_marker(state),
            running=info.running,
            read=cursor.seq,
            key=f"{info.kind}:{info.code_location}/{info.name}",
        )
        return events

    def _removed(self, key: str) -> Event:
        now = datetime.now(UTC)
        return new_event(
            AutomationRemoved,
            "automation.removed",
            identity=f"{key}:{now.timestamp()!r}",
            data=AutomationRemovedData(
                object_key=key,
                reason="its state was deleted from the Dagster instance: no longer in its code location",
            ),
            source=self.source,
            occurred_at=now,
        )

    def _describe(self, state: InstigatorState, repository: RepositoryDefinition | None) -> _Instigator:
        repo_origin = state.origin.repository_origin
        info = _Instigator(
            kind=KINDS[state.instigator_type],
            name=state.name,
            code_location=repo_origin.code_location_origin.location_name,
            repository=repo_origin.repository_name,
            running=state.is_running,
        )
        data = state.instigator_data
        if isinstance(data, SensorInstigatorData) and data.min_interval:
            info.interval_s = float(data.min_interval)
        elif isinstance(data, ScheduleInstigatorData):
            cron = data.cron_schedule
            info.cron_schedule = cron if isinstance(cron, str) else "; ".join(cron)
        definition = self._definition(info, repository)
        if definition is not None:
            info.owners = [str(o) for o in definition.owners or []]
            info.tags = {str(k): str(v) for k, v in definition.tags.items()}
            if isinstance(definition, SensorDefinition) and info.interval_s is None:
                interval = definition.minimum_interval_seconds
                info.interval_s = float(interval) if interval else None
            elif isinstance(definition, ScheduleDefinition):
                info.timezone = definition.execution_timezone
        return info

    def _definition(
        self, info: _Instigator, repository: RepositoryDefinition | None
    ) -> SensorDefinition | ScheduleDefinition | None:
        if repository is None:
            return None
        if info.code_location != self.code_location or info.repository != repository.name:
            return None
        if info.kind == "sensor" and repository.has_sensor_def(info.name):
            return repository.get_sensor_def(info.name)
        if info.kind == "schedule" and repository.has_schedule_def(info.name):
            return repository.get_schedule_def(info.name)
        return None

    def _tick_event(self, tick: InstigatorTick, info: _Instigator, suffix: str = "") -> Event:
        status = tick.status.value
        data = AutomationTickData(
            kind=info.kind,
            name=info.name,
            code_location=info.code_location,
            repository=info.repository,
            tick_id=tick.tick_id,
            status=status,
            tick_at=_ts(tick.timestamp),
            error=cut_error(root_error(tick.error)) if status == "FAILURE" else None,
            skip_reason=clip(tick.skip_reason, MAX_ERROR) if tick.skip_reason else None,
            run_ids=list(tick.run_ids),
            running=info.running,
            interval_s=info.interval_s,
            cron_schedule=info.cron_schedule,
            timezone=info.timezone,
            owners=info.owners,
            tags=info.tags,
        )
        return new_event(
            AutomationTicked,
            "automation.tick",
            identity=f"{tick.tick_id}:{status}{suffix}",
            data=data,
            source=self.source,
            occurred_at=_ts(tick.end_timestamp or tick.timestamp),
        )

    # -- heartbeats

    def daemon_events(self, cursor: AutomationCursor) -> list[Event]:
        """One event per daemon whose last heartbeat changed since the last one published."""
        events: list[Event] = []
        for daemon_type, beat in sorted(self.instance.get_daemon_heartbeats().items()):
            if cursor.daemons.get(daemon_type) == beat.timestamp:
                continue
            own = [e for e in beat.errors or [] if e.cls_name not in INSTIGATOR_ERRORS]
            errors = [cut_error(root_error(e)) or "" for e in own[:MAX_DAEMON_ERRORS]]
            events.append(
                new_event(
                    DaemonHeartbeat,
                    "automation.daemon_heartbeat",
                    identity=f"{daemon_type}:{beat.timestamp!r}",
                    data=DaemonHeartbeatData(
                        daemon_type=daemon_type, last_heartbeat_at=_ts(beat.timestamp), errors=errors
                    ),
                    source=self.source,
                    occurred_at=_ts(beat.timestamp),
                )
            )
            cursor.daemons[daemon_type] = beat.timestamp
        return events

    def heartbeat(self, *, published: int, caught_up: bool, interval_s: float | None) -> Event:
        """The publisher's own heartbeat, sent at the end of every tick."""
        now = datetime.now(UTC)
        return new_event(
            PublisherHeartbeat,
            "automation.publisher_heartbeat",
            identity=f"{self.code_location}:{now.timestamp()!r}",
            data=PublisherHeartbeatData(
                code_location=self.code_location,
                tick_at=now,
                published=published,
                caught_up=caught_up,
                interval_s=interval_s,
            ),
            source=self.source,
            occurred_at=now,
        )
