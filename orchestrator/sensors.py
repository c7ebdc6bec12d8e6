"""The event-publishing sensor: Dagster's event log → Redis streams, at least once, in bulk.

Every tick reads the instance's event log after its own cursor and publishes

- run status changes (`fetch_run_status_changes` for RUN_START / RUN_SUCCESS / RUN_FAILURE / RUN_CANCELED)
  as `run.*` events to RUNS, with job, asset keys, timings, error, partition and tags;
- asset materializations as `asset.materialized` to ASSETS, with row count, column schema, step duration and
  the other metadata;
- failed materializations as `asset.materialization_failed` to ASSETS: the assets a failed run planned and
  whose own step failed (Dagster 1.13 OSS stores no ASSET_FAILED_TO_MATERIALIZE records and its SQL
  `fetch_failed_materializations` always answers empty, so they are derived from the run), plus any
  ASSET_FAILED_TO_MATERIALIZE record a newer Dagster writes (same event identity, so never twice); the
  `run.failed` event lists the same assets in `failed_asset_keys`, so consumers can tell an asset that
  failed from one Dagster skipped because an upstream failed;
- a `catalog.snapshot` to CATALOG whenever the fingerprint of the code location's asset definitions changes;
- to AUTOMATION, after those: the new or changed ticks of every sensor and schedule of the instance and
  the daemons' changed heartbeats (orchestrator.automation, bounded reads), then, at the end of every tick,
  even an empty one or one stopped at its budget, an `automation.publisher_heartbeat`, whose absence shows
  that the publisher is down.

It reads the instance-wide event log, so it sees runs of every code location, including the ephemeral ones of
`dagster asset materialize -f` (what `monitor_all_code_locations=True` gives a run-status sensor).

The cursor (JSON, one storage id per kind plus the last published catalog fingerprint) is moved only after
the XADDs succeeded. When Redis is down the tick raises, Dagster keeps the previous cursor, and the next tick
republishes from there with the same deterministic event ids. A tick reads pages of `sensors.page_size`
records per kind until caught up or `sensors.tick_budget_s` is spent.

Late commits: storage ids are assigned at insert. SQLite commits them in order; on PostgreSQL (or MySQL) a
transaction of one run can commit a lower id after a higher one of a concurrent run was already read, which a
plain "after id N" cursor would pass over for good. So on those storages each tick re-reads a trailing window
of `sensors.late_commit_window` storage ids below the cursor's position and publishes only the records whose
ids are not in the cursor's `seen` set (the ids it published inside that window). An event committed late,
but within the window, is published once; ids below the window are settled.
"""

from __future__ import annotations

import contextlib
import json
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import redis
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DefaultSensorStatus,
    EventLogRecord,
    EventRecordsFilter,
    RepositoryDefinition,
    RunRecord,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    TableSchema,
    sensor,
)

# No public names (read in dagster 1.13.28): the fetch_* APIs take their cursor as the string EventLogCursor
# writes, and a run's planned materializations are only told apart by this event-specific data class.
from dagster._core.event_api import EventLogCursor
from dagster._core.events import AssetMaterializationPlannedData
from pydantic import BaseModel, ValidationError

from libs.common.bus import Bus, connect
from libs.common.events import (
    ASSETS,
    AUTOMATION,
    CATALOG,
    RUN_STATUS_TYPES,
    RUNS,
    AssetMaterializationFailed,
    AssetMaterialized,
    CatalogSnapshot,
    CatalogSnapshotData,
    Event,
    MaterializationData,
    MaterializationFailedData,
    RunData,
    RunEvent,
    new_event,
)
from libs.common.log import get_logger
from libs.common.settings import RedisSettings, Settings
from orchestrator.automation import AutomationCursor, AutomationReader
from orchestrator.catalog import build_catalog, columns_of, json_safe_metadata, key_string
from orchestrator.errors import cut_error, root_error
from orchestrator.settings import OrchestratorSettings, get_settings

log = get_logger(__name__)

SENSOR_NAME = "ams_event_publisher"
SOURCE = "orchestrator.sensor"
CURSOR_VERSION = 1
ROW_COUNT_KEYS = ("dagster/row_count", "row_count")  # the second is what the README's examples write
COLUMN_SCHEMA_KEY = "dagster/column_schema"
PARTITION_TAG = "dagster/partition"

