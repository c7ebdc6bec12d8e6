"""Event schemas: one pydantic envelope with a typed payload discriminated by `type`.

Ids are deterministic (UUIDv5 of the event type and its source identity), so republishing the same fact
yields the same id and every consumer can recognise a redelivery.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, field_validator

SCHEMA_VERSION = 1
_ID_NAMESPACE = uuid.UUID("6f1c1f0e-7d1a-4f55-9a57-2f1c8c7c0a11")

# Stream names (keys are `<prefix>:<stream>`).
CATALOG = "catalog"
RUNS = "runs"
ASSETS = "assets"
ASSET_CHANGES = "asset-changes"
HEALTH = "health"
AUTOMATION = "automation"
STREAMS = (CATALOG, RUNS, ASSETS, ASSET_CHANGES, HEALTH, AUTOMATION)


class CheckName(StrEnum):
    """The health evaluators, one Dagster asset check per asset, named `dagster_check_name(check)` there
    (declared by the orchestrator, reported by the health service through the webserver's
    /report_asset_check/ endpoint). The order is the order of `HealthChangedData.checks` and of the CLI's
    listings."""

    EXECUTION = "execution_status"
    VOLUME = "volume_anomaly"
    DURATION = "duration_anomaly"
    FRESHNESS = "freshness"
    DEPENDENCIES = "dependencies"
    SCHEMA = "schema_drift"


CHECK_NAMES: tuple[CheckName, ...] = tuple(CheckName)

# Dagster knows a check by (asset key, name) only: its /report_asset_check/ endpoint takes a name, and its
# GraphQL API shows no check metadata. A team's own check may well be called `freshness`, so ours are
# declared and reported under names of their own, `ams_<check>` (`ams_freshness`); the CLI, events, alerts
# and metrics keep the plain `CheckName`.
DAGSTER_CHECK_PREFIX = "ams_"


def dagster_check_name(check: str) -> str:
    """The name of our check `check` in Dagster (`freshness` → `ams_freshness`)."""
    return f"{DAGSTER_CHECK_PREFIX}{check}"


class HealthStatus(StrEnum):
    """An asset's health, worst first (the order of every listing)."""

    FAILED = "FAILED"
    DEGRADED = "DEGRADED"
    WARNING = "WARNING"
    HEALTHY = "HEALTHY"
    UNKNOWN = "UNKNOWN"

    @property
    def rank(self) -> int:
        """0 for FAILED ... 4 for UNKNOWN: sort by it for worst first."""
        return _STATUS_RANK[self]


_STATUS_RANK = {status: i for i, status in enumerate(HealthStatus)}
UNHEALTHY: frozenset[HealthStatus] = frozenset(
    {HealthStatus.FAILED, HealthStatus.DEGRADED, HealthStatus.WARNING}
)


# Integers a store can hold (SQLite and PostgreSQL BIGINT: signed 64 bits); a larger one is an invalid
# event (dead-lettered when read), never an OverflowError in a handler, retried until dead-lettered.
MAX_INT = 2**63 - 1
Count = Annotated[int, Field(ge=0, le=MAX_INT)]
# A run or materialization lasting longer than this (about 31 years) is not a duration but a mistake.
Seconds = Annotated[float, Field(ge=0, le=1e9)]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


_MIN_TS = datetime(1, 1, 2, tzinfo=UTC).timestamp()
_MAX_TS = datetime(9999, 12, 30, tzinfo=UTC).timestamp()


def from_timestamp(ts: float) -> datetime:
    """The UTC time of epoch seconds `ts`, clamped to what a datetime can hold: a stored time out of range
    (written before it was bounded) never crashes a listing."""
    if not ts < _MAX_TS:  # NaN too
        return datetime.fromtimestamp(_MAX_TS, UTC)
    return datetime.fromtimestamp(max(ts, _MIN_TS), UTC)


