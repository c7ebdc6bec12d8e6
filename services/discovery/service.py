"""Discovery's operations over a Store: handle catalog events, scan and register (worker and CLI share these)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from libs.common import outbox
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
from services.discovery.registry import Change, register_snapshot, to_events
from services.discovery.scan import Loader, ScanResult, scan

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
    store: Store, snapshot: CatalogSnapshotData, *, trigger: str, source: str = SOURCE, now: datetime | None = None
) -> Outcome:
    """Register `snapshot` under the store's write lock and stage its AssetChanged events in the outbox."""
    started = time.perf_counter()
    with store.write() as conn:
        changes = register_snapshot(conn, snapshot, now or datetime.now(UTC))
        events = to_events(changes, source=source)
        if events:
            outbox.stage(conn, ASSET_CHANGES, events)
    outcome = Outcome(snapshot.code_location, changes, events, time.perf_counter() - started)
    _observe(store, outcome, trigger)
    return outcome


def _observe(store: Store, outcome: Outcome, trigger: str) -> None:
    metrics.DURATION.labels(trigger=trigger).observe(outcome.duration_s)
    metrics.LAST_SCAN.labels(code_location=outcome.code_location).set(time.time())
    for change in outcome.changes:
        metrics.VERSIONS.labels(kind=change.kind).inc()
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


def rescan(store: Store, code_location: str, *, trigger: str = "rescan", loader: Loader) -> Outcome:
    """Scan the code location in-process and register what it holds."""
    started = time.perf_counter()
    result = scan_location(code_location, loader)
    if result.snapshot is None:
        metrics.LAST_SCAN.labels(code_location=code_location).set(time.time())
        return Outcome(code_location, duration_s=time.perf_counter() - started)
    outcome = register(store, result.snapshot, trigger=trigger)
    outcome.duration_s = time.perf_counter() - started
    return outcome


def make_handler(
    store: Store, default_location: str, *, loader: Loader
) -> Callable[[list[Delivery]], None]:
    """The worker's batch handler for the catalog stream."""

    def handle(deliveries: list[Delivery]) -> None:
        requests: list[DiscoveryRequested] = []
        snapshots: list[CatalogSnapshot] = []
        for delivery in deliveries:
            if isinstance(delivery.event, CatalogSnapshot):
                snapshots.append(delivery.event)
            elif isinstance(delivery.event, DiscoveryRequested):
                requests.append(delivery.event)
        if snapshots:
            _register_events(store, snapshots)
        for request in requests:
            _handle_request(store, request, default_location, loader)

    return handle


def _register_events(store: Store, snapshots: Sequence[CatalogSnapshot]) -> None:
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    with store.write() as conn:
        fresh = Store.claim_events(conn, [e.id for e in snapshots])
        for event in snapshots:
            if event.id not in fresh:
                continue
            fresh.discard(event.id)  # the same snapshot twice in one batch is registered once
            changes = register_snapshot(conn, event.data, event.occurred_at)
            events = to_events(changes)
            if events:
                outbox.stage(conn, ASSET_CHANGES, events)
            outcomes.append(Outcome(event.data.code_location, changes, events))
    for outcome in outcomes:
        outcome.duration_s = (time.perf_counter() - started) / len(outcomes)
        _observe(store, outcome, "snapshot")


def _handle_request(store: Store, request: DiscoveryRequested, default_location: str, loader: Loader) -> None:
    with store.write() as conn:
        if not Store.claim_events(conn, [request.id]):
            return
    # Claimed before scanning: a request is a nudge, and a crash mid-scan is covered by the periodic rescan.
    location = request.data.code_location or default_location
    if location != default_location:
        log.warning("discovery_request_ignored", code_location=location, reason="not this worker's code location")
        return
    outcome = rescan(store, location, trigger="request", loader=loader)
    log.info("discovery_request_handled", code_location=location, requested_by=request.data.requested_by,
             changes=len(outcome.changes))