# kind -> (Dagster event type, RunData.status)
RUN_KINDS: dict[str, tuple[DagsterEventType, str]] = {
    "run_started": (DagsterEventType.RUN_START, "STARTED"),
    "run_succeeded": (DagsterEventType.RUN_SUCCESS, "SUCCESS"),
    "run_failed": (DagsterEventType.RUN_FAILURE, "FAILURE"),
    "run_canceled": (DagsterEventType.RUN_CANCELED, "CANCELED"),
}
ASSET_KINDS: dict[str, DagsterEventType] = {
    "materialized": DagsterEventType.ASSET_MATERIALIZATION,
    "materialization_failed": DagsterEventType.ASSET_FAILED_TO_MATERIALIZE,
}
# Read order within a tick: starts, then asset events, then run outcomes (the natural order of a run).
KINDS = (
    "run_started",
    "materialized",
    "materialization_failed",
    "run_succeeded",
    "run_failed",
    "run_canceled",
)
# Storage ids re-read below the cursor on storages that may commit ids out of order (PostgreSQL, MySQL).
DEFAULT_LATE_COMMIT_WINDOW = 2000


class PublishError(RuntimeError):
    """Events could not be written to Redis; the cursor stays where it was."""


# ---------------------------------------------------------------------------------------------- cursor


@dataclass
class PublisherCursor:
    """Where the sensor stands: the last published storage id per kind, and the last catalog fingerprint."""

    positions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, -1))
    catalog: str | None = None
    # Per kind, the storage ids published inside the late-commit window below its position (empty on SQLite).
    seen: dict[str, list[int]] = field(default_factory=dict)
    # What was published of the instance's tick history and daemon heartbeats (absent in older cursors).
    automation: AutomationCursor = field(default_factory=AutomationCursor)

    def to_json(self) -> str:
        data: dict[str, Any] = {"v": CURSOR_VERSION, "positions": self.positions, "catalog": self.catalog}
        seen = {kind: sorted(ids) for kind, ids in self.seen.items() if ids}
        if seen:
            data["seen"] = seen
        if self.automation:
            data["automation"] = self.automation.to_json()
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | None) -> PublisherCursor:
        """Parse a cursor; an empty one starts from the beginning of the event log.

        An unreadable cursor raises: starting over silently would republish the whole history.
        """
        cursor = cls()
        if not raw:
            return cursor
        try:
            data = json.loads(raw)
            if data.get("v") != CURSOR_VERSION:
                raise ValueError(f"unsupported cursor version {data.get('v')!r}")
            for kind, position in dict(data.get("positions") or {}).items():
                if kind in cursor.positions:
                    cursor.positions[kind] = int(position)
            catalog = data.get("catalog")
            cursor.catalog = str(catalog) if catalog else None
            for kind, ids in dict(data.get("seen") or {}).items():
                if kind in cursor.positions and ids:
                    cursor.seen[kind] = sorted(int(i) for i in ids)
            if data.get("automation") is not None:
                cursor.automation = AutomationCursor.from_json(data["automation"])
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise ValueError(
                f"unreadable {SENSOR_NAME} cursor {raw[:200]!r}: {exc}; reset the sensor's cursor in the "
                "Dagster UI to start over (consumers deduplicate the republished events)"
            ) from exc
        return cursor

    def copy(self) -> PublisherCursor:
        return PublisherCursor(
            positions=dict(self.positions),
            catalog=self.catalog,
            seen={k: list(v) for k, v in self.seen.items()},
            automation=self.automation.copy(),
        )


@dataclass
class TickReport:
    """What one tick did."""

    cursor: PublisherCursor
    published: dict[str, int] = field(default_factory=dict)  # stream -> events
    records: int = 0
    pages: int = 0
    caught_up: bool = True
    catalog_published: bool = False
    skipped_records: int = 0
    instigators_pending: int = 0  # sensors/schedules that may have new ticks, left for the next tick
    asset_s: float = 0.0  # from the tick's start until its asset, run and catalog events were published (s)

    @property
    def events(self) -> int:
        return sum(self.published.values())

    def summary(self) -> str:
        parts = [f"{self.events} events published"]
        parts += [f"{stream}: {n}" for stream, n in sorted(self.published.items())]
        if self.catalog_published:
            parts.append("catalog snapshot published")
        if self.skipped_records:
            parts.append(f"{self.skipped_records} unreadable records skipped (see logs)")
        if self.instigators_pending:
            parts.append(f"tick history of {self.instigators_pending} sensors/schedules left for next tick")
        parts.append("caught up" if self.caught_up else "more pending (next tick continues)")
        return "; ".join(parts)