def event_id(event_type: str, identity: str) -> str:
    """The deterministic id of the event of `event_type` about `identity`."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{event_type}|{identity}"))


class _Payload(BaseModel):
    # Tolerate fields added by newer producers.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Column(_Payload):
    name: str
    type: str = ""
    description: str | None = None


class RunData(_Payload):
    run_id: str
    job_name: str
    status: Literal["STARTED", "SUCCESS", "FAILURE", "CANCELED"]
    asset_keys: list[str] = Field(default_factory=list)
    started_at: AwareDatetime | None = None
    ended_at: AwareDatetime | None = None
    duration_s: Seconds | None = None
    error: str | None = None
    code_location: str | None = None
    partition: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    # Of a failed run: the planned assets that failed on their own (their step failed, or the run died before
    # they materialized); the others it did not materialize were blocked by those. None: the producer does
    # not say (then each unmaterialized asset of a failed run counts as failed).
    failed_asset_keys: list[str] | None = None


class MaterializationData(_Payload):
    asset_key: str
    run_id: str
    storage_id: Count | None = None
    partition: str | None = None
    row_count: Count | None = None
    column_schema: list[Column] | None = None
    duration_s: Seconds | None = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


class MaterializationFailedData(_Payload):
    asset_key: str
    run_id: str
    storage_id: Count | None = None
    partition: str | None = None
    error: str | None = None


_FRESHNESS_TEXTS = ("kind", "deadline_cron", "cron_schedule", "timezone", "cron_schedule_timezone")


class AssetSpecData(_Payload):
    """Everything the system knows about one asset's definition (event-carried state)."""

    key: str
    group: str | None = None
    description: str | None = None
    owners: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    kinds: list[str] = Field(default_factory=list)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    code_version: str | None = None
    partitioning: str | None = None
    source_file: str | None = None
    source_line: Count | None = None
    code_location: str | None = None
    upstream: list[str] = Field(default_factory=list)
    downstream: list[str] = Field(default_factory=list)
    freshness: dict[str, JsonValue] | None = None
    checks: list[str] = Field(default_factory=list)
    # The team's jobs that run the asset (Dagster's `jobNames`, without its own implicit `__ASSET_JOB`:
    # `user_job_names`) and the repository of its code location that defines it (`__repository__` for a
    # `Definitions`). Both are part of the definition (a new version when they change).
    job_names: list[str] = Field(default_factory=list)
    repository: str | None = None

    @field_validator("freshness")
    @classmethod
    def _readable_freshness(cls, value: dict[str, JsonValue] | None) -> dict[str, JsonValue] | None:
        """A serialized freshness policy (see orchestrator.catalog): its durations (`*_s`, `*_seconds`,
        `*_minutes`) are numbers from 0 to 1e9, its cron and time zone texts; anything else would fail every
        consumer that reads it."""
        for key, item in (value or {}).items():
            if item is None:
                continue
            if key.endswith(("_s", "_seconds", "_minutes")):
                if isinstance(item, bool) or not isinstance(item, int | float) or not 0 <= item <= 1e9:
                    raise ValueError(
                        f"freshness.{key} must be a number of {key.rsplit('_', 1)[1]} "
                        f"from 0 to 1e9, got {str(item)[:40]!r}"
                    )
            elif key in _FRESHNESS_TEXTS and not isinstance(item, str):
                raise ValueError(f"freshness.{key} must be a text, got {str(item)[:40]!r}")
        return value


def user_job_names(names: Iterable[str]) -> list[str]:
    """A team's own job names among an asset's jobs, sorted: Dagster's implicit jobs (`__ASSET_JOB`, named
    with a leading `__`) run every asset and tell nothing."""
    return sorted({n for n in names if not n.startswith("__")})


def snapshot_fingerprint(assets: Sequence[AssetSpecData], problems: Sequence[str]) -> str:
    """A stable hash of a catalog snapshot's content, independent of the order of its assets and problems.

    Each asset as pydantic serializes it (fields in definition order, a mapping's keys in the order read:
    the same definitions read the same way hash the same; a different order only costs the registry a
    comparison by content, never a version). Five times faster than canonical JSON at 10,000 assets."""
    digest = hashlib.sha256()
    for asset in sorted(assets, key=lambda a: a.key):
        digest.update(asset.model_dump_json().encode())
        digest.update(b"\n")
    digest.update(json.dumps(sorted(problems)).encode())
    return digest.hexdigest()[:32]


