"""Discovery's operations over a Store: handle catalog events, scan and register (worker and CLI share
these)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from libs.common import heap, outbox
from libs.common.bus import Delivery
from libs.common.events import (
    ASSET_CHANGES,
    AssetChanged,
    CatalogSnapshot,
    CatalogSnapshotData,
    DiscoveryRequested,
)
from libs.common.log import get_logger
from libs.common.store import Store
from services.discovery import metrics
from services.discovery.registry import (
    Change,
    locations_from,
    record_problems,
    register_snapshot,
    set_source,
    source_of,
    to_events,
)
from services.discovery.scan import Loader, ScanResult, scan
from services.discovery.webserver import DagsterUnavailable, WebserverClient

log = get_logger(__name__)

SOURCE = "discovery"


@dataclass
class Outcome:
    """The result of registering one snapshot."""

    code_location: str
    changes: list[Change] = field(default_factory=list)
    events: list[AssetChanged] = field(default_factory=list)
    duration_s: float = 0.0


def register(
    store: Store,
    snapshot: CatalogSnapshotData,
    *,
    trigger: str,
    source: str = SOURCE,
    now: datetime | None = None,
    origin: str = "local",
) -> Outcome:
    """Register `snapshot` under the store's write lock and stage its AssetChanged events in the outbox.

    `origin` is the reader that produced the snapshot (`dagster`, `sensor`, `local`), kept per location.
    """
    started = time.perf_counter()
    with store.write() as conn:
        changes = register_snapshot(conn, snapshot, now or datetime.now(UTC))
        set_source(conn, snapshot.code_location, origin)
        events = to_events(changes, source=source)
        if events:
            outbox.stage(conn, ASSET_CHANGES, events)
    outcome = Outcome(snapshot.code_location, changes, events, time.perf_counter() - started)
    _observe(store, outcome, trigger)
    return outcome


def _observe(store: Store, outcome: Outcome, trigger: str) -> None:
    metrics.DURATION.labels(trigger=trigger).observe(outcome.duration_s)
    metrics.LAST_SCAN.labels(code_location=outcome.code_location).set(time.time())
    for kind, count in Counter(change.kind for change in outcome.changes).items():
        metrics.VERSIONS.labels(kind=kind).inc(count)
    if outcome.changes:
        metrics.refresh_gauges(store.connection())
        log.info(
            "registry_changed",
            code_location=outcome.code_location,
            trigger=trigger,
            changes=len(outcome.changes),
            kinds=sorted({c.kind for c in outcome.changes}),
        )


# The periodic rescan (scheduler thread) and discovery requests (consumer thread) both re-import the code
# location; sys.modules is process-wide, so one scan at a time.
_SCAN_LOCK = threading.Lock()


def scan_location(code_location: str, loader: Loader) -> ScanResult:
    """Scan `code_location` (the loader re-imports, so a rescan sees edited code)."""
    with _SCAN_LOCK:
        result = scan(code_location, loader)
    metrics.SCAN_PROBLEMS.labels(code_location=code_location).set(len(result.problems))
    for problem in result.problems:
        log.warning("discovery_problem", code_location=code_location, problem=problem)
    return result


def rescan(
    store: Store, code_location: str, *, trigger: str = "rescan", loader: Loader, defer: bool = False
) -> Outcome:
    """Scan the code location in-process and register what it holds.

    `defer` (a webserver is configured): a location the webserver registered is left to it, since two
    readers of the same definitions could disagree on details and make versions flap.
    """
    started = time.perf_counter()
    if defer and defers_to_dagster(store, code_location):
        return Outcome(code_location)
    result = scan_location(code_location, loader)
    if result.snapshot is None:
        metrics.LAST_SCAN.labels(code_location=code_location).set(time.time())
        return Outcome(code_location, duration_s=time.perf_counter() - started)
    outcome = register(store, result.snapshot, trigger=trigger)
    outcome.duration_s = time.perf_counter() - started
    return outcome


def make_handler(
    store: Store,
    default_location: str,
    *,
    loader: Loader,
    defer: bool = False,
    sync: WorkspaceSync | None = None,
) -> Callable[[list[Delivery]], None]:
    """The worker's batch handler for the catalog stream (`defer`: see `rescan`). With `sync` (a webserver
    is configured) a discovery request also polls it: a reloaded location is registered at once."""

    def handle(deliveries: list[Delivery]) -> None:
        requests: list[DiscoveryRequested] = []
        snapshots: list[CatalogSnapshot] = []
        for delivery in deliveries:
            if isinstance(delivery.event, CatalogSnapshot):
                snapshots.append(delivery.event)
            elif isinstance(delivery.event, DiscoveryRequested):
                requests.append(delivery.event)
        if snapshots:
            _register_events(store, snapshots, defer=defer)
        for request in requests:
            _handle_request(store, request, default_location, loader, defer=defer)
        if requests and sync is not None:
            sync_from_dagster(sync)

    return handle


def _register_events(store: Store, snapshots: Sequence[CatalogSnapshot], *, defer: bool = False) -> None:
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    with store.write() as conn:
        for event in Store.claim_new(conn, snapshots, lambda e: e.id):
            if defer and source_of(conn, event.data.code_location) == DAGSTER_SOURCE:
                continue  # the webserver's reading of this location wins (README "Discovery sources")
            changes = register_snapshot(conn, event.data, event.occurred_at)
            set_source(conn, event.data.code_location, "sensor")
            events = to_events(changes)
            if events:
                outbox.stage(conn, ASSET_CHANGES, events)
            outcomes.append(Outcome(event.data.code_location, changes, events))
    for outcome in outcomes:
        outcome.duration_s = (time.perf_counter() - started) / len(outcomes)
        _observe(store, outcome, "snapshot")


def _handle_request(
    store: Store, request: DiscoveryRequested, default_location: str, loader: Loader, *, defer: bool = False
) -> None:
    with store.write() as conn:
        if not Store.claim_events(conn, [request.id]):
            return
    # Claimed before scanning: a request is a nudge, and a crash mid-scan is covered by the periodic rescan.
    location = request.data.code_location or default_location
    if location != default_location:
        log.warning(
            "discovery_request_ignored", code_location=location, reason="not this worker's code location"
        )
        return
    outcome = rescan(store, location, trigger="request", loader=loader, defer=defer)
    log.info(
        "discovery_request_handled",
        code_location=location,
        requested_by=request.data.requested_by,
        changes=len(outcome.changes),
    )


# -- discovery from the running Dagster (the webserver's GraphQL) -------------------------------------------

DAGSTER_SOURCE = "dagster"


@dataclass
class LocationReport:
    """What one poll found and did for one code location."""

    name: str
    status: str  # registered (read and registered), unchanged, error, loading, gone
    assets: int = 0
    problems: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    duration_s: float = 0.0


@dataclass
class SyncReport:
    """One poll of the workspace."""

    url: str
    locations: list[LocationReport] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def changes(self) -> list[Change]:
        return [c for loc in self.locations for c in loc.changes]

    @property
    def problems(self) -> list[str]:
        return [p for loc in self.locations for p in loc.problems]


START_PATIENCE_S = 120.0


class WorkspaceSync:
    """Registers every code location of a running Dagster, re-reading only the locations that changed.

    The poll reads the workspace (one small query); a location whose (updatedTimestamp, versionKey) is the
    one already registered is not read again. A location in error records its problems and keeps its assets.
    A location registered from the webserver that is gone from the workspace has its assets retired (only
    after a complete, successful answer). `DagsterUnavailable` propagates with nothing changed for the
    location being read; what earlier locations of the same poll registered stays registered.
    """

    def __init__(self, store: Store, client: WebserverClient, *, source: str = SOURCE) -> None:
        self.store = store
        self.client = client
        self.source = source
        self.seen: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        # The webserver usually starts after the workers: until it has answered once (or for
        # START_PATIENCE_S), an unreachable webserver is expected, not worth a warning.
        self.answered = False
        self.created = time.monotonic()

    def poll(self, *, force: bool = False, trigger: str = "poll", dry_run: Store | None = None) -> SyncReport:
        """Poll once. `force` re-reads every location; `dry_run` registers into that store instead (and
        remembers nothing)."""
        # Reading 10,000 assets makes about a million objects that live until the registration: with the
        # default thresholds (the CLI, the bench) full collections over them took 0.8-1.5 s of a cold poll;
        # paused, one comes due after it (0.2 s). Not around in-process registrations: in a process holding
        # Dagster's definitions that only moved the collections to the next step.
        with self._lock, heap.collector_paused():
            return self._poll(force=force, trigger=trigger, target=dry_run)

    def _poll(self, *, force: bool, trigger: str, target: Store | None) -> SyncReport:
        started = time.perf_counter()
        store = target or self.store
        report = SyncReport(self.client.url)
        entries = self.client.workspace()
        for entry in entries:
            if target is None:
                metrics.LAST_SCAN.labels(code_location=entry.name).set(time.time())
            if entry.status != "LOADED":
                report.locations.append(LocationReport(entry.name, "loading"))
                continue
            if not force and target is None and self.seen.get(entry.name) == entry.version:
                report.locations.append(LocationReport(entry.name, "unchanged"))
                continue
            read = self.client.read_location(entry)
            snapshot = read.snapshot
            metrics.SCAN_PROBLEMS.labels(code_location=entry.name).set(len(snapshot.problems))
            if snapshot.problems and not snapshot.assets:
                with store.write() as conn:
                    new_problem = record_problems(conn, entry.name, snapshot.problems)
                    set_source(conn, entry.name, DAGSTER_SOURCE)
                if new_problem and target is None:
                    for problem in snapshot.problems:
                        log.warning("discovery_problem", code_location=entry.name, problem=problem)
                report.locations.append(
                    LocationReport(
                        entry.name, "error", 0, list(snapshot.problems), duration_s=read.duration_s
                    )
                )
            else:
                outcome = register(
                    store, snapshot, trigger=trigger, source=self.source, origin=DAGSTER_SOURCE
                )
                found = LocationReport(
                    entry.name,
                    "registered",
                    len(snapshot.assets),
                    list(snapshot.problems),
                    outcome.changes,
                    read.duration_s,
                )
                report.locations.append(found)
            if target is None:
                self.seen[entry.name] = entry.version
        listed = {e.name for e in entries}
        with store.read() as conn:
            gone = [name for name in locations_from(conn, DAGSTER_SOURCE) if name not in listed]
        for name in gone:
            # Removed from workspace.yaml (or renamed): its assets are retired, as a deleted module's are.
            empty = CatalogSnapshotData(
                code_location=name, fingerprint=f"gone:{time.time()}", assets=[], problems=[]
            )
            outcome = register(store, empty, trigger=trigger, source=self.source, origin=DAGSTER_SOURCE)
            report.locations.append(LocationReport(name, "gone", 0, [], outcome.changes))
            self.seen.pop(name, None)
        report.duration_s = time.perf_counter() - started
        return report


def sync_from_dagster(sync: WorkspaceSync) -> SyncReport | None:
    """The worker's periodic poll: a webserver that does not answer is logged and changes nothing."""
    try:
        report = sync.poll()
    except DagsterUnavailable as exc:
        metrics.DAGSTER_UNAVAILABLE.inc()
        if not sync.answered and time.monotonic() - sync.created < START_PATIENCE_S:
            log.debug("dagster_not_answering_yet", error=str(exc))
            return None
        log.warning("dagster_unavailable", error=str(exc), action="registry kept as it is; next poll retries")
        return None
    sync.answered = True
    return report


def defers_to_dagster(store: Store, location: str) -> bool:
    """True when `location` was registered from the webserver: other readers then leave it alone."""
    with store.read() as conn:
        return source_of(conn, location) == DAGSTER_SOURCE
