"""Wiring of the alerts worker: store, service, sender, periodic jobs."""

from __future__ import annotations

from libs.common.bus import TRANSIENT_ERRORS, connect
from libs.common.events import ASSET_CHANGES, AUTOMATION, HEALTH
from libs.common.settings import ServiceName
from libs.common.worker import PeriodicJob, Worker, run_service
from services.alerts.sender import Sender
from services.alerts.service import AlertService
from services.alerts.settings import AlertsWorkerSettings
from services.alerts.store import open_store
from services.alerts.watch import PublisherWatch


def build(settings: AlertsWorkerSettings, *, port: int | None = None) -> Worker:
    """The alerts worker: consumes asset-changes and health, ticks the clock, runs the sender."""
    store = open_store(settings)
    sender = Sender(store, settings)
    service = AlertService(store, settings, on_commit=sender.wake)
    cfg = settings.alerts
    # Its own client: the watch must not depend on health, which may be down (watch.py).
    watch = PublisherWatch(connect(settings.redis), f"{settings.bus.prefix}:{AUTOMATION}")

    def watch_publishers() -> None:
        try:
            now = watch.read()
        except TRANSIENT_ERRORS:
            # Redis is down: the worker already says so (unready, one log line); a failed job every 15 s
            # would add nothing but noise. Prometheus's AmsPublisherHeartbeatLate covers this case.
            return
        service.publisher_heartbeats(now, watch.seen)

    return Worker(
        service=ServiceName.ALERTS,
        settings=settings,
        store=store,
        # Asset specs first: when both streams have entries, an alert finds its owners already stored.
        streams=[ASSET_CHANGES, HEALTH],
        handler=service.handle,
        jobs=[
            PeriodicJob(
                name="alerts_tick", func=service.tick, interval_s=cfg.tick_interval_s, run_at_start=True
            ),
            PeriodicJob(name="alerts_gauges", func=service.update_gauges, interval_s=5.0, run_at_start=True),
            PeriodicJob(name="alerts_retention", func=service.prune, interval_s=3600.0),
            PeriodicJob(
                name="alerts_publisher_watch",
                func=watch_publishers,
                interval_s=cfg.publisher_watch_interval_s,
                run_at_start=True,
            ),
        ],
        on_startup=lambda _worker: sender.start(),
        on_shutdown=lambda _worker: sender.stop(),
        port=port,
    )


def main() -> int:
    """Entry point of `python -m services.alerts`."""
    return run_service(ServiceName.ALERTS, AlertsWorkerSettings, build)