class CatalogSnapshotData(_Payload):
    code_location: str
    fingerprint: str
    assets: list[AssetSpecData]
    problems: list[str] = Field(default_factory=list)


class DiscoveryRequestData(_Payload):
    code_location: str | None = None
    requested_by: str = "cli"


class AssetChangeData(_Payload):
    spec: AssetSpecData
    version: int = Field(ge=1, le=MAX_INT)
    changes: dict[str, JsonValue] = Field(default_factory=dict)
    retired_at: AwareDatetime | None = None


CheckOutcome = Literal["passed", "warn", "error"]


class CheckResult(_Payload):
    check: str
    outcome: CheckOutcome
    reason: str
    values: dict[str, JsonValue] = Field(default_factory=dict)


class HealthChangedData(_Payload):
    """A change of one asset's health, published by the health service on stream HEALTH.

    Published exactly when the asset's *signature* changes: its status, or the set of checks whose outcome is
    not `passed`, or the outcome (warn/error) of one of those. So a second check starting to fail while the
    asset is already FAILED publishes an event with the same `status` and `previous_status`, and a check
    that recovers while another keeps failing publishes one too. An evaluation that changes only a reason's
    text or numbers (a longer failure streak, a new z-score) publishes nothing.

    `checks` holds the latest result of EVERY check of the asset (all of `CHECK_NAMES`, passed ones
    included), so a consumer can open one alert per (asset, check) that is not passed and resolve the ones
    that are. `reasons` are the reasons of the non-passed checks (or why the status is UNKNOWN). The event
    identity is `f"{asset_key}:{transition}:{evaluated_at epoch}"`, `transition` counting this asset's
    published changes from 1 (the time keeps ids unique if health.db is ever rebuilt from scratch).
    `changed_checks` names the checks whose outcome differs from the previous event's. A retired asset
    publishes UNKNOWN with every check passed ("asset retired").
    """

    asset_key: str
    status: HealthStatus
    previous_status: HealthStatus
    checks: list[CheckResult] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    evaluated_at: AwareDatetime
    owners: list[str] = Field(default_factory=list)
    downstream: list[str] = Field(default_factory=list)
    transition: int | None = Field(default=None, ge=1, le=MAX_INT)
    group: str | None = None
    changed_checks: list[str] = Field(default_factory=list)
    code_location: str | None = None  # of the asset's spec, for messages naming where the asset is defined
    # Evaluated while history was being replayed (catch-up), as of `evaluated_at`: a state a later event of
    # the backlog may supersede. Consumers record it but page no one; the health service publishes the
    # asset again, not replayed, once caught up.
    replay: bool = False
    # What the key names: "asset" (also when None: an older producer), or an automation object of the
    # automation stream ("sensor", "schedule", "daemon", "publisher"; keys `sensor:<location>/<name>`...), or
    # a job that materializes no asset ("job", `job:<location>/<job>`, from its runs).
    object_kind: str | None = None
    # The object's tags as its producer knows them (automation objects have no asset spec to carry them).
    tags: dict[str, str] = Field(default_factory=dict)


AUTOMATION_KINDS = ("sensor", "schedule", "daemon", "publisher", "job")


def object_kind_of(key: str) -> str:
    """The kind of object a health key names: an automation kind by its `<kind>:` prefix, else "asset"."""
    kind, sep, _ = key.partition(":")
    return kind if sep and kind in AUTOMATION_KINDS else "asset"


AutomationKind = Literal["sensor", "schedule"]
TickStatus = Literal["STARTED", "SKIPPED", "SUCCESS", "FAILURE"]


class AutomationTickData(_Payload):
    """One tick of a sensor or schedule of any code location, as the instance's tick history holds it
    (published once per tick status the publisher sees; identity: the tick id and its status)."""

    kind: AutomationKind
    name: str
    code_location: str | None = None
    repository: str | None = None
    tick_id: Count | None = None
    status: TickStatus
    tick_at: AwareDatetime  # when the tick was evaluated
    error: str | None = None
    skip_reason: str | None = None
    run_ids: list[str] = Field(default_factory=list)
    running: bool = True  # the instigator is turned on (a stopped one is not expected to tick)
    interval_s: Seconds | None = None  # a sensor's minimum interval
    cron_schedule: str | None = None  # a schedule's cron
    timezone: str | None = None
    owners: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)