# ---------------------------------------------------------------------------------------------- caches

K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    """A small LRU map; lookups that survive between ticks of the same code-server process."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[K, V] = OrderedDict()

    def get_or(self, key: K, compute: Callable[[], V]) -> V:
        if key in self._data:
            self._data.move_to_end(key)
            return self._data[key]
        return self.put(key, compute())

    def put(self, key: K, value: V) -> V:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.size:
            self._data.popitem(last=False)
        return value


@dataclass
class RunFacts:
    """What the sensor needs from a run's own event log: planned assets and when each step started."""

    planned: set[str] = field(default_factory=set)
    step_starts: dict[str, float] = field(default_factory=dict)


_run_facts: _Lru[str, RunFacts] = _Lru(20_000)
_catalogs: weakref.WeakKeyDictionary[RepositoryDefinition, tuple[str, CatalogSnapshotData]] = (
    weakref.WeakKeyDictionary()
)
_clients: dict[tuple[str, str, float], redis.Redis] = {}


def bus_for(settings: Settings) -> Bus:
    """A Bus on a Redis client reused across ticks of this process."""
    cfg: RedisSettings = settings.redis
    password = cfg.password.get_secret_value() if cfg.password else ""
    key = (cfg.url, password, cfg.socket_timeout_s)
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = connect(cfg)
    return Bus(client, settings.bus)


# ---------------------------------------------------------------------------------------------- helpers