class DaemonHeartbeatData(_Payload):
    """The latest heartbeat of one Dagster daemon (scheduler, sensor, run queue...)."""

    daemon_type: str
    last_heartbeat_at: AwareDatetime
    errors: list[str] = Field(default_factory=list)


class PublisherHeartbeatData(_Payload):
    """The publishing sensor's own heartbeat: one per tick, even an empty one, so that its silence shows."""

    code_location: str
    tick_at: AwareDatetime
    published: Count = 0  # events this tick published
    caught_up: bool = True  # False when the tick stopped at its time budget with more to read
    interval_s: Seconds | None = None  # the sensor's minimum interval: when the next heartbeat is due


class AutomationRemovedData(_Payload):
    """An automation object that no longer exists (a sensor or schedule gone from its code location, or any
    object forgotten by hand): health retires it, its alerts resolve; a later tick or heartbeat of the same
    key brings it back."""

    object_key: str = Field(pattern=r"^(sensor|schedule|daemon|publisher|job):.+$", max_length=500)
    reason: str = Field(max_length=500)


class Event(BaseModel):
    """The envelope every message carries."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    type: str
    occurred_at: AwareDatetime
    source: str = Field(min_length=1, max_length=200)
    schema_version: int = SCHEMA_VERSION
    data: Any

    @field_validator("schema_version")
    @classmethod
    def _supported_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {value} (this consumer reads {SCHEMA_VERSION})")
        return value

    def to_fields(self) -> dict[str, str]:
        """The Redis stream fields of this event: `event` (JSON envelope) and `type`."""
        return {"event": self.model_dump_json(), "type": self.type}


class RunEvent(Event):
    type: Literal["run.started", "run.succeeded", "run.failed", "run.canceled"]
    data: RunData


class AssetMaterialized(Event):
    type: Literal["asset.materialized"]
    data: MaterializationData


class AssetMaterializationFailed(Event):
    type: Literal["asset.materialization_failed"]
    data: MaterializationFailedData


class CatalogSnapshot(Event):
    type: Literal["catalog.snapshot"]
    data: CatalogSnapshotData


class DiscoveryRequested(Event):
    type: Literal["catalog.discovery_requested"]
    data: DiscoveryRequestData


class AssetChanged(Event):
    type: Literal["asset.registered", "asset.changed", "asset.retired"]
    data: AssetChangeData


class HealthChanged(Event):
    type: Literal["health.changed"]
    data: HealthChangedData


class AutomationTicked(Event):
    type: Literal["automation.tick"]
    data: AutomationTickData


class DaemonHeartbeat(Event):
    type: Literal["automation.daemon_heartbeat"]
    data: DaemonHeartbeatData


class PublisherHeartbeat(Event):
    type: Literal["automation.publisher_heartbeat"]
    data: PublisherHeartbeatData


class AutomationRemoved(Event):
    type: Literal["automation.removed"]
    data: AutomationRemovedData


AnyEvent = Annotated[
    RunEvent
    | AssetMaterialized
    | AssetMaterializationFailed
    | CatalogSnapshot
    | DiscoveryRequested
    | AssetChanged
    | HealthChanged
    | AutomationTicked
    | DaemonHeartbeat
    | PublisherHeartbeat
    | AutomationRemoved,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)
# The compiled validator itself: TypeAdapter.validate_json adds ~0.3 us of Python per call, and every
# consumer parses every event.
_VALIDATE_JSON = _ADAPTER.validator.validate_json

RUN_STATUS_TYPES: dict[str, str] = {
    "STARTED": "run.started",
    "SUCCESS": "run.succeeded",
    "FAILURE": "run.failed",
    "CANCELED": "run.canceled",
}

# The event types each stream carries; a consumer dead-letters any other (a producer's mistake, or a hostile
# write), so that a valid event on the wrong stream is never acknowledged and silently dropped.
STREAM_TYPES: dict[str, frozenset[str]] = {
    CATALOG: frozenset({"catalog.snapshot", "catalog.discovery_requested"}),
    RUNS: frozenset(RUN_STATUS_TYPES.values()),
    ASSETS: frozenset({"asset.materialized", "asset.materialization_failed"}),
    ASSET_CHANGES: frozenset({"asset.registered", "asset.changed", "asset.retired"}),
    HEALTH: frozenset({"health.changed"}),
    AUTOMATION: frozenset(
        {
            "automation.tick",
            "automation.daemon_heartbeat",
            "automation.publisher_heartbeat",
            "automation.removed",
        }
    ),
}

# The times an event carries besides `occurred_at`, by event type (all are bounded, see `implausible_time`).
_DATA_TIMES: dict[str, tuple[str, ...]] = {
    **{t: ("started_at", "ended_at") for t in RUN_STATUS_TYPES.values()},
    **{t: ("retired_at",) for t in ("asset.registered", "asset.changed", "asset.retired")},
    "health.changed": ("evaluated_at",),
    "automation.tick": ("tick_at",),
    "automation.daemon_heartbeat": ("last_heartbeat_at",),
    "automation.publisher_heartbeat": ("tick_at",),
}
# pydantic gives every parsed UTC time one shared tzinfo object; bounds carrying that same object compare
# with a parsed time field by field, without a utcoffset() call on each side (measured: ~1.3 -> 0.1 us).
_PARSED_UTC = TypeAdapter(AwareDatetime).validate_python("2000-01-01T00:00:00Z").tzinfo
# No event of this system predates the Unix epoch; earlier times are mistakes (or overflow when converted).
EARLIEST = datetime(1970, 1, 1, tzinfo=_PARSED_UTC)


def latest_plausible(max_clock_skew_s: float, now: datetime | None = None) -> datetime:
    """The latest time an event may carry: this host's clock plus the allowed skew between hosts."""
    latest = (now or utcnow()) + timedelta(seconds=max_clock_skew_s)
    return latest.astimezone(UTC).replace(tzinfo=_PARSED_UTC)