def _ts(seconds: float | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None


def _failure_text(dagster_event: Any) -> str | None:
    data = dagster_event.event_specific_data
    root = root_error(getattr(data, "error", None))
    head = (dagster_event.message or "").strip()
    if root and head:
        return cut_error(f"{head} {root}")
    return cut_error(root or head or None)


def _row_count(metadata: Any) -> int | None:
    for name in ROW_COUNT_KEYS:
        value = metadata.get(name)
        raw = getattr(value, "value", value)
        if isinstance(raw, bool):
            continue
        if isinstance(raw, int | float) and raw >= 0 and float(raw).is_integer():
            return int(raw)
    return None


def _column_schema(metadata: Any) -> list[Any] | None:
    value = metadata.get(COLUMN_SCHEMA_KEY)
    schema = getattr(value, "value", value)
    return columns_of(schema) if isinstance(schema, TableSchema) else None


def _location_of(run: Any) -> str | None:
    origin = getattr(run, "remote_job_origin", None)
    try:
        return str(origin.repository_origin.code_location_origin.location_name) if origin else None
    except AttributeError:
        return None


# ---------------------------------------------------------------------------------------------- publisher


class EventPublisher:
    """Reads the event log after a cursor, builds events and publishes them; the core of the sensor."""

    def __init__(
        self,
        instance: DagsterInstance,
        bus: Bus,
        *,
        code_location: str,
        page_size: int = 1000,
        budget_s: float = 30.0,
        source: str = SOURCE,
        late_commit_window: int | None = None,
        interval_s: float | None = None,
        tick_history_instigators: int = 200,
        tick_history_ticks: int = 100,
    ) -> None:
        self.instance = instance
        self.bus = bus
        self.code_location = code_location
        self.page_size = max(1, min(page_size, 10_000))
        self.budget_s = budget_s
        self.source = source
        self.window = default_window(instance) if late_commit_window is None else max(0, late_commit_window)
        self.interval_s = interval_s
        self.automation = AutomationReader(
            instance,
            code_location=code_location,
            source=source,
            instigators_per_tick=tick_history_instigators,
            ticks_per_instigator=tick_history_ticks,
        )

    # -- reading

    def fetch(self, kind: str, after: int) -> list[EventLogRecord]:
        """One page of `kind` records with a storage id above `after`, oldest first."""
        if kind in RUN_KINDS:
            event_type = RUN_KINDS[kind][0]
            cursor = _storage_cursor(after)
            return list(
                self.instance.fetch_run_status_changes(
                    event_type, limit=self.page_size, cursor=cursor, ascending=True
                ).records
            )
        # fetch_materializations / fetch_failed_materializations take one asset key; the storage query
        # they wrap reads every asset's events of a type in storage-id order, in one query.
        records_filter = EventRecordsFilter(
            event_type=ASSET_KINDS[kind], after_cursor=after if after >= 0 else None
        )
        return list(
            self.instance.event_log_storage.get_event_records(
                records_filter, limit=self.page_size, ascending=True
            )
        )

    def _run_records(self, run_ids: Iterable[str]) -> dict[str, RunRecord]:
        ids = sorted({r for r in run_ids if r})
        found: dict[str, RunRecord] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for record in self.instance.get_run_records(RunsFilter(run_ids=chunk)):
                found[record.dagster_run.run_id] = record
        return found

    def run_facts(self, run_id: str, *, step_key: str | None = None) -> RunFacts:
        """A run's planned assets and step start times: one event-log query per run, cached.

        Re-read when `step_key` has not started in the cached facts (the run was still going then).
        """

        def read() -> RunFacts:
            records = self.instance.get_records_for_run(
                run_id, of_type={DagsterEventType.ASSET_MATERIALIZATION_PLANNED, DagsterEventType.STEP_START}
            ).records
            facts = RunFacts()
            for r in records:
                ev = r.event_log_entry.dagster_event
                if ev is None:
                    continue
                if isinstance(ev.event_specific_data, AssetMaterializationPlannedData):
                    facts.planned.add(key_string(ev.event_specific_data.asset_key))
                elif ev.event_type == DagsterEventType.STEP_START and ev.step_key:
                    facts.step_starts.setdefault(ev.step_key, r.event_log_entry.timestamp)
            return facts

        facts = _run_facts.get_or(run_id, read)
        if step_key is not None and step_key not in facts.step_starts:
            facts = _run_facts.put(run_id, read())
        return facts

    def asset_keys_of(self, run: Any) -> list[str]:
        """The assets a run targets: its asset selection, else its planned materializations."""
        if run.asset_selection:
            return sorted(key_string(k) for k in run.asset_selection)
        return sorted(self.run_facts(run.run_id).planned)

    def _step_start(self, run_id: str, step_key: str | None) -> float | None:
        if not run_id or not step_key:
            return None
        return self.run_facts(run_id, step_key=step_key).step_starts.get(step_key)

    # -- building

    def run_event(
        self,
        kind: str,
        record: EventLogRecord,
        run_record: RunRecord | None,
        failed_asset_keys: list[str] | None = None,
    ) -> RunEvent:
        """The run event of a status change; a failed run's says which assets failed on their own
        (`failed_asset_keys`, the keys of its `derived_failures`)."""
        entry = record.event_log_entry
        dagster_event = entry.dagster_event
        status = RUN_KINDS[kind][1]
        run = run_record.dagster_run if run_record else None
        started = run_record.start_time if run_record else None
        if status == "STARTED":
            started = started or entry.timestamp
            ended = None
        else:
            ended = (run_record.end_time if run_record else None) or entry.timestamp
        duration = max(0.0, ended - started) if started is not None and ended is not None else None
        tags = {str(k): str(v) for k, v in (run.tags if run else {}).items()}
        data = RunData(
            run_id=entry.run_id,
            job_name=(dagster_event.job_name if dagster_event else None)
            or (run.job_name if run else "")
            or "",
            status=status,
            asset_keys=self.asset_keys_of(run) if run else [],
            started_at=_ts(started),
            ended_at=_ts(ended),
            duration_s=duration,
            error=_failure_text(dagster_event)
            if status in ("FAILURE", "CANCELED") and dagster_event
            else None,
            code_location=_location_of(run) if run else None,
            partition=tags.get(PARTITION_TAG),
            tags=tags,
            failed_asset_keys=failed_asset_keys,
        )
        event_type = RUN_STATUS_TYPES[status]
        return new_event(
            RunEvent,
            event_type,
            identity=f"{entry.run_id}:{status}",
            data=data,
            source=self.source,
            occurred_at=_ts(entry.timestamp),
        )

    def materialization_event(self, record: EventLogRecord) -> AssetMaterialized:
        entry = record.event_log_entry
        mat = record.asset_materialization
        if mat is None:
            raise ValueError(f"record {record.storage_id} holds no materialization")
        metadata = mat.metadata
        step_start = self._step_start(entry.run_id, entry.step_key)
        data = MaterializationData(
            asset_key=key_string(mat.asset_key),
            run_id=entry.run_id,
            storage_id=record.storage_id,
            partition=mat.partition,
            row_count=_row_count(metadata),
            column_schema=_column_schema(metadata),
            # The step's time until it reported this materialization (known before the step ends).
            duration_s=max(0.0, entry.timestamp - step_start) if step_start is not None else None,
            metadata=json_safe_metadata(metadata, exclude=(ROW_COUNT_KEYS[0], COLUMN_SCHEMA_KEY)),
        )
        return new_event(
            AssetMaterialized,
            "asset.materialized",
            identity=str(record.storage_id),
            data=data,
            source=self.source,
            occurred_at=_ts(entry.timestamp),
        )

    def _failed_event(
        self,
        run_id: str,
        asset_key: AssetKey,
        partition: str | None,
        error: str | None,
        storage_id: int | None,
        at: float,
    ) -> AssetMaterializationFailed:
        data = MaterializationFailedData(
            asset_key=key_string(asset_key),
            run_id=run_id,
            storage_id=storage_id,
            partition=partition,
            error=error,
        )
        return new_event(
            AssetMaterializationFailed,
            "asset.materialization_failed",
            # The same failure read from a failed run or from a failure record gets the same id.
            identity=f"{run_id}:{key_string(asset_key)}:{partition or ''}",
            data=data,
            source=self.source,
            occurred_at=_ts(at),
        )

    def failure_record_event(self, record: EventLogRecord) -> AssetMaterializationFailed | None:
        """An ASSET_FAILED_TO_MATERIALIZE record (written by newer Dagster versions) as an event."""
        entry = record.event_log_entry
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        failure = getattr(data, "asset_materialization_failure", None)
        if failure is None:
            return None
        if getattr(failure.failure_type, "value", None) == "SKIPPED":
            return None
        if getattr(failure.reason, "value", None) == "UPSTREAM_FAILED_TO_MATERIALIZE":
            return None  # reported as a dependency problem of this asset, not as its own failure
        error = cut_error(
            root_error(getattr(data, "error", None)) or failure.description or str(failure.reason.value)
        )
        return self._failed_event(
            entry.run_id, failure.asset_key, failure.partition, error, record.storage_id, entry.timestamp
        )

    def derived_failures(self, record: EventLogRecord) -> list[AssetMaterializationFailed]:
        """The planned assets of a failed run that were not materialized because their own step failed.

        Assets skipped because an upstream step failed are not failures of their own. When the run failed
        without any step failing (e.g. its process died), every unmaterialized planned asset failed.
        """
        entry = record.event_log_entry
        run_id = entry.run_id
        logs = self.instance.get_records_for_run(
            run_id,
            of_type={
                DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
                DagsterEventType.ASSET_MATERIALIZATION,
                DagsterEventType.STEP_FAILURE,
            },
        ).records
        planned: dict[tuple[AssetKey, str | None], str | None] = {}
        materialized: set[tuple[AssetKey, str | None]] = set()
        step_errors: dict[str, tuple[str | None, float]] = {}
        for log_record in logs:
            ev = log_record.event_log_entry.dagster_event
            if ev is None:
                continue
            planned_data = ev.event_specific_data
            if isinstance(planned_data, AssetMaterializationPlannedData):
                planned[(planned_data.asset_key, planned_data.partition)] = ev.step_key
            elif ev.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                mat = ev.step_materialization_data.materialization
                materialized.add((mat.asset_key, mat.partition))
            elif ev.event_type == DagsterEventType.STEP_FAILURE and ev.step_key:
                message = cut_error(root_error(getattr(ev.event_specific_data, "error", None)) or ev.message)
                step_errors[ev.step_key] = (message, log_record.event_log_entry.timestamp)
        run_error = _failure_text(entry.dagster_event) if entry.dagster_event else None
        events = []
        for (asset_key, partition), step_key in sorted(planned.items(), key=lambda kv: key_string(kv[0][0])):
            if (asset_key, partition) in materialized:
                continue
            if step_errors:
                if step_key not in step_errors:
                    continue
                error, at = step_errors[step_key]
            else:
                error, at = run_error, entry.timestamp
            events.append(self._failed_event(run_id, asset_key, partition, error, None, at))
        return events

    def build(self, kind: str, records: Sequence[EventLogRecord]) -> tuple[list[Event], list[Event], int]:
        """The (ASSETS, RUNS) events of one page of `kind` records, and how many records were unreadable."""
        assets: list[Event] = []
        runs: list[Event] = []
        skipped = 0
        run_records = self._run_records(r.run_id for r in records) if kind in RUN_KINDS else {}
        for record in records:
            try:
                if kind in RUN_KINDS:
                    own: list[str] | None = None
                    if kind == "run_failed":
                        # One read of the run's log gives both: the assets that failed on their own, and
                        # so (the run event's `failed_asset_keys`) those that were only blocked by them.
                        failures = self.derived_failures(record)
                        assets.extend(failures)
                        own = sorted({e.data.asset_key for e in failures})
                    runs.append(self.run_event(kind, record, run_records.get(record.run_id), own))
                elif kind == "materialized":
                    assets.append(self.materialization_event(record))
                else:
                    failed = self.failure_record_event(record)
                    if failed is not None:
                        assets.append(failed)
            except (ValidationError, ValueError, AttributeError, TypeError) as exc:
                # A record no event can describe would otherwise stop the sensor forever.
                skipped += 1
                log.error(
                    "sensor_record_unreadable", kind=kind, storage_id=record.storage_id, error=str(exc)[:500]
                )
        return assets, runs, skipped

    # -- publishing

    def publish(self, stream: str, events: Sequence[Event]) -> None:
        if not events:
            return
        try:
            self.bus.publish_many(stream, events)
        except redis.RedisError as exc:
            raise PublishError(
                f"could not publish {len(events)} events to stream {self.bus.key(stream)!r}: "
                f"{type(exc).__name__}: {exc}; the cursor stays put and the next tick retries"
            ) from exc

    def catalog_of(self, repository: RepositoryDefinition) -> CatalogSnapshotData:
        cached = _catalogs.get(repository)
        if cached is not None and cached[0] == self.code_location:
            return cached[1]
        snapshot = build_catalog(repository, self.code_location)
        with contextlib.suppress(TypeError):  # not weak-referenceable: recomputed next time
            _catalogs[repository] = (self.code_location, snapshot)
        return snapshot

    def publish_catalog(self, cursor: PublisherCursor, repository: RepositoryDefinition | None) -> bool:
        """Publish the catalog snapshot if the definitions changed since the last one; moves `cursor`."""
        if repository is None:
            return False
        snapshot = self.catalog_of(repository)
        if snapshot.fingerprint == cursor.catalog:
            return False
        event = new_event(
            CatalogSnapshot,
            "catalog.snapshot",
            identity=f"{self.code_location}:{snapshot.fingerprint}",
            data=snapshot,
            source=self.source,
        )
        self.publish(CATALOG, [event])
        cursor.catalog = snapshot.fingerprint
        return True

    def run_tick(self, cursor: PublisherCursor, repository: RepositoryDefinition | None = None) -> TickReport:
        """Publish everything after `cursor` (within the time budget); returns the moved cursor.

        Raises PublishError when Redis refuses; the caller must then keep the cursor it passed in.
        """
        started = time.monotonic()
        deadline = started + self.budget_s
        current = cursor.copy()
        report = TickReport(cursor=current)
        report.catalog_published = self.publish_catalog(current, repository)
        if report.catalog_published:
            report.published[CATALOG] = 1
        # Each kind is read from the bottom of its late-commit window; ids already published are skipped.
        read_from = {kind: max(-1, current.positions[kind] - self.window) for kind in KINDS}
        seen = {kind: set(current.seen.get(kind, ())) for kind in KINDS}
        while True:
            more = False
            for kind in KINDS:
                if report.pages and time.monotonic() >= deadline:
                    more = True  # every tick makes progress; the kinds not read now wait for the next one
                    break
                page = self.fetch(kind, read_from[kind])
                if not page:
                    continue
                read_from[kind] = page[-1].storage_id
                more = more or len(page) >= self.page_size
                records = [r for r in page if r.storage_id not in seen[kind]]
                if not records:
                    continue
                late = [r.storage_id for r in records if r.storage_id < current.positions[kind]]
                if late:
                    log.info("sensor_late_commit", kind=kind, storage_ids=late[:20])
                report.pages += 1
                report.records += len(records)
                assets, runs, skipped = self.build(kind, records)
                report.skipped_records += skipped
                self.publish(ASSETS, assets)
                self.publish(RUNS, runs)
                for stream, events in ((ASSETS, assets), (RUNS, runs)):
                    if events:
                        report.published[stream] = report.published.get(stream, 0) + len(events)
                current.positions[kind] = max(current.positions[kind], records[-1].storage_id)
                if self.window:
                    floor = current.positions[kind] - self.window
                    kept = {i for i in seen[kind] if i > floor}
                    seen[kind] = kept | {r.storage_id for r in records if r.storage_id > floor}
                    current.seen[kind] = sorted(seen[kind])
            if not more:
                report.caught_up = True
                break
            # Only after progress: a tick that spent its budget re-reading the late-commit window must go on
            # to new records, or every tick would re-read the same window and publish nothing.
            if report.pages and time.monotonic() >= deadline:
                report.caught_up = False
                break
        report.asset_s = time.monotonic() - started
        self.publish_automation(current, repository, deadline, report)
        return report

    def publish_automation(
        self,
        cursor: PublisherCursor,
        repository: RepositoryDefinition | None,
        deadline: float,
        report: TickReport,
    ) -> None:
        """After the asset and run events: new ticks of every sensor and schedule, changed daemon heartbeats
        (bounded reads, see orchestrator.automation), then the publisher's heartbeat; moves `cursor`."""
        automation = cursor.automation
        events, report.instigators_pending = self.automation.tick_events(automation, repository, deadline)
        events += self.automation.daemon_events(automation)
        self.publish(AUTOMATION, events)
        if events:
            report.published[AUTOMATION] = len(events)
        heartbeat = self.automation.heartbeat(
            published=report.events, caught_up=report.caught_up, interval_s=self.interval_s
        )
        self.publish(AUTOMATION, [heartbeat])


def default_window(instance: DagsterInstance) -> int:
    """The late-commit window for this instance's event log: `DEFAULT_LATE_COMMIT_WINDOW` storage ids on a
    server database (PostgreSQL, MySQL: concurrent runs commit out of id order), else none (SQLite and the
    in-memory storage commit in id order)."""
    # No public name tells storages apart: PostgresEventLogStorage, MySQLEventLogStorage (dagster 1.13.28).
    name = type(instance.event_log_storage).__name__.lower()
    return DEFAULT_LATE_COMMIT_WINDOW if ("postgres" in name or "mysql" in name) else 0


def _storage_cursor(after: int) -> str | None:
    if after < 0:
        return None
    return EventLogCursor.from_storage_id(after).to_string()


# ---------------------------------------------------------------------------------------------- sensor


def _interval_default() -> int:
    try:
        return get_settings().sensors.minimum_interval_s
    except Exception as exc:  # the tick will raise the configuration error visibly
        log.warning("sensor_settings_unreadable", error=str(exc)[:500])
        return 5


def build_event_sensor(
    *,
    settings: OrchestratorSettings | Callable[[], OrchestratorSettings] | None = None,
    name: str = SENSOR_NAME,
    minimum_interval_s: int | None = None,
) -> SensorDefinition:
    """The publishing sensor. `settings` (or a factory) defaults to the process settings, read at each
    tick."""

    def current_settings() -> OrchestratorSettings:
        if settings is None:
            return get_settings()
        return settings() if callable(settings) else settings

    interval = minimum_interval_s or (
        current_settings().sensors.minimum_interval_s
        if isinstance(settings, BaseModel)
        else _interval_default()
    )

    @sensor(
        name=name,
        minimum_interval_seconds=interval,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Publishes run status changes, materializations, failed materializations, catalog snapshots, "
            "sensor and schedule ticks and daemon heartbeats of this Dagster instance to the Redis streams "
            "(runs, assets, catalog, automation), and a heartbeat of its own every tick."
        ),
    )
    def ams_event_publisher(context: SensorEvaluationContext) -> SkipReason:
        cfg = current_settings()
        publisher = EventPublisher(
            context.instance,
            bus_for(cfg),
            code_location=cfg.dagster.code_location,
            page_size=cfg.sensors.page_size,
            budget_s=cfg.sensors.tick_budget_s,
            late_commit_window=cfg.sensors.late_commit_window,
            interval_s=float(interval),
            tick_history_instigators=cfg.sensors.tick_history_instigators,
            tick_history_ticks=cfg.sensors.tick_history_ticks,
        )
        report = publisher.run_tick(PublisherCursor.from_json(context.cursor), context.repository_def)
        context.update_cursor(report.cursor.to_json())
        if report.events:
            context.log.info(report.summary())
        return SkipReason(report.summary())

    return ams_event_publisher