def implausible_time(event: Event, latest: datetime) -> str | None:
    """Why a time of `event` cannot be true (after `latest`, see `latest_plausible`, or before 1970), or
    None. A time from the future would outrank every later, correct event (an alert nothing could resolve)."""
    occurred = event.occurred_at
    if not EARLIEST <= occurred <= latest:
        return _implausible("occurred_at", occurred, latest)
    names = _DATA_TIMES.get(event.type)
    if names is not None:
        data = event.data
        for name in names:
            value = getattr(data, name)
            if value is not None and not EARLIEST <= value <= latest:
                return _implausible(f"data.{name}", value, latest)
    return None


def _implausible(name: str, value: datetime, latest: datetime) -> str:
    if value > latest:
        return (
            f"{name} {value.isoformat()} is in the future: later than this consumer's clock plus "
            f"bus.max_clock_skew_s ({latest.isoformat(timespec='seconds')})"
        )
    return f"{name} {value.isoformat()} is before {EARLIEST.date()}"


def wrong_stream(event: Event, stream: str) -> str | None:
    """Why `event` does not belong on `stream`, or None (streams this module does not know take anything)."""
    allowed = STREAM_TYPES.get(stream)
    if allowed is None or event.type in allowed:
        return None
    carries = ", ".join(sorted(allowed))
    return f"event type {event.type!r} does not belong on stream {stream!r} (it carries {carries})"


E = TypeVar("E", bound=Event)


def parse_event(raw: str | bytes) -> AnyEvent:
    """Validate one JSON envelope; raises pydantic.ValidationError (or ValueError) when invalid."""
    event: AnyEvent = _VALIDATE_JSON(raw)
    return event


def new_event(
    cls: type[E],
    event_type: str,
    *,
    identity: str,
    data: BaseModel,
    source: str,
    occurred_at: datetime | None = None,
) -> E:
    """Build an event of `cls` whose id is derived from `event_type` and `identity`."""
    return cls(
        id=event_id(event_type, identity),
        type=event_type,
        occurred_at=occurred_at or utcnow(),
        source=source,
        data=data,
    )
